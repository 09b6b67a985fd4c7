"""The seed layout over TLS (examples/nginx/https.conf), served the way browsers allow WebAuthn.

nginx serves https://app.example.test:PORT and https://auth.example.test:PORT with a certificate from a CA
the tests made (`https_stack`); `requests` trusts that CA through verify=, Chromium trusts the certificate
as it trusts a real site (`https_browser`: --ignore-certificate-errors-spki-list, tests/servers/browser.py).
On such a page Chromium runs WebAuthn. A Chromium that merely clicks through the certificate error
(Playwright's ignore_https_errors) is refused: that is the difference these tests pin down.

Chromium skips its certificate check for WebAuthn while a virtual authenticator is plugged in, so the proof
that TLS is right comes from a request made without one: it is accepted (it waits for a security key)
where a page with a certificate error is refused at once.
"""
from __future__ import annotations

import base64
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from playwright.sync_api import Error as PlaywrightError

from tests.support.browsing import DESKTOP, assert_on_login_page, echoed_headers, sign_in
from tests.support.portal import login
from tests.support.stacks import EXAMPLES, NginxStack
from tests.support.webauthn_browser import add_virtual_authenticator, credentials, visible_security_state

CA_NAME = "authportal https stack CA"  # tests/support/stacks.py StackTls

#: A minimal registration, as a portal's security-key page makes it (rp.id: the parent domain).
CREATE = """async () => {
  const credential = await navigator.credentials.create({publicKey: {
    rp: {id: "example.test", name: "t"}, user: {id: new Uint8Array(16), name: "u", displayName: "u"},
    challenge: new Uint8Array(32), pubKeyCredParams: [{type: "public-key", alg: -7}]}});
  return {id: credential.id, type: credential.type};
}"""

#: The same registration twice, without a virtual key. Chromium refuses a page with a certificate error at once;
#: otherwise it accepts the first request (it waits for a security key to be touched) and answers the second
#: "already pending". Both answers come from the browser process in order: no timing involved.
CREATE_TWICE_WITHOUT_A_KEY = """async () => {
  const options = () => ({publicKey: {
    rp: {id: "example.test", name: "t"}, user: {id: new Uint8Array(16), name: "u", displayName: "u"},
    challenge: new Uint8Array(32), pubKeyCredParams: [{type: "public-key", alg: -7}]}});
  const outcome = promise => promise.then(() => "created", error => `${error.name}: ${error.message}`);
  const waiting = new AbortController();
  const first = outcome(navigator.credentials.create({...options(), signal: waiting.signal}));
  const second = await outcome(navigator.credentials.create(options()));
  waiting.abort();
  return {first: await first, second};
}"""
TLS_REFUSAL = "NotAllowedError: WebAuthn is not supported on sites with TLS certificate errors."


def trusting(stack: NginxStack) -> requests.Session:
    http = requests.Session()
    http.trust_env = False  # REQUESTS_CA_BUNDLE (set on this machine) would win over a session's verify
    http.verify = str(stack.ca_file)
    return http


def test_a_client_with_the_test_ca_is_sent_to_the_https_login_and_back(https_stack, upstream):
    url = https_stack.url("app.example.test", "/prometheus/https-requests-check?g0.expr=up")
    http = trusting(https_stack)
    first = http.get(url, allow_redirects=False, timeout=10)
    assert first.status_code == 302, first.text
    location = urlsplit(first.headers["Location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == f"https://auth.example.test:{https_stack.port}/"
    assert parse_qs(location.query)["rd"] == [url]

    done = login(http, https_stack.portal_base, "bob", rd=url)
    assert (done.status_code, done.headers["Location"]) == (302, url), done.text
    [session] = [cookie for cookie in http.cookies if cookie.name == "authportal_session"]
    assert session.secure and session.domain in ("example.test", ".example.test")
    landed = http.get(url, allow_redirects=False, timeout=10)
    assert landed.status_code == 200
    assert (landed.json()["headers"]["Remote-User"], landed.json()["headers"]["X-Forwarded-Proto"]) == ("bob", "https")


def test_the_verify_location_and_the_identity_headers_are_the_seed_layouts():
    """The security-relevant parts are copied, not rewritten: what protects the seed layout protects this one."""
    parts = (r"\n( +)location = /internal/authportal-verify \{.*?\n\1\}", r"\n( +)location @authportal_401 \{.*?\n\1\}",
             r"\n +proxy_set_header Remote-User .*?\n +proxy_set_header X-Forwarded-For +\$remote_addr;")
    seed, https = ((EXAMPLES / name).read_text() for name in ("seed-layout.conf", "https.conf"))
    for part in parts:
        copied = [match.group() for match in re.finditer(part, https, re.S)]
        assert copied and copied == [match.group() for match in re.finditer(part, seed, re.S)], part


def test_forged_identity_and_original_url_headers_get_nowhere(https_stack, upstream):
    url = https_stack.url("app.example.test", "/prometheus/https-forged-check")
    forged = {"Remote-User": "alice", "Remote-Groups": "admins",
              "X-Original-URL": https_stack.url("app.example.test", "/public/"), "X-Forwarded-Host": "app.example.test",
              "X-Forwarded-Uri": "/public/", "X-Forwarded-Proto": "https", "X-Forwarded-Method": "GET"}
    http = trusting(https_stack)
    anonymous = http.get(url, headers=forged, allow_redirects=False, timeout=10)
    assert anonymous.status_code == 302 and anonymous.headers["Location"].startswith(https_stack.portal_base + "/?rd=")
    assert not [seen for seen in upstream.requests if seen.path.startswith("/prometheus/https-forged-check")]

    assert login(http, https_stack.portal_base, "bob", rd=url).status_code == 302
    assert http.get(url, headers=forged, allow_redirects=False, timeout=10).status_code == 200
    [seen] = [seen for seen in upstream.requests if seen.path.startswith("/prometheus/https-forged-check")]
    assert (seen.headers.get_all("Remote-User"), seen.headers.get_all("Remote-Groups")) == (["bob"], ["monitoring"])
    assert seen.headers.get_all("X-Forwarded-Proto") == ["https"]


def test_the_certificate_is_the_tests_own_not_one_the_system_trusts(https_stack):
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        requests.get(https_stack.portal_base + "/", timeout=10)  # the system's CAs (REQUESTS_CA_BUNDLE)


def test_plain_http_only_redirects_to_https(https_stack, upstream):
    for host, path in (("app.example.test", "/prometheus/plain-http-check?x=1"), ("auth.example.test", "/")):
        answer = requests.get(f"http://{host}:{https_stack.http_port}{path}", allow_redirects=False, timeout=10)
        # $host carries no port: right for https on 443, the deployment this file is for
        assert (answer.status_code, answer.headers["Location"]) == (301, f"https://{host}{path}")
    assert not [seen for seen in upstream.requests if seen.path.startswith("/prometheus/plain-http-check")]


def test_chromium_signs_in_over_https_without_a_certificate_error(https_browser, https_stack):
    context = https_browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        url = https_stack.url("app.example.test", "/prometheus/https-browser-check?g0.expr=up")
        page.goto(url)  # raises on a certificate error: Chromium shows its interstitial instead of the page
        assert_on_login_page(page, https_stack, url)
        assert page.evaluate("window.isSecureContext") is True
        state = visible_security_state(context, page)
        assert state["securityState"] == "secure", state
        assert "certificateNetworkError" not in state["certificateSecurityState"]
        assert state["certificateSecurityState"]["issuer"] == CA_NAME

        sign_in(page, "bob")
        page.wait_for_url(url)
        headers = echoed_headers(page)
        assert (headers["Remote-User"], headers["X-Forwarded-Proto"]) == ("bob", "https")
        session = {cookie["name"]: cookie for cookie in context.cookies()}["authportal_session"]
        assert session["secure"] and session["httpOnly"]
        assert session["domain"] in ("example.test", ".example.test")
    finally:
        context.close()


def test_a_virtual_security_key_registers_on_the_portal_page(https_browser, https_stack):
    context = https_browser.new_context()
    try:
        page = context.new_page()
        page.goto(https_stack.portal_base + "/")
        cdp, authenticator = add_virtual_authenticator(context, page)
        created = page.evaluate(CREATE)
        assert created["type"] == "public-key"
        [stored] = credentials(cdp, authenticator)
        assert stored["rpId"] == "example.test"
        assert base64.b64decode(stored["credentialId"]) == base64.urlsafe_b64decode(created["id"] + "==")
    finally:
        context.close()


def test_webauthn_is_not_refused_for_tls_reasons_on_the_trusted_portal(https_browser, https_stack):
    context = https_browser.new_context()
    try:
        page = context.new_page()
        page.goto(https_stack.portal_base + "/")
        outcome = page.evaluate(CREATE_TWICE_WITHOUT_A_KEY)
        assert outcome == {"first": "AbortError: signal is aborted without reason",
                           "second": "OperationError: A request is already pending."}
    finally:
        context.close()


def test_a_chromium_that_does_not_trust_the_ca_gets_no_webauthn(browser, https_stack):
    """`browser` has no trust flag: the page is an error, and clicking through it does not give WebAuthn."""
    context = browser.new_context()
    try:
        with pytest.raises(PlaywrightError, match="net::ERR_CERT_AUTHORITY_INVALID"):
            context.new_page().goto(https_stack.portal_base + "/")
    finally:
        context.close()

    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        page.goto(https_stack.portal_base + "/")
        assert page.evaluate("window.isSecureContext") is True  # https is enough for that, not for WebAuthn
        state = visible_security_state(context, page)
        assert state["securityState"] == "insecure-broken"
        assert state["certificateSecurityState"]["certificateNetworkError"] == "net::ERR_CERT_AUTHORITY_INVALID"
        assert page.evaluate(CREATE_TWICE_WITHOUT_A_KEY) == {"first": TLS_REFUSAL, "second": TLS_REFUSAL}
    finally:
        context.close()
