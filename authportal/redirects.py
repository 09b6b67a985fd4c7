"""The ``rd`` guard: where the portal may send a browser after login or logout.

An open redirect on a login page is a phishing tool, so ``rd`` is parsed the
way a browser would parse it (WHATWG URL rules: stray whitespace, tabs and
newlines, ``\\`` for ``/``), judged on the host the browser would really visit,
and then re-serialised from its parsed parts, so what goes into ``Location``
is exactly what was checked.  When in doubt the answer is None and the user
lands on the portal.

Decisions: a trailing dot on the host is dropped (``app.example.com.`` →
``app.example.com``); the fragment is kept (percent-encoded), since hash-routed
UIs such as Alertmanager's need it; the default port is dropped, others kept.
"""
from __future__ import annotations

import ipaddress
import re
import unicodedata
from urllib.parse import quote, unquote, urlsplit

MAX_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LABEL = re.compile(r"[a-z0-9_\-]+")
_PORT = re.compile(r"[0-9]{1,5}")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")  # WHATWG treats such a last label as IPv4
_BARE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"
_C0_AND_SPACE = "".join(map(chr, range(0x21)))
_TAB_NEWLINE = str.maketrans("", "", "\t\r\n")


def safe_redirect(rd: str | None, *, cookie_domain: str | None, portal_url: str, allow_http: bool) -> str | None:
    """The normalised absolute URL to send the browser to, or None (send it to the portal).

    Accepted: ``https`` (``http`` only with ``allow_http``, or on the portal's own
    http origin) URLs whose host is ``cookie_domain`` or one of its subdomains
    (with no cookie domain: the portal's host only), and ``/paths`` on the portal's host.
    """
    if not isinstance(rd, str) or not rd or len(rd) > MAX_LENGTH or "\x00" in rd:
        return None
    url = rd.strip(_C0_AND_SPACE).translate(_TAB_NEWLINE)
    if not url or _CONTROL.search(url):
        return None
    cut = min((i for i in (url.find("?"), url.find("#")) if i >= 0), default=len(url))
    head, tail = url[:cut].replace("\\", "/"), url[cut:]  # `\` is `/` before the query

    portal = _portal_origin(portal_url)
    if portal is None:
        return None
    match = _SCHEME.match(head)
    if match is None:  # relative: only an absolute path on the portal's own host
        if not head.startswith("/") or head.startswith("//") or _disguised_authority(head):
            return None
        scheme, host, port = portal
        path = head
    else:
        scheme = match.group(1).lower()
        rest = head[match.end():]
        # Exactly two slashes: `https:x`, `https:/x` and `https:///x` are guesses a browser may resolve otherwise.
        if scheme not in _DEFAULT_PORTS or not rest.startswith("//") or rest.startswith("///"):
            return None
        authority, slash, path = rest[2:].partition("/")
        parsed = _parse_authority(authority, scheme)
        if parsed is None:
            return None
        host, port = parsed
        same_origin = (scheme, host, port) == portal
        if scheme == "http" and not (allow_http or same_origin):
            return None
        if not (same_origin or _host_allowed(host, cookie_domain, portal[1])):
            return None
        path = slash + path
    return _serialise(scheme, host, port, path, tail)


def _portal_origin(portal_url: str) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of the portal, parsed like any other URL."""
    parts = urlsplit(portal_url)
    scheme = parts.scheme.lower()
    authority = _parse_authority(parts.netloc, scheme) if scheme in _DEFAULT_PORTS else None
    return None if authority is None else (scheme, *authority)


def _disguised_authority(path: str) -> bool:
    """``/%2F%2Fevil``, ``/%5Cevil``, ``/%09/evil``: paths that decode into something that is no plain path."""
    decoded = path
    for _ in range(3):
        decoded, before = unquote(decoded), decoded
        if decoded == before:
            break
    decoded = decoded.replace("\\", "/")
    return decoded.startswith("//") or _CONTROL.search(decoded) is not None


def _parse_authority(authority: str, scheme: str) -> tuple[str, int | None] | None:
    """``(host, port)`` with the default port as None; None for userinfo, encoded or odd hosts."""
    if not authority or "@" in authority or "%" in authority:
        return None
    if authority.startswith("["):
        end = authority.find("]")
        try:
            host = f"[{ipaddress.IPv6Address(authority[1:end]).compressed}]" if end > 0 else ""
        except ValueError:
            return None
        port_text = authority[end + 1:]
    else:
        name, colon, port_text = authority.partition(":")
        host, port_text = _domain(name), colon + port_text
    if not host or (port_text and not port_text.startswith(":")):
        return None
    port_text = port_text[1:]
    if not port_text:
        return host, None
    if not _PORT.fullmatch(port_text) or not 0 < int(port_text) < 65536:
        return None
    port = int(port_text)
    return host, None if port == _DEFAULT_PORTS[scheme] else port


def _domain(name: str) -> str:
    """Lowercase ASCII form of a host name, or "" when it is not a clean one."""
    name = name.lower()
    if not name.isascii():
        # Only names that survive NFKC unchanged and round-trip through IDNA: no fullwidth
        # dots, no characters that quietly map to others.
        if unicodedata.normalize("NFKC", name) != name:
            return ""
        try:
            encoded = name.encode("idna").decode("ascii")
            if encoded.encode("ascii").decode("idna") != name:
                return ""
        except UnicodeError:
            return ""
        name = encoded
    name = name.removesuffix(".")
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return ""
    if _NUMERIC_LABEL.fullmatch(name.rpartition(".")[2]):  # an IPv4 address, in canonical form only
        try:
            if str(ipaddress.IPv4Address(name)) != name:
                return ""
        except ValueError:
            return ""
    return name


def _is_ip(host: str) -> bool:
    return host.startswith("[") or _NUMERIC_LABEL.fullmatch(host.rpartition(".")[2]) is not None


def _host_allowed(host: str, cookie_domain: str | None, portal_host: str) -> bool:
    """``host`` is the cookie domain or a subdomain of it (IPs match exactly); without one, the portal host."""
    if cookie_domain is None:
        return host == portal_host
    base = cookie_domain.strip().strip(".").lower()
    if host == base:
        return True
    return not _is_ip(host) and not _is_ip(base) and host.endswith("." + base)


def _quote(text: str, safe: str) -> str:
    return quote(_BARE_PERCENT.sub("%25", text), safe=safe)


def _serialise(scheme: str, host: str, port: int | None, path: str, tail: str) -> str | None:
    """Rebuild the URL from its checked parts, percent-encoding whatever needs it."""
    query = fragment = ""
    if tail.startswith("?"):
        query, _, fragment = tail[1:].partition("#")
    elif tail.startswith("#"):
        fragment = tail[1:]
    try:
        url = f"{scheme}://{host}{'' if port is None else f':{port}'}{_quote(path or '/', _PATH_SAFE)}"
        if query:
            url += "?" + _quote(query, _QUERY_SAFE)
        if fragment:
            url += "#" + _quote(fragment, _QUERY_SAFE)
    except UnicodeEncodeError:  # lone surrogates
        return None
    return url
