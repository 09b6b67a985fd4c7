"""Which language a page speaks, and the picker that changes it (in-process; the browser stories are in
tests/test_i18n_browser.py, the catalogs' completeness in tests/test_translation_catalogs.py).

Order: the picker's cookie, then the browser's Accept-Language, then `i18n.default_locale`; the picker's
`next` only ever leads back onto the portal.
"""
from __future__ import annotations

import re

import pytest
import yaml

from authportal.config import ConfigError, load_config
from tests.support.in_process import PORTAL, page

LANGUAGE_COOKIE = "authportal_lang"


def html_lang(response) -> tuple[str, str]:
    match = re.search(r'<html lang="([^"]+)" dir="(ltr|rtl)"', response.get_data(as_text=True))
    assert match, "the page has no lang/dir"
    return match.group(1), match.group(2)


@pytest.mark.parametrize(("accept", "expected"), [
    ("de-DE,de;q=0.9,en;q=0.8", ("de", "ltr")),
    ("fr-CA", ("fr", "ltr")),                     # a region we do not ship: the language still is
    ("pt", ("pt-BR", "ltr")),
    ("zh-CN,zh;q=0.9", ("zh-Hans", "ltr")),
    ("ar-EG", ("ar", "rtl")),
    ("sv-SE,ja;q=0.5", ("ja", "ltr")),            # the first one we have, in the browser's order
    ("sv-SE", ("en", "ltr")),                     # none: the default
    ("", ("en", "ltr")),
])
def test_the_browser_language_picks_the_page_language(client, accept, expected):
    assert html_lang(page(client, "/", headers={"Accept-Language": accept})) == expected


def test_the_default_locale_applies_when_the_browser_names_none_we_have(app_with):
    from tests.support.in_process import ProxiedClient
    client = ProxiedClient(app_with(i18n={"default_locale": "pt-BR"}))
    assert html_lang(page(client, "/", headers={"Accept-Language": "sv"})) == ("pt-BR", "ltr")
    assert html_lang(page(client, "/", headers={"Accept-Language": "nl"})) == ("nl", "ltr")


def test_the_picker_remembers_a_language_over_the_browsers(client):
    answer = client.get("/language?lang=ja&next=/2fa", base_url=PORTAL)
    assert answer.status_code == 303 and answer.headers["Location"] == "/2fa"
    cookie = answer.headers["Set-Cookie"]
    assert cookie.startswith(f"{LANGUAGE_COOKIE}=ja;") and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Max-Age=31536000" in cookie
    assert html_lang(page(client, "/", headers={"Accept-Language": "de"})) == ("ja", "ltr")


def test_an_unknown_language_is_ignored(client):
    answer = client.get("/language?lang=xx&next=/", base_url=PORTAL)
    assert answer.status_code == 303 and "Set-Cookie" not in answer.headers
    client.set_cookie(LANGUAGE_COOKIE, "../../etc", domain="auth.example.test")
    assert html_lang(page(client, "/", headers={"Accept-Language": "it"})) == ("it", "ltr")


@pytest.mark.parametrize("next_url", ["https://evil.test/", "//evil.test/", "/\\evil.test", "javascript:alert(1)",
                                      "/\x0d\x0aSet-Cookie:x=1", "evil.test"])
def test_the_picker_goes_back_only_onto_the_portal(client, next_url):
    answer = client.get("/language", query_string={"lang": "de", "next": next_url}, base_url=PORTAL)
    assert answer.status_code == 303 and answer.headers["Location"] == "/"


def test_the_picker_keeps_the_page_and_its_query(client):
    target = "/?rd=http%3A%2F%2Fapp.example.test%2Fprometheus%2F"
    answer = client.get("/language", query_string={"lang": "de", "next": target}, base_url=PORTAL)
    assert answer.headers["Location"] == target
    shown = page(client, "/", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert 'name="next" value="/"' in shown and '<option value="de" lang="de" selected>Deutsch</option>' in shown


def test_the_picker_lists_every_language_in_its_own_name(client):
    shown = page(client, "/").get_data(as_text=True)
    names = re.findall(r'<option value="[^"]+" lang="[^"]+"(?: selected)?>([^<]+)</option>', shown)
    assert names == ["English", "Deutsch", "Français", "Español", "Italiano", "Nederlands", "Polski",
                     "Português (Brasil)", "日本語", "中文 (简体)", "العربية"]


def test_an_unshipped_default_locale_is_a_config_error(portal_setup):
    document = portal_setup.document()
    document["i18n"] = {"default_locale": "tlh"}
    portal_setup.config_path.write_text(yaml.safe_dump(document))
    with pytest.raises(ConfigError) as caught:
        load_config(portal_setup.config_path)
    assert any(problem.startswith("i18n.default_locale:") and "'tlh' is not a shipped language" in problem
               for problem in caught.value.errors)


def test_the_picker_on_a_form_answer_leads_back_to_the_form_not_to_a_post_only_url(client):
    from tests.support.in_process import post_login
    refused = post_login(client, "bob", password="wrong", rd="http://app.example.test/prometheus/")
    assert 'name="next" value="/?rd=http%3A%2F%2Fapp.example.test%2Fprometheus%2F"' in refused.get_data(as_text=True)


@pytest.mark.parametrize(("code", "time", "length"), [
    ("en", "Dec 3, 2026, 9:29\u202fAM UTC", "5 minutes"), ("de", "03.12.2026, 09:29 UTC", "5 Minuten"),
    ("fr", "3 déc. 2026, 09:29 UTC", "5 minutes"), ("ja", "2026/12/03 9:29 UTC", "5 分"),
    ("pl", "3 gru 2026, 09:29 UTC", "5 minut")])
def test_dates_and_lengths_of_time_follow_the_language(app, code, time, length):
    from flask_babel import force_locale

    from authportal.views.shared import duration, timestamp

    with app.flask.test_request_context(), force_locale(code):
        assert (timestamp(1796290140), duration(300)) == (time, length)
