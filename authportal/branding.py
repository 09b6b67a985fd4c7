"""The company's brand on every page: name, logo, primary colour, footer and theme (`branding:`, `theme:`).

The logo and the colour are served from URLs that carry a hash of their content,
so browsers may keep them for a year and a new logo shows at once. The colour
goes into a tiny stylesheet of its own: the pages' CSP forbids inline styles.
An SVG logo is shown with <img> (its scripts never run there) and, should
someone open its URL, served with a CSP that forbids scripts and a sandbox.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from flask import Blueprint, Flask, abort, current_app, url_for
from markupsafe import Markup, escape
from werkzeug.wrappers import Response

from .config import FOOTER_LINK, LOGO_TYPES, BrandingConfig

YEAR = 365 * 24 * 3600
ASSET_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


@dataclass(frozen=True)
class Asset:
    name: str  # logo-<hash>.svg, colours-<hash>.css
    content_type: str
    data: bytes


def _asset(stem: str, suffix: str, content_type: str, data: bytes) -> Asset:
    return Asset(f"{stem}-{hashlib.sha256(data).hexdigest()[:16]}{suffix}", content_type, data)


class Brand:
    """What the layout shows, built once from the configuration."""

    def __init__(self, config: BrandingConfig, theme: str):
        self.name = config.name
        self.theme = theme
        self.footer = footer_markup(config.footer) if config.footer else None
        self.assets: dict[str, Asset] = {}
        self.logo = self.colours = None
        if config.logo_file is not None:
            suffix = config.logo_file.suffix.lower()
            self.logo = self._add(_asset("logo", suffix, LOGO_TYPES[suffix], config.logo_file.read_bytes()))
        if config.primary_color is not None:
            # The sign-in button (white text) in both themes; links keep the theme's accent, readable on its card.
            # On the dark card a brand colour may not stand out 3:1 (WCAG 1.4.11): there the button gets a light edge.
            css = (f":root {{ --button: {config.primary_color}; --button-hover: {config.primary_color}; "
                   f"--button-edge: light-dark({config.primary_color}, #e7edf5); }}\n")
            self.colours = self._add(_asset("colours", ".css", "text/css; charset=utf-8", css.encode()))

    def _add(self, asset: Asset) -> str:
        self.assets[asset.name] = asset
        return asset.name


def footer_markup(text: str) -> Markup:
    """The footer as HTML: the text escaped, `[label](url)` made a link (the URLs were checked by the config)."""
    parts: list[str] = []
    position = 0
    for match in FOOTER_LINK.finditer(text):
        parts.append(str(escape(text[position:match.start()])))
        parts.append(f'<a href="{escape(match.group(2))}">{escape(match.group(1))}</a>')
        position = match.end()
    parts.append(str(escape(text[position:])))
    return Markup("".join(parts))


bp = Blueprint("branding", __name__)


def _brand() -> Brand:
    return current_app.extensions["authportal.brand"]


@bp.route("/branding/<name>")
def asset(name: str) -> Response:
    found = _brand().assets.get(name)
    if found is None:
        abort(404)
    response = Response(found.data, content_type=found.content_type)
    response.headers["Cache-Control"] = f"public, max-age={YEAR}, immutable"
    response.headers["Content-Security-Policy"] = ASSET_CSP
    return response


def _layout() -> dict[str, object]:
    brand = _brand()
    return {"brand": brand,
            "brand_logo": url_for("branding.asset", name=brand.logo) if brand.logo else None,
            "brand_colours": url_for("branding.asset", name=brand.colours) if brand.colours else None}


def init_app(app: Flask, brand: Brand) -> None:
    app.extensions["authportal.brand"] = brand
    app.register_blueprint(bp)
    app.context_processor(_layout)
