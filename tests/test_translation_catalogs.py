"""The shipped catalogs are complete and match the code: every string the code marks for translation is in
every language, none empty or fuzzy, the placeholders agree, and the compiled `.mo` files the package serves
are the `.po` files as they stand (docs/translations.md says how to update them)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

from authportal.i18n import TRANSLATIONS
from authportal.languages import LANGUAGES
from tests.servers.process import REPO

TRANSLATED = [language.catalog for language in LANGUAGES if language.catalog != "en"]


def _po(code: str):
    with open(TRANSLATIONS / code / "LC_MESSAGES" / "messages.po", "rb") as source:
        return read_po(source, locale=code)


def _key(value):
    """A message's id or strings as a dict key (read_mo gives a plural's as a list)."""
    return tuple(value) if isinstance(value, list | tuple) else value


def _ids(catalog) -> set:
    return {message.id for message in catalog if message.id}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> set:
    """The strings the code marks today (the same command docs/translations.md gives)."""
    pot = tmp_path_factory.mktemp("pot") / "messages.pot"
    subprocess.run([str(Path(sys.executable).parent / "pybabel"), "-q", "extract", "-F", "babel.cfg",
                    "-k", "_l", "-k", "lazy_gettext", "-k", "ngettext:1,2", "--no-location", "-o", str(pot), "."],
                   cwd=REPO, check=True)
    with open(pot, "rb") as source:
        return _ids(read_po(source))


def test_the_template_is_up_to_date(extracted):
    with open(TRANSLATIONS / "messages.pot", "rb") as source:
        assert _ids(read_po(source)) == extracted, "run the pybabel extract in docs/translations.md"


@pytest.mark.parametrize("code", TRANSLATED)
def test_every_marked_string_is_translated_and_none_is_fuzzy(code, extracted):
    catalog = _po(code)
    missing = extracted - _ids(catalog)
    assert not missing, f"{code}: not in the catalog (pybabel update): {sorted(map(str, missing))[:5]}"
    for message in catalog:
        if not message.id or message.id not in extracted:
            continue
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        assert all(strings), f"{code}: empty translation of {message.id!r}"
        assert not message.fuzzy, f"{code}: fuzzy translation of {message.id!r}"


@pytest.mark.parametrize("code", TRANSLATED)
def test_placeholders_agree(code):
    """`%(name)s` in a translation must be the original's: a wrong name would fail on the page."""
    problems = [f"{message.id!r}: {error}" for message, errors in _po(code).check() for error in errors]
    assert not problems, f"{code}: {problems[:5]}"


@pytest.mark.parametrize("code", TRANSLATED)
def test_no_translation_brings_markup_or_double_quotes(code):
    """Templates show a translation as written (Jinja's i18n marks it safe, escaping only the placeholders'
    values), some inside an attribute (aria-label, data-msg-*): a `"` or `<` of the translator's own would break
    the page. Typographic quotes („…“, « », 「」) are fine."""
    for message in _po(code):
        if not message.id:
            continue
        originals = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        for char in '<>"':
            allowed = max(original.count(char) for original in originals)
            assert all(string.count(char) <= allowed for string in strings), \
                f"{code}: {char!r} in the translation of {message.id!r}: use the language's own quotes"


@pytest.mark.parametrize("code", TRANSLATED)
def test_the_compiled_catalog_is_the_source(code):
    with open(TRANSLATIONS / code / "LC_MESSAGES" / "messages.mo", "rb") as compiled:
        served = {_key(message.id): _key(message.string) for message in read_mo(compiled) if message.id}
    source = {_key(message.id): _key(message.string) for message in _po(code) if message.id and not message.fuzzy}
    assert served == source, f"{code}: run pybabel compile (docs/translations.md)"


def test_the_wheel_ships_the_compiled_catalogs():
    setup = (REPO / "setup.cfg").read_text()
    assert "authportal = translations/*/LC_MESSAGES/*.mo" in setup


def test_the_documented_update_commands_leave_the_shipped_catalogs_as_they_are(tmp_path):
    """docs/translations.md's commands, run verbatim on a copy of the sources: nothing new to translate, and
    what they compile is what the package ships."""
    import re
    import shutil

    block = re.search(r"## Updating the catalogs\n.*?```sh\n(.*?)```", (REPO / "docs" / "translations.md").read_text(),
                      re.S)
    assert block, "docs/translations.md has no sh block under 'Updating the catalogs'"
    shutil.copytree(REPO / "authportal", tmp_path / "authportal", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "templates", tmp_path / "templates")
    shutil.copy(REPO / "babel.cfg", tmp_path / "babel.cfg")
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    subprocess.run(["bash", "-euo", "pipefail", "-c", block.group(1)], cwd=tmp_path, check=True,
                   capture_output=True)
    for code in TRANSLATED:
        folder = Path("authportal") / "translations" / code / "LC_MESSAGES"
        with open(tmp_path / folder / "messages.po", "rb") as updated, open(REPO / folder / "messages.po", "rb") as shipped:
            assert _entries(read_po(updated)) == _entries(read_po(shipped)), code
        with open(tmp_path / folder / "messages.mo", "rb") as compiled, open(REPO / folder / "messages.mo", "rb") as ours:
            assert _entries(read_mo(compiled)) == _entries(read_mo(ours)), code


def _entries(catalog) -> dict:
    return {(message.context, _key(message.id)): _key(message.string) for message in catalog if message.id}
