"""Access rules: which policy applies to a request (``access_control`` in the config).

Semantics follow Authelia: rules are tried in order and the first one whose
criteria all match wins; no match means ``default_policy``.  ``domain`` and
``domain_regex`` together form the one *domain* criterion (either may match),
``resources`` regexes are searched in the path plus ``?query``, ``subject``
items are OR'ed and a list item is AND'ed.

An anonymous request that reaches a rule with a ``subject`` cannot be judged
yet: it is answered ``one_factor`` for that rule ("log in, then we'll know").

This runs for every proxied request, so the rules are compiled once, the rules
that can apply to a host are computed once per host and cached, and client
addresses are parsed once and cached. ``explain`` (for ``authportal access
check`` and the rule checks) runs the very same matching, told to note which
criterion turned each earlier rule down.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal
from urllib.parse import unquote, urlsplit

from .config import AccessControlConfig, AccessRule, HeaderValue

_CACHE_SIZE = 4096
_MAX_HOST = 253  # longest DNS name
_NOBODY = object()  # a required user equal to no user name


@dataclass(frozen=True, slots=True)
class Decision:
    """The policy for one request; ``rule`` is the matching rule's index (None = default policy)."""

    policy: str
    rule: int | None
    basic_auth: bool | None
    #: The rule's step-up bound in seconds (None: a sign-in of any age in a live session will do).
    max_age: float | None = None
    #: The rule's own identity headers (added to, or replacing, `identity.headers`).
    headers: Mapping[str, HeaderValue] | None = None


_UNROUTABLE = Decision("two_factor", None, None)

#: The criteria a rule can miss on, in the order `decide` tries them (the domain first, through the host index).
Criterion = Literal["domain", "methods", "networks", "resources", "subject"]


@dataclass(frozen=True, slots=True)
class Explanation:
    """``decision`` and, for every rule before the deciding one (all rules for the default policy), the first
    criterion it did not match, as ``(rule index, criterion)`` in rule order."""

    decision: Decision
    misses: tuple[tuple[int, Criterion], ...]


class _Rule:
    """One rule with its criteria compiled; the domain criterion is handled by the host index."""

    __slots__ = ("anonymous", "index", "matched", "methods", "networks", "resources", "subjects")

    def __init__(self, index: int, rule: AccessRule, named: dict[str, list[str]]):
        self.index = index
        self.resources = tuple(re.compile(r).search for r in rule.resources)
        self.methods = frozenset(rule.methods) or None
        nets = [ipaddress.ip_network(n, strict=False) for name in rule.networks for n in named.get(name, [name])]
        # (version, network int, mask int): a membership test is one AND and one compare.
        self.networks = tuple((n.version, int(n.network_address), int(n.netmask)) for n in nets) or None
        subjects = []
        for item in rule.subject:
            names = [item] if isinstance(item, str) else item
            users = {s[5:] for s in names if s.startswith("user:")}
            groups = frozenset(s[6:] for s in names if s.startswith("group:"))
            if len(users) <= 1:  # `[user:a, user:b]` can never match: dropped
                subjects.append((users.pop() if users else None, groups))
        # A rule with a subject always has some: an impossible item still marks it as "needs a user".
        self.subjects = tuple(subjects) or (((_NOBODY, frozenset()),) if rule.subject else ())
        headers = MappingProxyType(dict(rule.headers)) if rule.headers else None
        self.matched = Decision(rule.policy, index, rule.basic_auth, rule.max_age, headers)
        self.anonymous = Decision("one_factor", index, rule.basic_auth, rule.max_age, headers)


def normalise_host(host: str) -> str:
    """``Example.COM:8443`` → ``example.com``; ``[::1]:80`` → ``[::1]``; a trailing dot is dropped."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[: host.find("]") + 1] or host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def normalise_path(target: str) -> str:
    """A request target (path plus raw ``?query``) as the proxy routes it, which is what the rules must judge.

    The path is percent-decoded once, ``.``/``..`` segments are resolved and repeated slashes merged — what
    nginx makes of it (``$uri``) and what Caddy and most applications do. Matching the raw path instead would let
    ``/public/../prometheus/`` pass as a public path and ``/api/v1/%61dmin/`` slip past an ``admin`` rule. A
    decoded ``?`` or ``#`` stays encoded, so the query still starts at the first ``?``. ValueError when the path
    climbs above the root (nginx answers that with 400) or decodes to a NUL.
    """
    path, sep, query = target.partition("?")
    if "%" not in path and "/." not in path and "//" not in path:
        return target  # nothing to resolve: the common case costs three substring checks
    decoded = unquote(path, errors="surrogateescape")
    if "\x00" in decoded:
        raise ValueError("the path decodes to a NUL")
    segments: list[str] = []
    for segment in decoded.split("/"):
        if segment == "..":
            if not segments:
                raise ValueError("the path climbs above the root")
            segments.pop()
        elif segment not in ("", "."):
            segments.append(segment.replace("?", "%3F").replace("#", "%23"))
    last = decoded.rpartition("/")[2]
    trailing = "/" if segments and last in ("", ".", "..") else ""
    return "/" + "/".join(segments) + trailing + sep + query


class AccessRules:
    """The compiled ``access_control`` section; ``decide`` answers one request."""

    def __init__(self, config: AccessControlConfig):
        named = {n.name: [str(net) for net in n.networks] for n in config.networks}
        self._rules = [_Rule(i, r, named) for i, r in enumerate(config.rules)]
        self._default = Decision(config.default_policy, None, None)
        # Host index: exact names, `*.suffix` wildcards, and rules that must be tried on every host.
        self._exact: dict[str, list[int]] = {}
        self._wildcard: dict[str, list[int]] = {}
        self._scan: list[tuple[int, tuple[re.Pattern[str], ...], bool]] = []
        for i, rule in enumerate(config.rules):
            regexes = tuple(re.compile(r) for r in rule.domain_regex)
            any_host = False
            for domain in rule.domain:
                domain = normalise_host(domain)
                if domain == "*":
                    any_host = True
                elif domain.startswith("*."):
                    self._wildcard.setdefault(domain[2:], []).append(i)
                else:
                    self._exact.setdefault(domain, []).append(i)
            if regexes or any_host:
                self._scan.append((i, regexes, any_host))
        self._candidates: dict[str, tuple[_Rule, ...]] = {}
        self._addresses: dict[str, tuple[int, int] | None] = {}

    def candidates(self, host: str) -> tuple[int, ...]:
        """Indices of the rules whose domain criterion matches ``host``, in rule order."""
        return tuple(r.index for r in self._rules_for(host))

    def _rules_for(self, host: str) -> tuple[_Rule, ...]:
        cached = self._candidates.get(host)
        if cached is not None:
            return cached
        name = normalise_host(host)
        if len(name) > _MAX_HOST:  # not a DNS name: only `*` rules can apply
            name = ""
        found = set(self._exact.get(name, ()))
        labels = name.split(".") if self._wildcard else ()
        for start in range(1, len(labels)):  # proper suffixes only: `*.example.com` ≠ `example.com`
            found.update(self._wildcard.get(".".join(labels[start:]), ()))
        for i, regexes, any_host in self._scan:
            if i not in found and (any_host or any(r.fullmatch(name) for r in regexes)):
                found.add(i)
        result = tuple(self._rules[i] for i in sorted(found))
        if len(host) <= _MAX_HOST + 8:
            if len(self._candidates) >= _CACHE_SIZE:
                self._candidates.clear()
            self._candidates[host] = result
        return result

    def _address(self, client_ip: str) -> tuple[int, int] | None:
        """``(version, int)`` of a client address, or None when it does not parse."""
        try:
            return self._addresses[client_ip]
        except KeyError:
            pass
        if len(client_ip) > 64:
            return None
        try:
            ip = ipaddress.ip_address(client_ip.strip().strip("[]"))
            if ip.version == 6 and ip.ipv4_mapped is not None:  # ::ffff:10.0.0.1 is 10.0.0.1
                ip = ip.ipv4_mapped
            parsed: tuple[int, int] | None = (ip.version, int(ip))
        except ValueError:
            parsed = None  # garbage never matches a network criterion
        if len(self._addresses) >= _CACHE_SIZE:
            self._addresses.clear()
        self._addresses[client_ip] = parsed
        return parsed

    def decide(
        self,
        host: str,
        path: str,
        method: str,
        client_ip: str,
        user: str | None,
        groups: frozenset[str],
        trace: list[tuple[int, Criterion]] | None = None,
    ) -> Decision:
        """First matching rule's decision; ``path`` is the normalised path (`normalise_path`) plus ``?query``.

        ``trace`` (for `explain` only) receives ``(rule index, criterion)`` for each candidate rule that missed;
        the verify path passes none, which costs one comparison per missed rule.
        """
        method = method.upper()
        address: tuple[int, int] | None = None
        for rule in self._rules_for(host):
            if rule.methods is not None and method not in rule.methods:
                if trace is not None:
                    trace.append((rule.index, "methods"))
                continue
            if rule.networks is not None:
                address = address or self._address(client_ip)
                if address is None:
                    if trace is not None:
                        trace.append((rule.index, "networks"))
                    continue
                version, value = address
                for v, net, mask in rule.networks:
                    if v == version and value & mask == net:
                        break
                else:
                    if trace is not None:
                        trace.append((rule.index, "networks"))
                    continue
            if rule.resources:
                for search in rule.resources:
                    if search(path):
                        break
                else:
                    if trace is not None:
                        trace.append((rule.index, "resources"))
                    continue
            if rule.subjects:
                if not user:  # anonymous: cannot tell yet, ask for a login
                    return rule.anonymous
                for required_user, required_groups in rule.subjects:
                    if (required_user is None or required_user == user) and required_groups <= groups:
                        break
                else:
                    if trace is not None:
                        trace.append((rule.index, "subject"))
                    continue
            return rule.matched
        return self._default

    def explain(
        self,
        host: str,
        path: str,
        method: str,
        client_ip: str,
        user: str | None,
        groups: frozenset[str],
    ) -> Explanation:
        """`decide`, plus why each earlier rule did not match: the same matching, with a trace."""
        trace: list[tuple[int, Criterion]] = []
        decision = self.decide(host, path, method, client_ip, user, groups, trace)
        applying = {rule.index for rule in self._rules_for(host)}
        reached = len(self._rules) if decision.rule is None else decision.rule
        misses = trace + [(i, "domain") for i in range(reached) if i not in applying]
        return Explanation(decision, tuple(sorted(misses)))

    def required(
        self, url: str, method: str, client_ip: str, user: str | None, groups: frozenset[str]
    ) -> Decision:
        """The decision for an absolute URL: does the ``rd`` target after login need two_factor, a fresh sign-in?"""
        parts = urlsplit(url)
        try:
            path = normalise_path((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
        except ValueError:
            return _UNROUTABLE  # no proxy would route it; ask for the most, verify refuses it anyway
        return self.decide(parts.netloc.rpartition("@")[2], path, method, client_ip, user, groups)

    def required_policy(
        self, url: str, method: str, client_ip: str, user: str | None, groups: frozenset[str]
    ) -> str:
        return self.required(url, method, client_ip, user, groups).policy
