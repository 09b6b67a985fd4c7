"""The company's brand (`branding:`) and the theme (`theme:`), in-process: what the layout carries, how the
logo and the colour are served, and the configurations refused before the portal starts."""
from __future__ import annotations

import re

import pytest
import yaml

from authportal.config import ConfigError, contrast_with_white, load_config
from tests.support.in_process import PORTAL, ProxiedClient, page

SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="32"><rect width="64" height="32" fill="#0a6"/></svg>'


def branded(app_with, tmp_path, **branding):
    logo = tmp_path / "logo.svg"
    logo.write_bytes(SVG)
    return ProxiedClient(app_with(branding={"name": "Example Corp", "logo_file": str(logo), **branding},
                                  theme="dark"))


def test_the_layout_carries_the_brand(app_with, tmp_path):
    client = branded(app_with, tmp_path, primary_color="#6d28d9",
                     footer="Trouble signing in? [IT helpdesk](https://help.example.test/) or <call> 1234")
    shown = page(client, "/").get_data(as_text=True)
    assert "<title>Sign in · Example Corp</title>" in shown and "<span>Example Corp</span>" in shown
    assert 'data-theme="dark"' in shown and '<meta name="color-scheme" content="dark">' in shown
    assert ('<p>Trouble signing in? <a href="https://help.example.test/">IT helpdesk</a> or &lt;call&gt; 1234</p>'
            in shown)  # links made, everything else escaped


def test_the_logo_and_colour_are_served_under_a_content_hash_with_a_long_cache(app_with, tmp_path):
    client = branded(app_with, tmp_path, primary_color="#6d28d9")
    shown = page(client, "/").get_data(as_text=True)
    logo_url = re.search(r'<img src="(/branding/logo-[0-9a-f]{16}\.svg)"', shown).group(1)
    colours_url = re.search(r'<link rel="stylesheet" href="(/branding/colours-[0-9a-f]{16}\.css)"', shown).group(1)
    logo = client.get(logo_url, base_url=PORTAL)
    assert logo.status_code == 200 and logo.data == SVG and logo.mimetype == "image/svg+xml"
    assert logo.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    # opened on its own, an SVG's scripts must not run on the portal's origin
    assert "sandbox" in logo.headers["Content-Security-Policy"]
    assert "script-src" not in logo.headers["Content-Security-Policy"]
    colours = client.get(colours_url, base_url=PORTAL).get_data(as_text=True)
    assert "--button: #6d28d9" in colours
    assert client.get("/branding/logo-0000000000000000.svg", base_url=PORTAL).status_code == 404


def test_a_new_logo_gets_a_new_url(app_with, tmp_path):
    first = re.search(r"/branding/logo-\w+\.svg", page(branded(app_with, tmp_path), "/").get_data(as_text=True))
    (tmp_path / "logo.svg").write_bytes(SVG.replace(b"#0a6", b"#a06"))
    client = ProxiedClient(app_with(branding={"logo_file": str(tmp_path / "logo.svg")}))
    second = re.search(r"/branding/logo-\w+\.svg", page(client, "/").get_data(as_text=True))
    assert first.group(0) != second.group(0)


def test_without_branding_the_portal_is_authportal_in_the_light_theme(client):
    shown = page(client, "/").get_data(as_text=True)
    assert "<span>authportal</span>" in shown and 'data-theme="light"' in shown and "/branding/" not in shown


def test_auto_theme_lets_the_browser_choose(app_with):
    shown = page(ProxiedClient(app_with(theme="auto")), "/").get_data(as_text=True)
    assert 'data-theme="auto"' in shown and '<meta name="color-scheme" content="light dark">' in shown


@pytest.mark.parametrize(("color", "readable"), [("#1f4e8c", True), ("#6d28d9", True), ("#767676", True),
                                                   ("#777777", False), ("#f59e0b", False), ("#ffffff", False)])
def test_contrast_with_white_follows_wcag(color, readable):
    assert (contrast_with_white(color) >= 4.5) is readable


def _problems(portal_setup, tmp_path, **sections) -> list[str]:
    document = portal_setup.document()
    document.update(sections)
    portal_setup.config_path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as caught:
        load_config(portal_setup.config_path)
    return caught.value.errors


@pytest.mark.parametrize(("sections", "expected"), [
    ({"branding": {"primary_color": "#f59e0b"}},
     "branding.primary_color: white text on #f59e0b has a contrast of 2.15:1; it needs at least 4.5:1"),
    ({"branding": {"primary_color": "blue"}}, "branding.primary_color: 'blue' is not a colour written as #rrggbb"),
    ({"branding": {"logo_file": "missing.svg"}}, "branding.logo_file: cannot read"),
    ({"branding": {"logo_file": "logo.gif"}}, "branding.logo_file: logo.gif: the logo must be an .svg or a .png"),
    ({"branding": {"logo_file": "fake.png"}}, "branding.logo_file: fake.png is not a PNG image"),
    ({"branding": {"footer": "[help](javascript:alert`1`)"}},
     "branding.footer: the link 'javascript:alert`1`' must start with https://, http:// or mailto:"),
    ({"theme": "sepia"}, "theme:"),
])
def test_a_brand_that_cannot_work_is_refused_with_its_key(portal_setup, tmp_path, sections, expected):
    (portal_setup.config_path.parent / "logo.gif").write_bytes(b"GIF89a")
    (portal_setup.config_path.parent / "fake.png").write_bytes(SVG)
    problems = _problems(portal_setup, tmp_path, **sections)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_the_documented_brand_block_is_a_valid_configuration(portal_setup, tmp_path):
    """docs/translations.md's YAML blocks, as printed (its logo path swapped for a real file)."""
    import textwrap

    from tests.servers.process import REPO

    doc = (REPO / "docs" / "translations.md").read_text()
    blocks = [yaml.safe_load(textwrap.dedent(b)) for b in re.findall(r"```yaml\n(.*?)```", doc, re.S)]
    assert len(blocks) == 2
    document = portal_setup.document()
    for block in blocks:
        document.update(block)
    assert document["branding"]["logo_file"] == "/etc/authportal/acme.svg"
    (tmp_path / "acme.svg").write_bytes(SVG)
    document["branding"]["logo_file"] = str(tmp_path / "acme.svg")
    portal_setup.config_path.write_text(yaml.safe_dump(document))
    config = load_config(portal_setup.config_path)
    assert (config.i18n.default_locale, config.theme, config.branding.primary_color) == ("de", "auto", "#6d28d9")
