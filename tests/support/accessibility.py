"""What a page shows a person with weak eyes or a keyboard, measured in a real browser.

`measure_contrast(page)` reads the styles Chromium computed from the CSS the page
uses and works out WCAG contrast ratios (WCAG 2.x relative luminance):

- text: every element with text of its own, its colour against the background
  behind it (alpha composited up to the canvas), needs 4.5:1 (1.4.3);
- non-text (1.4.11), 3:1 against the background the control sits on: the focus
  ring of each control reached with the Tab key (as a keyboard user moves), the
  border of each text input, and a button's border, or its fill when it has none.

axe-core (`run_axe`) audits the rest of WCAG 2.1 A/AA; its colour rule covers
text only, hence the measurement above. scripts/install-test-deps.sh unpacks the
pinned axe-core tarball from npm under test-artifacts/cache/.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import IN_CI
from tests.servers.process import REPO

AXE_VERSION = "4.14.1"  # keep in step with scripts/install-test-deps.sh
AXE_JS = REPO / "test-artifacts" / "cache" / f"axe-core-{AXE_VERSION}" / "axe.min.js"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]

TEXT_MINIMUM = 4.5
NON_TEXT_MINIMUM = 3.0

_RGB = re.compile(r"rgba?\(\s*([\d.]+)[,\s]+([\d.]+)[,\s]+([\d.]+)(?:\s*[,/]\s*([\d.]+%?))?\s*\)")

Rgba = tuple[float, float, float, float]


def parse_color(css: str) -> Rgba:
    """A computed CSS colour (`rgb(…)` / `rgba(…)`, as Chromium reports them) as 0–255 channels + alpha."""
    if css == "transparent":
        return (0.0, 0.0, 0.0, 0.0)
    match = _RGB.fullmatch(css.strip())
    if not match:
        raise ValueError(f"unexpected computed colour {css!r}")
    r, g, b, a = match.groups()
    alpha = 1.0 if a is None else (float(a[:-1]) / 100 if a.endswith("%") else float(a))
    return (float(r), float(g), float(b), alpha)


def over(top: Rgba, bottom: Rgba) -> Rgba:
    """`top` painted over an opaque `bottom`."""
    alpha = top[3]
    return (*(t * alpha + b * (1 - alpha) for t, b in zip(top[:3], bottom[:3], strict=True)), 1.0)  # type: ignore[return-value]


def luminance(color: Rgba) -> float:
    def channel(value: float) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in color[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(first: Rgba, second: Rgba) -> float:
    lighter, darker = sorted((luminance(first), luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


# For one element: its styles, and the background colours of it and its ancestors (innermost first).
_STYLES_JS = """
(e) => {
  const s = getComputedStyle(e);
  const backgrounds = [];
  for (let n = e; n; n = n.parentElement) backgrounds.push(getComputedStyle(n).backgroundColor);
  const parentBackgrounds = backgrounds.slice(1);
  const label = e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
      (e.className && typeof e.className === 'string' ? '.' + e.className.trim().split(/\\s+/).join('.') : '') +
      (e.type ? '[type=' + e.type + ']' : '') + (e.innerText ? ' "' + e.innerText.trim().slice(0, 30) + '"' : '');
  return {label, color: s.color, backgrounds, parentBackgrounds,
          outline: {style: s.outlineStyle, width: parseFloat(s.outlineWidth), color: s.outlineColor},
          boxShadow: s.boxShadow,
          border: {style: s.borderTopStyle, width: parseFloat(s.borderTopWidth), color: s.borderTopColor},
          tag: e.tagName.toLowerCase(), type: e.type || ''};
}
"""

# Elements holding text of their own (a non-blank text node child), visible.
_TEXT_ELEMENTS_JS = """
() => {
  const found = [];
  for (const e of document.body.querySelectorAll('*')) {
    const own = [...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    const box = e.getBoundingClientRect();
    const s = getComputedStyle(e);
    if (!own || box.width < 2 || box.height < 2 || s.visibility === 'hidden' || s.clip === 'rect(0px, 0px, 0px, 0px)')
      continue;
    found.push(e);
  }
  return found;
}
"""

CANVAS: Rgba = (255.0, 255.0, 255.0, 1.0)


def backdrop(backgrounds: list[str]) -> Rgba:
    """The opaque colour behind an element: its ancestors' backgrounds composited, outermost first."""
    color = CANVAS
    for css in reversed(backgrounds):
        color = over(parse_color(css), color)
    return color


@dataclass
class Measured:
    kind: str  # "text", "focus ring", "input border", "button border", "button fill"
    element: str
    ratio: float
    minimum: float

    @property
    def ok(self) -> bool:
        return self.ratio >= self.minimum

    def __str__(self) -> str:
        return f"{self.kind} of {self.element}: {self.ratio:.2f}:1 (needs {self.minimum}:1)"


@dataclass
class ContrastReport:
    measured: list[Measured] = field(default_factory=list)

    @property
    def failures(self) -> list[Measured]:
        return [m for m in self.measured if not m.ok]

    def lowest(self, kind: str) -> float | None:
        ratios = [m.ratio for m in self.measured if m.kind == kind]
        return min(ratios) if ratios else None

    def kinds(self) -> set[str]:
        return {m.kind for m in self.measured}


def _focus_ring(styles: dict) -> str | None:
    """The colour of the focus indicator: the outline, else a box-shadow ring."""
    outline = styles["outline"]
    if outline["style"] not in ("none", "hidden") and outline["width"] > 0:
        return outline["color"]
    shadow = styles["boxShadow"]
    if shadow and shadow != "none":
        match = _RGB.search(shadow)
        if match:
            return match.group(0)
    return None


def measure_contrast(page, max_tabs: int = 40) -> ContrastReport:
    report = ContrastReport()
    page.evaluate("() => document.activeElement && document.activeElement.blur()")  # edges at rest first
    for element in page.evaluate_handle(_TEXT_ELEMENTS_JS).get_properties().values():
        styles = element.as_element().evaluate(_STYLES_JS)
        ground = backdrop(styles["backgrounds"])
        text = over(parse_color(styles["color"]), ground)
        report.measured.append(Measured("text", styles["label"], contrast_ratio(text, ground), TEXT_MINIMUM))

    for control in page.locator("input:not([type=hidden]):not([type=checkbox]), button").all():
        if not control.is_visible():
            continue
        styles = control.evaluate(_STYLES_JS)
        ground = backdrop(styles["parentBackgrounds"])
        border = styles["border"]
        has_border = border["style"] not in ("none", "hidden") and border["width"] > 0
        if styles["tag"] == "input":
            color = parse_color(border["color"]) if has_border else (0.0, 0.0, 0.0, 0.0)
            report.measured.append(Measured("input border", styles["label"], contrast_ratio(over(color, ground), ground),
                                            NON_TEXT_MINIMUM))
        elif has_border:
            report.measured.append(Measured("button border", styles["label"],
                                            contrast_ratio(over(parse_color(border["color"]), ground), ground),
                                            NON_TEXT_MINIMUM))
        elif parse_color(styles["backgrounds"][0])[3] > 0:
            fill = over(parse_color(styles["backgrounds"][0]), ground)
            report.measured.append(Measured("button fill", styles["label"], contrast_ratio(fill, ground),
                                            NON_TEXT_MINIMUM))
        # else: a button drawn as a link (text only): its text is measured above

    # The focus ring, control by control, as the Tab key reaches them.
    page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }")
    seen = set()
    for _ in range(max_tabs):
        page.keyboard.press("Tab")
        focused = page.evaluate_handle("() => document.activeElement").as_element()
        if focused is None or focused.evaluate("e => e === document.body"):
            break
        styles = focused.evaluate(_STYLES_JS)
        key = focused.evaluate("e => { const r = e.getBoundingClientRect(); return r.x + ',' + r.y + e.outerHTML; }")
        if key in seen:
            break
        seen.add(key)
        ring = _focus_ring(styles)
        ground = backdrop(styles["parentBackgrounds"])
        ratio = contrast_ratio(over(parse_color(ring), ground), ground) if ring else 1.0
        report.measured.append(Measured("focus ring", styles["label"], ratio, NON_TEXT_MINIMUM))
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    return report


def axe_source() -> str:
    if not AXE_JS.exists():
        message = f"axe-core {AXE_VERSION} is not unpacked at {AXE_JS} (scripts/install-test-deps.sh does it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return AXE_JS.read_text()


def run_axe(page) -> list[dict]:
    """axe-core's WCAG 2.1 A/AA violations on the page as it is now (each with its rule id and nodes)."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(axe_source())
    result = page.evaluate("tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})", AXE_TAGS)
    return [{"id": v["id"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]]}
            for v in result["violations"]]


def axe_available() -> bool:
    return Path(AXE_JS).exists()
