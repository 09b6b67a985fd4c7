"""What can be said for sure about a rule's regular expression, for the access-rule checks (`access_lint`).

Whether one regex matches everything another matches is undecidable in general, and a wrong answer
here would print a false warning, so only two cheap, sound facts are drawn from a pattern's parse
tree (Python's own ``re`` parser, so escapes, classes and alternations are read the way ``re`` reads
them):

- ``covers(general, specific)``: identical patterns, or *literal-prefix* patterns compared by prefix
  (``^/api/`` covers ``^/api/v1/admin/(tsdb|status)``, since every match of the second starts with
  ``/api/``). Anything else is "don't know", answered False.
- ``samples(pattern)``: a few strings the pattern certainly matches (each one checked with ``re``),
  used to build example requests that the real rule matcher then decides.

Patterns with the case-insensitive or multi-line flag never count as literal-prefix patterns.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache

# re's own parser (Python >= 3.11), so that a pattern is read exactly the way re reads it.
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

_UNSURE_FLAGS = re.IGNORECASE | re.MULTILINE
_ANCHORS = (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING)


@dataclass(frozen=True)
class Prefix:
    """Every string the pattern matches starts with ``text`` (``anchored``) or contains it (unanchored).

    ``whole``: the pattern is nothing but that (``^/api/`` or ``^/api/.*``), so it also matches *every*
    string that starts with (contains) ``text``.
    """

    anchored: bool
    text: str
    whole: bool


@lru_cache(maxsize=1024)
def literal_prefix(pattern: str) -> Prefix | None:
    """The literal-prefix reading of ``pattern``; None when it has unsure flags or does not parse."""
    try:
        parsed = sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError):
        return None
    if parsed.state.flags & _UNSURE_FLAGS:
        return None
    items = list(parsed.data)
    anchored = bool(items) and items[0][0] is sre.AT and items[0][1] in _ANCHORS
    if anchored:
        items = items[1:]
    text = []
    for op, value in items:
        if op is not sre.LITERAL:
            break
        text.append(chr(value))
    rest = items[len(text):]
    return Prefix(anchored, "".join(text), not rest or (len(rest) == 1 and _is_dot_star(*rest[0])))


def _is_dot_star(op: Any, value: Any) -> bool:
    """``.*`` or ``.*?``: it may match nothing, so it adds no condition."""
    if op not in (sre.MAX_REPEAT, sre.MIN_REPEAT):
        return False
    low, _high, inner = value
    return low == 0 and list(inner) == [(sre.ANY, None)]


def covers(general: str, specific: str) -> bool:
    """True when every string ``specific`` matches (``re.search``) is certainly matched by ``general`` too."""
    if general == specific:
        return True
    outer, inner = literal_prefix(general), literal_prefix(specific)
    if outer is None or inner is None or not outer.whole:
        return False
    if outer.anchored:
        return inner.anchored and inner.text.startswith(outer.text)
    return outer.text in inner.text


# Sample strings

_CATEGORY_CHARS = {
    sre.CATEGORY_DIGIT: "0", sre.CATEGORY_NOT_DIGIT: "a", sre.CATEGORY_WORD: "a", sre.CATEGORY_NOT_WORD: "-",
    sre.CATEGORY_SPACE: " ", sre.CATEGORY_NOT_SPACE: "a",
}
_PLAIN_CHARS = "axz0-_/"


class _Unsure(Exception):
    """A construct this reader does not turn into samples (back-references, conditionals)."""


def samples(pattern: str, limit: int = 6) -> list[str]:
    """Up to ``limit`` short strings ``pattern`` matches (``re.search``); fewer, maybe none, when unsure."""
    try:
        parsed = sre_parse.parse(pattern)
        candidates = _sequence(list(parsed.data), limit)
        compiled = re.compile(pattern)
    except (_Unsure, re.error, RecursionError, OverflowError):
        return []
    found: list[str] = []
    for text in candidates:
        if text not in found and compiled.search(text):
            found.append(text)
    return found


def _sequence(items: list[tuple[Any, Any]], limit: int) -> list[str]:
    results = [""]
    for op, value in items:
        choices = _item(op, value, limit)
        results = ["".join(pair) for pair in itertools.islice(itertools.product(results, choices), limit)]
    return results


def _item(op: Any, value: Any, limit: int) -> list[str]:
    if op is sre.LITERAL:
        return [chr(value)]
    if op is sre.NOT_LITERAL:
        return [next(c for c in _PLAIN_CHARS if ord(c) != value)]
    if op is sre.ANY:
        return ["x"]
    if op is sre.IN:
        return [_char_in(value)]
    if op in (sre.AT, sre.ASSERT, sre.ASSERT_NOT):
        return [""]  # anchors and look-arounds add no text; the final re.search check judges them
    if op is sre.BRANCH:
        alternatives = value[1]
        return list(itertools.islice(
            itertools.chain.from_iterable(_sequence(list(alt), limit) for alt in alternatives), limit))
    if op is sre.SUBPATTERN:
        return _sequence(list(value[3]), limit)
    if op is sre.ATOMIC_GROUP:
        return _sequence(list(value), limit)
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", None)):
        low, high, inner = value
        counts = [low] if low == high else [low, low + 1]
        body = _sequence(list(inner), limit)
        return [text * count for count in counts for text in body][:limit]
    raise _Unsure(str(op))


def _char_in(members: list[tuple[Any, Any]]) -> str:
    if members and members[0][0] is sre.NEGATE:
        excluded = {value for op, value in members[1:] if op is sre.LITERAL}
        ranges = [value for op, value in members[1:] if op is sre.RANGE]
        if any(op not in (sre.LITERAL, sre.RANGE) for op, _ in members[1:]):
            raise _Unsure("negated class with categories")
        for char in _PLAIN_CHARS:
            code = ord(char)
            if code not in excluded and not any(lo <= code <= hi for lo, hi in ranges):
                return char
        raise _Unsure("negated class")
    for op, value in members:
        if op is sre.LITERAL:
            return chr(value)
        if op is sre.RANGE:
            return chr(value[0])
        if op is sre.CATEGORY and value in _CATEGORY_CHARS:
            return _CATEGORY_CHARS[value]
    raise _Unsure("character class")
