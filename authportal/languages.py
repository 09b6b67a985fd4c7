"""The languages the portal ships, as data: which catalogs exist and how a page names them.

Kept apart from `i18n` (the Flask side) so that the configuration can check
`i18n.default_locale` without loading Flask.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from babel import Locale


@dataclass(frozen=True)
class Language:
    """One language the portal ships: its catalog name (`pt_BR`) and the tag a page carries (`pt-BR`)."""

    catalog: str

    @property
    def tag(self) -> str:
        return self.catalog.replace("_", "-")

    @cached_property
    def native_name(self) -> str:
        """The language's own name for itself ("Deutsch"), as a picker shows it."""
        name = Locale.parse(self.catalog).display_name or self.catalog
        return name[:1].upper() + name[1:]

    @cached_property
    def direction(self) -> str:
        return Locale.parse(self.catalog).text_direction  # "ltr" or "rtl"


#: Every shipped language, English (the source strings) first.
LANGUAGES = tuple(Language(code) for code in (
    "en", "de", "fr", "es", "it", "nl", "pl", "pt_BR", "ja", "zh_Hans", "ar"))
BY_TAG = {language.tag.lower(): language for language in LANGUAGES}
CODES = tuple(language.catalog for language in LANGUAGES)


def find(tag: str | None) -> Language | None:
    """The shipped language for a tag or catalog name (`pt-BR`, `pt_br`), if any."""
    return BY_TAG.get(tag.replace("_", "-").lower()) if tag else None


