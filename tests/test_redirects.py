"""The `rd` guard: hostile forms are refused, legitimate ones come back normalised."""
from __future__ import annotations

import pytest

from authportal.redirects import MAX_LENGTH, safe_redirect

PORTAL = "https://auth.example.com"


def check(rd, *, cookie_domain="example.com", portal_url=PORTAL, allow_http=False):
    return safe_redirect(rd, cookie_domain=cookie_domain, portal_url=portal_url, allow_http=allow_http)


HOSTILE = [
    # other hosts and look-alike suffixes
    "https://evil.com/",
    "https://evil.com#.example.com",
    "https://evil.com?.example.com",
    "https://evil.com/.example.com",
    "https://example.com.evil.com/",
    "https://evilexample.com/",
    "https://example.co/",
    # userinfo tricks
    "https://a@b.example.com/",
    "https://example.com@evil.com/",
    "https://app.example.com:443@evil.com/",
    "https://evil.com\\@app.example.com/",
    "https://user:pass@app.example.com/",
    # scheme-relative and slash/backslash games
    "//evil.com",
    "//evil.com/path",
    "///evil.com",
    "/\\evil.com",
    "\\/evil.com",
    "\\\\evil.com",
    "/\t/evil.com",
    "/\n/evil.com",
    " //evil.com",
    "https:example.com",
    "https:/example.com",
    "https:///example.com",
    "https:\\\\evil.com",
    "https:/\\evil.com",
    # percent-encoded authority or path that decodes into one
    "/%2F%2Fevil.com",
    "/%2f/evil.com",
    "/%5Cevil.com",
    "/%5c%5cevil.com",
    "/%252F%252Fevil.com",
    "/%09/evil.com",
    "/%0d%0aSet-Cookie:x=1",
    "https://evil%2Ecom/",
    "https://app%2Eexample.com/",
    "https://%65vil.com/",
    # dangerous schemes, also disguised
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    "java\nscript:alert(1)",
    " javascript:alert(1)",
    "\x01javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "file:///etc/passwd",
    "ftp://app.example.com/",
    "ws://app.example.com/",
    # plain http without allow_http
    "http://app.example.com/",
    # relative forms that are not absolute paths
    "evil.com",
    "app.example.com/x",
    "?rd=https://evil.com",
    "#x",
    ".",
    # unicode hosts: NFKC changes, unclean IDNA, lookalikes outside the domain
    "https://app\uff0eexample.com/",
    "https://app\u3002example.com/",
    "https://app\uff61example.com/",
    "https://evil\uff0ecom/",
    "https://ex\u0430mple.com/",
    "https://app.ex\u0430mple.com/",
    "https://app.example.\u217dom/",
    "https://\ufb01le.example.com/",
    "https://stra\u00dfe.example.com/",
    "https://ap\u200dp.example.com/",
    # hosts that are no clean name
    "https:///",
    "https://",
    "https://:443/",
    "https://app..example.com/",
    "https://.example.com/",
    "https://app example.com/",
    "https://app.example.com:0/",
    "https://app.example.com:65536/",
    "https://app.example.com:8x/",
    "https://app.example.com:\u0661\u0662/",
    "https://app.example.com]/",
    "https://[::1/",
    # IP addresses that are not the cookie domain, and disguised IPs
    "https://127.0.0.1/",
    "https://[::1]/",
    "https://2130706433/",
    "https://0x7f.1/",
    "https://1.example.0x7f/",
    # NUL and other controls, overlong input
    "https://app.example.com/\x00",
    "/\x00/evil.com",
    "https://app.example.com/\x7f",
    "https://app.example.com/" + "a" * MAX_LENGTH,
    # lone surrogate cannot be encoded
    "https://app.example.com/\ud800",
    # nothing at all
    "",
    "   ",
    None,
]


@pytest.mark.parametrize("rd", HOSTILE)
def test_hostile_forms_are_refused(rd):
    assert check(rd) is None


LEGITIMATE = [
    # (rd, expected, keyword overrides)
    ("https://app.example.com", "https://app.example.com/", {}),
    ("https://example.com/", "https://example.com/", {}),
    ("https://prometheus.example.com/graph?g0.expr=up&g0.tab=1", "https://prometheus.example.com/graph?g0.expr=up&g0.tab=1", {}),
    ("https://a.b.c.example.com/x", "https://a.b.c.example.com/x", {}),
    ("https://app.example.com:8443/x", "https://app.example.com:8443/x", {}),
    ("https://app.example.com:443/x", "https://app.example.com/x", {}),
    ("HTTPS://APP.Example.COM/Path", "https://app.example.com/Path", {}),
    ("https://alertmanager.example.com/#/alerts?silenced=false", "https://alertmanager.example.com/#/alerts?silenced=false", {}),
    ("https://app.example.com./x", "https://app.example.com/x", {}),
    ("  https://app.example.com/ok\n", "https://app.example.com/ok", {}),
    ("https://app.exa\tmple.com/", "https://app.example.com/", {}),
    ("https:\\\\app.example.com\\x?y=\\", "https://app.example.com/x?y=%5C", {}),
    ("https://app.example.com/a b/\u00fc?q=rate(x[5m])&bad=%zz#f g",
     "https://app.example.com/a%20b/%C3%BC?q=rate(x%5B5m%5D)&bad=%25zz#f%20g", {}),
    ("https://app.example.com/%2F%2Fstays-a-path", "https://app.example.com/%2F%2Fstays-a-path", {}),
    ("https://b\u00fccher.example.com/", "https://xn--bcher-kva.example.com/", {}),
    ("/prometheus/graph?x=1", "https://auth.example.com/prometheus/graph?x=1", {}),
    ("/", "https://auth.example.com/", {}),
    ("/alertmanager/#/silences", "https://auth.example.com/alertmanager/#/silences", {}),
    ("http://app.example.com:8080/x", "http://app.example.com:8080/x", {"allow_http": True}),
    ("https://app.example.com/", "https://app.example.com/", {"allow_http": True}),
    ("https://auth.example.com/x", "https://auth.example.com/x", {"cookie_domain": None}),
    ("/x", "http://127.0.0.1:9091/x", {"cookie_domain": None, "portal_url": "http://127.0.0.1:9091"}),
    # the portal's own http origin is as good as a relative path to it
    ("http://127.0.0.1:9091/x", "http://127.0.0.1:9091/x", {"cookie_domain": None, "portal_url": "http://127.0.0.1:9091"}),
    ("http://127.0.0.1:8080/x", "http://127.0.0.1:8080/x",
     {"cookie_domain": None, "portal_url": "http://127.0.0.1:9091", "allow_http": True}),
    ("https://10.0.0.5:9090/graph", "https://10.0.0.5:9090/graph", {"cookie_domain": "10.0.0.5"}),
]


@pytest.mark.parametrize(("rd", "expected", "overrides"), LEGITIMATE)
def test_legitimate_targets_are_normalised(rd, expected, overrides):
    assert check(rd, **overrides) == expected


@pytest.mark.parametrize(
    ("rd", "overrides"),
    [
        ("https://app.example.com/", {"cookie_domain": None}),  # no cookie domain: portal host only
        ("https://example.com/", {"cookie_domain": None}),
        ("https://x.auth.example.com/", {"cookie_domain": None}),
        ("http://auth.example.com/", {"cookie_domain": None}),  # portal is https: no downgrade
        ("http://127.0.0.1:8080/x", {"cookie_domain": None, "portal_url": "http://127.0.0.1:9091"}),
        ("https://1.10.0.0.5/", {"cookie_domain": "10.0.0.5"}),  # IPs match exactly, never as a suffix
        ("https://10.0.0.05/", {"cookie_domain": "10.0.0.5"}),
        ("/x", {"portal_url": "not a url"}),
    ],
)
def test_refused_by_setting(rd, overrides):
    assert check(rd, **overrides) is None


def test_output_is_header_safe():
    for rd, _, overrides in LEGITIMATE:
        out = check(rd, **overrides)
        assert out is not None
        assert out.isascii()
        assert not any(c in out for c in "\r\n\t \x00\\\"<>")


def test_length_limit_is_inclusive():
    base = "https://app.example.com/"
    assert check(base + "a" * (MAX_LENGTH - len(base))) is not None
    assert check(base + "a" * (MAX_LENGTH - len(base) + 1)) is None
