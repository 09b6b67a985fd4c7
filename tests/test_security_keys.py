"""Security keys and passkeys in real Chromium with its virtual authenticator, through real nginx over TLS.

The stack is examples/nginx/https.conf with passkey sign-in on (`webauthn.passkey_login`), so keys are made
discoverable. Each test signs in its own users, so no test depends on another's keys. The negative tests
run the ceremony with the test's own script (`CEREMONY`), which can point the browser at a chosen key and
keep its answer, to replay it or to send another user's key.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterator

import pytest
import requests
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from authportal.cli import main as cli
from tests.servers.browser import ARTIFACTS, launch_chromium
from tests.support.browsing import DESKTOP, PHONE, echoed_headers
from tests.support.portal import USERS, csrf_from, resolve_example_test
from tests.support.stacks import NginxStack, nginx_stack
from tests.support.webauthn_browser import add_virtual_authenticator, credentials

ADMIN_PATH = "/prometheus/api/v1/admin/tsdb/snapshot"  # two_factor for group admins
ONE_FACTOR_PATH = "/prometheus/graph"  # one_factor for group monitoring
#: More people than tests/support/portal.py has, so that every test has its own.
PEOPLE = {
    **USERS,
    "erin": {"password": "erin-Secret-5", "displayname": "Erin", "email": "erin@example.test", "groups": ["admins"]},
    "frank": {"password": "frank-Secret-6", "displayname": "Frank", "email": "frank@example.test",
              "groups": ["admins", "monitoring"]},
    "grace": {"password": "grace-Secret-7", "displayname": "Grace", "email": "grace@example.test",
              "groups": ["monitoring"]},
}

#: One WebAuthn ceremony, run by the test instead of the portal's script: the options from the portal, the
#: browser's key answers (`allow`: only these credential ids; `rpId`: another relying party), and the answer
#: posted back unless `post` is false. Returns the portal's answers and the key's answer as JSON.
CEREMONY = """async ([optionsUrl, finishUrl, change]) => {
  const bytes = s => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((s.length + 3) % 4)),
                                     c => c.charCodeAt(0));
  const text = b => btoa(String.fromCharCode(...new Uint8Array(b))).replace(/\\+/g, "-").replace(/\\//g, "_")
                                                                      .replace(/=+$/, "");
  const form = document.querySelector("form[data-webauthn]");
  const started = await fetch(optionsUrl, {method: "POST", body: new URLSearchParams(new FormData(form))});
  if (!started.ok) return {status: started.status, body: await started.json()};
  const options = await started.json();
  options.challenge = bytes(options.challenge);
  const allow = change.allow || options.allowCredentials.map(c => c.id);
  options.allowCredentials = allow.map(id => ({type: "public-key", id: bytes(id)}));
  if (change.rpId) options.rpId = change.rpId;
  const c = await navigator.credentials.get({publicKey: options});
  const r = c.response;
  const credential = JSON.stringify({id: c.id, rawId: text(c.rawId), type: c.type, clientExtensionResults: {},
    response: {clientDataJSON: text(r.clientDataJSON), authenticatorData: text(r.authenticatorData),
               signature: text(r.signature), userHandle: r.userHandle ? text(r.userHandle) : null}});
  if (change.post === false) return {status: 0, credential};
  const body = new URLSearchParams(new FormData(form));
  body.set("credential", credential);
  const finished = await fetch(finishUrl, {method: "POST", body});
  return {status: finished.status, body: await finished.json(), credential};
}"""
#: Post a key's answer (kept from an earlier ceremony) to the portal, with the page's form fields.
POST_ANSWER = """async ([finishUrl, credential]) => {
  const body = new URLSearchParams(new FormData(document.querySelector("form[data-webauthn]")));
  body.set("credential", credential);
  const answer = await fetch(finishUrl, {method: "POST", body});
  return {status: answer.status, body: await answer.json()};
}"""
#: A credential the page makes itself, for a relying party the portal is not (the portal's own host).
CREATE_ELSEWHERE = """async () => {
  const c = await navigator.credentials.create({publicKey: {
    rp: {id: "auth.example.test", name: "not the portal"}, user: {id: new Uint8Array(16), name: "x", displayName: "x"},
    challenge: new Uint8Array(32), pubKeyCredParams: [{type: "public-key", alg: -7}]}});
  return btoa(String.fromCharCode(...new Uint8Array(c.rawId))).replace(/\\+/g, "-").replace(/\\//g, "_")
                                                                  .replace(/=+$/, "");
}"""
SECOND_FACTOR_API = ("/api/webauthn/authenticate/options", "/api/webauthn/authenticate")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, upstream) -> Iterator[NginxStack]:
    backend = f"127.0.0.1:{upstream.port}"
    with nginx_stack("https", tmp_path_factory.mktemp("security-keys"),
                     {"PROMETHEUS": backend, "ALERTMANAGER": backend, "PUBLIC": backend},
                     # every test's failures come from 127.0.0.1: only user bans here
                     portal_overrides={"webauthn": {"passkey_login": True}, "regulation": {"ip_max_retries": 0}},
                     users=PEOPLE) as started:
        yield started


@pytest.fixture(scope="module")
def chromium(playwright_driver, stack):
    launched = launch_chromium(playwright_driver, trusted_certificates=[stack.cert_file])
    yield launched
    launched.close()


@pytest.fixture
def context(chromium):
    made = chromium.new_context(viewport=DESKTOP)
    yield made
    made.close()


def b64url(standard: str) -> str:
    """A CDP credential id (base64) as WebAuthn and the portal write it (base64url, no padding)."""
    return base64.urlsafe_b64encode(base64.b64decode(standard)).decode().rstrip("=")


def sign_in(page, stack: NginxStack, user: str, path: str = "/") -> None:
    """Open `path` (the portal's, or a URL), sign in with the password; the page then shows what comes next."""
    page.goto(path if path.startswith("https://") else stack.portal_base + path)
    page.fill("#username", user)
    page.fill("#password", PEOPLE[user]["password"])
    page.click("#main form button[type=submit]")
    page.wait_for_load_state()


def sign_out(page, stack: NginxStack) -> None:
    page.goto(stack.portal_base + "/logout")
    page.click("#main form button[type=submit]")
    page.wait_for_url(lambda url: "/logout" not in url)


def add_key(page, stack: NginxStack, name: str) -> None:
    """From the account page: Add a security key, name it, the browser's key answers, back on the account page."""
    page.goto(stack.portal_base + "/")
    page.click("text=Add a security key")
    page.wait_for_url(stack.portal_base + "/webauthn/setup")
    page.fill("#key-name", name)
    page.click("#webauthn-register button[type=submit]")
    page.wait_for_url(stack.portal_base + "/")


def same_browser(context, stack: NginxStack, leaving_out: str = "") -> requests.Session:
    """`requests` with the browser's cookies (its session and CSRF cookie, but `leaving_out`), trusting the CA."""
    resolve_example_test()
    http = requests.Session()
    http.trust_env = False  # REQUESTS_CA_BUNDLE would win over verify=
    http.verify = str(stack.ca_file)
    for cookie in context.cookies():
        if cookie["name"] != leaving_out:
            http.cookies.set(cookie["name"], cookie["value"], domain=cookie["domain"], path=cookie["path"])
    return http


def key_names(page) -> list[str]:
    return page.locator("#security-keys .key-name").all_inner_texts()


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_key_added_on_the_account_page_is_the_second_factor_through_nginx(context, stack):
    page = context.new_page()
    cdp, first = add_virtual_authenticator(context, page)
    sign_in(page, stack, "alice")
    assert page.title() == "Your account · authportal"
    add_key(page, stack, "YubiKey 5")
    assert key_names(page) == ["YubiKey 5"]
    [held] = credentials(cdp, first)
    assert held["rpId"] == "example.test" and held["isResidentCredential"] is True
    assert base64.b64decode(held["userHandle"]) != b"alice" and len(base64.b64decode(held["userHandle"])) == 32

    # Another browser session: password, then the key, and the two_factor admin API opens through nginx.
    sign_out(page, stack)
    target = stack.url("app.example.test", ADMIN_PATH)
    sign_in(page, stack, "alice", target)
    page.wait_for_url(lambda url: "/2fa?" in url)
    assert page.locator("h1").inner_text() == "Security key"
    assert page.locator("#code").count() == 0  # alice has no authenticator app: only the key is offered
    page.click("#use-key")
    page.wait_for_url(target)
    assert echoed_headers(page)["Remote-User"] == "alice"

    # A second key (another authenticator; the first one stops answering), and the same key twice is refused.
    cdp.send("WebAuthn.setAutomaticPresenceSimulation", {"authenticatorId": first, "enabled": False})
    second = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True, "hasUserVerification": True,
        "isUserVerified": True, "automaticPresenceSimulation": True}})["authenticatorId"]
    add_key(page, stack, "Laptop")
    assert key_names(page) == ["YubiKey 5", "Laptop"]
    page.goto(stack.portal_base + "/webauthn/setup")
    page.fill("#key-name", "Laptop again")
    page.click("#webauthn-register button[type=submit]")
    status = page.locator("#webauthn-status")
    status.wait_for(state="visible")
    assert status.inner_text() == "This key is already registered."
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.goto(stack.portal_base + "/")
        page.screenshot(path=str(ARTIFACTS / f"account-two-security-keys-{width}.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    listed = run("webauthn", "list", "alice", "--config", str(stack.portal.setup.config_path))
    assert "YubiKey 5" in listed and "Laptop" in listed and "passkey" in listed

    # Remove the laptop on the page and the YubiKey with the CLI: neither signs in any more.
    page.goto(stack.portal_base + "/")
    page.click("button[aria-label='Remove Laptop']")
    page.wait_for_url(stack.portal_base + "/")
    assert key_names(page) == ["YubiKey 5"]
    page.goto(stack.portal_base + "/2fa?fresh=1")
    refused = page.evaluate(CEREMONY, [*SECOND_FACTOR_API, {"allow": [b64url(credentials(cdp, second)[0]["credentialId"])]}])
    assert (refused["status"], refused["body"]["error"]) == (401, "This key is not registered here.")
    output = run("webauthn", "remove", "alice", "YubiKey 5", "--config", str(stack.portal.setup.config_path))
    assert "removed security key" in output
    cdp.send("WebAuthn.setAutomaticPresenceSimulation", {"authenticatorId": first, "enabled": True})
    cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": second})
    page.goto(stack.portal_base + "/")
    assert page.locator("#security-keys").inner_text().count("No security keys yet.") == 1
    sign_out(page, stack)
    sign_in(page, stack, "alice", target)
    page.wait_for_url(lambda url: "/2fa/setup" in url)  # no second factor left: the portal offers enrollment


def test_a_passkey_signs_in_without_a_username_and_counts_as_two_factors_when_verified(context, stack):
    page = context.new_page()
    add_virtual_authenticator(context, page, user_verified=True)
    sign_in(page, stack, "frank")
    add_key(page, stack, "Phone")
    run("totp", "generate", "frank", "--config", str(stack.portal.setup.config_path))
    sign_out(page, stack)

    # with a key and an app, the second-factor page offers both, the key first
    sign_in(page, stack, "frank")
    page.wait_for_url(lambda url: "/2fa" in url)
    assert page.locator("h1").inner_text() == "Second factor"
    assert page.locator("#use-key").is_visible() and page.locator("#code").is_visible()
    assert page.locator("#use-key").bounding_box()["y"] < page.locator("#code").bounding_box()["y"]
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.screenshot(path=str(ARTIFACTS / f"second-factor-key-and-code-{width}.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    sign_out(page, stack)

    target = stack.url("app.example.test", ADMIN_PATH)
    page.goto(target)
    page.wait_for_url(lambda url: url.startswith(stack.portal_base + "/?rd="))
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(viewport)
        page.screenshot(path=str(ARTIFACTS / f"login-passkey-button-{width}.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    assert page.locator("#username").input_value() == ""
    page.click("#use-passkey")
    page.wait_for_url(target)  # the PIN-verified passkey is two factors: straight to the admin API
    assert echoed_headers(page)["Remote-User"] == "frank"


def assertion_without_verification(passkey: dict, options: dict, origin: str) -> str:
    """The answer a key without a PIN gives (user present, not verified), signed with the passkey's own private key
    as Chromium exported it: Chromium itself verifies the person for every passkey sign-in, Firefox with a
    CTAP2 key without a PIN does not."""
    client_data = json.dumps({"type": "webauthn.get", "challenge": options["challenge"], "origin": origin,
                              "crossOrigin": False}).encode()
    authenticator_data = (hashlib.sha256(options["rpId"].encode()).digest() + bytes([0x01])  # UP, not UV
                          + (passkey["signCount"] + 1).to_bytes(4, "big"))
    key = serialization.load_der_private_key(base64.b64decode(passkey["privateKey"]), None)
    signed = authenticator_data + hashlib.sha256(client_data).digest()
    if isinstance(key, ed25519.Ed25519PrivateKey):  # COSE -8, the first algorithm the portal offers
        signature = key.sign(signed)
    else:
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        signature = key.sign(signed, ec.ECDSA(hashes.SHA256()))
    credential_id = b64url(passkey["credentialId"])
    return json.dumps({"id": credential_id, "rawId": credential_id, "type": "public-key", "clientExtensionResults": {},
                       "response": {"clientDataJSON": text(client_data), "authenticatorData": text(authenticator_data),
                                    "signature": text(signature), "userHandle": b64url(passkey["userHandle"])}})


def text(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_a_passkey_without_user_verification_is_one_factor_and_never_also_the_second(context, stack):
    page = context.new_page()
    cdp, authenticator = add_virtual_authenticator(context, page)
    sign_in(page, stack, "grace")
    add_key(page, stack, "Plain key")
    [passkey] = credentials(cdp, authenticator)

    http = same_browser(context, stack, leaving_out="authportal_session")  # signed out
    form = {"csrf_token": csrf_from(http.get(stack.portal_base + "/", timeout=10).text)}
    options = http.post(stack.portal_base + "/api/webauthn/passkey/options", data=form, timeout=10).json()
    assert options["allowCredentials"] == [] and options["userVerification"] == "preferred"
    signed_in = http.post(stack.portal_base + "/api/webauthn/passkey", timeout=10, data={
        **form, "credential": assertion_without_verification(passkey, options, stack.portal_base)})
    assert signed_in.status_code == 200, signed_in.text
    info = http.get(stack.portal_base + "/api/user/info", timeout=10).json()
    assert (info["user"], info["level"]) == ("grace", 1)
    account = http.get(stack.portal_base + "/", timeout=10).text
    assert "with a passkey (one factor)" in account
    # the same key cannot be her second factor: the portal has no other key of hers to ask for
    second_factor = http.get(stack.portal_base + "/2fa", timeout=10).text
    assert 'id="use-key"' not in second_factor
    refused = http.post(stack.portal_base + "/api/webauthn/authenticate/options", data=form, timeout=10)
    assert (refused.status_code, refused.json()["message"]) == (400, "You have no security key to use here.")


def test_replays_other_users_keys_other_relying_parties_and_cloned_keys_are_refused(context, stack):
    page = context.new_page()
    cdp, authenticator = add_virtual_authenticator(context, page)
    sign_in(page, stack, "bob")
    add_key(page, stack, "Bob's key")
    bobs = b64url(credentials(cdp, authenticator)[0]["credentialId"])
    sign_out(page, stack)
    sign_in(page, stack, "erin")
    add_key(page, stack, "Erin's key")
    sign_out(page, stack)

    sign_in(page, stack, "erin")
    page.wait_for_url(lambda url: "/2fa" in url)
    # bob's key, in the same authenticator, answers for erin: refused
    other = page.evaluate(CEREMONY, [*SECOND_FACTOR_API, {"allow": [bobs]}])
    assert (other["status"], other["body"]["error"]) == (401, "This key belongs to another account.")
    # a key made for another relying party (the portal's own host, not example.test)
    elsewhere = page.evaluate(CREATE_ELSEWHERE)
    foreign = page.evaluate(CEREMONY, [*SECOND_FACTOR_API, {"allow": [elsewhere], "rpId": "auth.example.test"}])
    assert (foreign["status"], foreign["body"]["error"]) == (401, "This key is not registered here.")

    # a good answer, kept and posted again: once to the same ceremony, once to a new one
    kept = page.evaluate(CEREMONY, [*SECOND_FACTOR_API, {"post": False}])
    ceremony_cookie = [c for c in context.cookies() if c["name"] == "__Host-authportal_webauthn"]
    used = page.evaluate(POST_ANSWER, [SECOND_FACTOR_API[1], kept["credential"]])
    assert used["status"] == 200
    page.goto(stack.portal_base + "/2fa?fresh=1")
    context.add_cookies(ceremony_cookie)
    again = page.evaluate(POST_ANSWER, [SECOND_FACTOR_API[1], kept["credential"]])
    assert (again["status"], again["body"]["error"]) == (401, "This request expired or was already used. Try again.")
    page.evaluate("""() => fetch("/api/webauthn/authenticate/options", {method: "POST",
                     body: new URLSearchParams(new FormData(document.querySelector("form[data-webauthn]")))})""")
    new_ceremony = page.evaluate(POST_ANSWER, [SECOND_FACTOR_API[1], kept["credential"]])
    assert (new_ceremony["status"], new_ceremony["body"]["error"]) == (401, "The key's answer was not accepted. Try again.")

    # the key's counter goes backwards (a copy of the key that signed less often): refused and blocked
    erins = next(c for c in credentials(cdp, authenticator) if c.get("userName") == "erin")
    assert erins["signCount"] >= 1
    cdp.send("WebAuthn.removeCredential", {"authenticatorId": authenticator, "credentialId": erins["credentialId"]})
    cdp.send("WebAuthn.addCredential", {"authenticatorId": authenticator, "credential": {**erins, "signCount": 0}})
    cloned = page.evaluate(CEREMONY, [*SECOND_FACTOR_API, {}])
    assert cloned["status"] == 401 and "counter went backwards" in cloned["body"]["error"]
    page.goto(stack.portal_base + "/")
    assert "Blocked" in page.locator("#security-keys").inner_text()
    listed = run("webauthn", "list", "erin", "--config", str(stack.portal.setup.config_path))
    assert "blocked (counter went backwards)" in listed
    audit = (stack.portal.setup.directory / "audit.log").read_text()
    assert '"event": "webauthn_key_blocked"' in audit
    metrics = requests.get(f"http://127.0.0.1:{stack.portal.setup.port}/metrics", timeout=10).text
    counted = dict(re.findall(r'^authportal_webauthn_total\{result="(\w+)",use="security_key"\} (\S+)$', metrics, re.M))
    assert float(counted["success"]) >= 1 and float(counted["bad_credentials"]) >= 5, counted


def test_a_banned_user_cannot_sign_in_with_a_passkey_either(context, stack, chromium):
    page = context.new_page()
    add_virtual_authenticator(context, page)
    sign_in(page, stack, "carol")
    add_key(page, stack, "Carol's passkey")
    sign_out(page, stack)
    guesser = chromium.new_context()
    try:
        wrong = guesser.new_page()
        for attempt in range(5):  # regulation.max_retries (default 5) wrong passwords ban carol
            wrong.goto(stack.portal_base + "/")
            wrong.fill("#username", "carol")
            wrong.fill("#password", f"guess-{attempt}")
            wrong.click("#main form button[type=submit]")
            wrong.wait_for_load_state()
    finally:
        guesser.close()
    page.goto(stack.portal_base + "/")
    page.click("#use-passkey")
    status = page.locator("#webauthn-status")
    status.wait_for(state="visible")
    assert status.inner_text() == "The key was not accepted. Try again, or use another factor."
    assert page.url.startswith(stack.portal_base + "/")
    assert not [c for c in context.cookies() if c["name"] == "authportal_session"]
