"""Access rules that leak or can never apply: the warnings of ``authportal check-config``.

Rules are first-match-wins, and four mistakes pass validation yet change who gets in:

- **fall-through**: a rule keeps a path for a subject (``^/api/v1/admin/`` for ``group:admins``), but
  everyone else is not stopped there: they go on to a later, broader rule (or the default policy)
  that lets them in. The fix is a ``deny`` rule of the same scope right after it.
- **shadowed**: an earlier rule matches every request a later one would, so the later one never decides.
- **bypass over a protected path**: a ``bypass`` rule's resources cover a path that a later rule protects.
- **unanchored bypass**: resources are searched in the path *and* the ``?query``, so a ``bypass`` resource
  that is not anchored at the start of the path (``\\.css$``, ``/public/``) opens any path whose query names it.

A wrong warning teaches operators to ignore warnings, so every one is *sure*:

- a fall-through or bypass warning is only given with an example request (host, path, method, client
  address, user) that the real matcher (`AccessRules.decide`) decides that way; the examples are
  built from the rules themselves (their domains, sample strings of their regexes, their networks);
- "covers" (for shadowed rules, and a bypass rule's resources over a later rule's) is only claimed
  from sound, simple facts: equal values, a rule without that criterion, ``*.example.com`` over its
  subdomains, a ``domain_regex`` over the names it matches, subnets, and regexes that are identical or
  compared by literal prefix (`regex_facts`).

What cannot be proven is not warned about: two regexes written differently that match the same paths,
rules whose only domain is a regex that yields no sample host, a bypass restricted to some methods or
networks (a deliberate exception, like CORS preflights). A later rule that names the same scope as
the earlier one (same domains, resources, methods, networks, or narrower) is a deliberate grant to
another subject, not a fall-through.
"""
from __future__ import annotations

import ipaddress
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Literal

from .authorization import AccessRules, Criterion, normalise_host
from .config import AccessControlConfig, AccessRule
from .regex_facts import covers, samples

Kind = Literal["fall_through", "shadowed", "bypass", "unanchored"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Example values, when a rule does not pin them down (RFC 5737 documentation address, a neutral name).
_ANY_HOST = "example.com"
_ANY_IP = "192.0.2.10"
_ANY_USER = "someone"
_LIMIT = 4
#: A path no rule is written for: a bypass that matches it only with a ?query is opened by the query.
_PROBE_PATH = "/authportal-lint"


@dataclass(frozen=True)
class Finding:
    """One warning: its kind, the rules it is about (``later`` None = the default policy), and the text."""

    kind: Kind
    earlier: int
    later: int | None
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class _Example:
    host: str
    path: str
    method: str
    ip: str
    user: str | None
    groups: frozenset[str]

    @property
    def request(self) -> str:
        return f"{self.method} https://{self.host}{self.path}"


class _Scope:
    """One rule's criteria in comparable form."""

    def __init__(self, rule: AccessRule, named: dict[str, list[Network]]):
        self.rule = rule
        self.domains = [normalise_host(d) for d in rule.domain]
        self.domain_regex = list(rule.domain_regex)
        self.resources = list(rule.resources)
        self.methods = frozenset(rule.methods) or None
        nets = [n for name in rule.networks
                for n in (named[name] if name in named else [ipaddress.ip_network(name, strict=False)])]
        self.networks = nets or None
        self.subjects = []  # (user or None, groups); an item naming two users can never match: left out
        for item in rule.subject:
            names = [item] if isinstance(item, str) else item
            users = {s[5:] for s in names if s.startswith("user:")}
            if len(users) <= 1:
                self.subjects.append((next(iter(users), None), frozenset(s[6:] for s in names if s.startswith("group:"))))

    @property
    def any_host(self) -> bool:
        return "*" in self.domains

    def hosts(self) -> list[str]:
        """Concrete host names this rule applies to (a sample subdomain for ``*.x``, samples of its regexes)."""
        found = [d if not d.startswith("*.") else "sub." + d[2:] for d in self.domains if d != "*"]
        for pattern in self.domain_regex:
            found += [s.lower() for s in samples(pattern) if re.fullmatch(pattern, s.lower())]  # as the rules match
        return list(dict.fromkeys(found))


# Sound "covers" facts: True only when every request the later rule matches on that criterion,
# the earlier one matches too.

def _domain_covers(outer: _Scope, inner: _Scope) -> bool:
    if outer.any_host:
        return True
    exact = set(outer.domains)
    suffixes = [d[2:] for d in outer.domains if d.startswith("*.")]
    for domain in inner.domains:
        if domain in exact or (not domain.startswith("*") and any(re.fullmatch(r, domain) for r in outer.domain_regex)):
            continue
        base = domain[2:] if domain.startswith("*.") else domain
        if domain == "*" or not any(base.endswith("." + s) or (domain.startswith("*.") and base == s)
                                    for s in suffixes):
            return False
    return all(pattern in outer.domain_regex for pattern in inner.domain_regex)


def _resources_cover(outer: _Scope, inner: _Scope) -> bool:
    if not outer.resources:
        return True
    return bool(inner.resources) and all(any(covers(o, i) for o in outer.resources) for i in inner.resources)


def _methods_cover(outer: _Scope, inner: _Scope) -> bool:
    return outer.methods is None or (inner.methods is not None and inner.methods <= outer.methods)


def _networks_cover(outer: _Scope, inner: _Scope) -> bool:
    if outer.networks is None:
        return True
    return inner.networks is not None and all(
        any(i.version == o.version and i.subnet_of(o) for o in outer.networks) for i in inner.networks  # type: ignore[arg-type]
    )


def _subject_covers(outer: _Scope, inner: _Scope) -> bool:
    """Everyone ``inner``'s subject admits is admitted by ``outer``'s (anonymous requests stop at ``outer``)."""
    if not outer.rule.subject:
        return True
    if not inner.rule.subject:
        return False
    return all(any((ou is None or ou == iu) and og <= ig for ou, og in outer.subjects) for iu, ig in inner.subjects)


def _scope_covers(outer: _Scope, inner: _Scope) -> bool:
    return (_domain_covers(outer, inner) and _resources_cover(outer, inner)
            and _methods_cover(outer, inner) and _networks_cover(outer, inner))


class _Linter:
    def __init__(self, config: AccessControlConfig):
        self.config = config
        self.access = AccessRules(config)
        named = {n.name: list(n.networks) for n in config.networks}
        self.scopes = [_Scope(rule, named) for rule in config.rules]
        self.findings: list[Finding] = []
        #: later rule -> the first earlier rule that matches everything it would
        self.shadowed: dict[int, int] = {}

    def run(self) -> list[Finding]:
        for index in range(len(self.scopes)):
            self._check_shadowed(index)
        for index, scope in enumerate(self.scopes):
            if scope.rule.subject and scope.rule.policy != "deny":
                self._check_fall_through(index)
            if scope.rule.policy == "bypass" and scope.resources:
                self._check_bypass(index)
                self._check_unanchored(index)
        said = {(f.earlier, f.later) for f in self.findings}  # a bypass warning says more than "never matches"
        for later, earlier in self.shadowed.items():
            if (earlier, later) not in said:
                self.findings.append(Finding("shadowed", earlier, later, (
                    f"{_name(later)} can never match: {_name(earlier)} comes first and matches every request it "
                    f"would (its domain, resources, methods, networks and subject cover those of rules[{later}]). "
                    f"Fix: move rules[{later}] above rules[{earlier}], or remove it.")))
        return sorted(self.findings, key=lambda f: (f.earlier, f.later if f.later is not None else len(self.scopes)))

    # Which rules can meet on a host

    def _hosts(self, first: int, second: int | None) -> list[str]:
        """Example hosts both rules apply to (``second`` None: only ``first``)."""
        a = self.scopes[first]
        b = self.scopes[second] if second is not None else None
        options = a.hosts() + (b.hosts() if b else []) + [_ANY_HOST]
        wanted = {first} if second is None else {first, second}
        return [h for h in dict.fromkeys(options) if wanted <= set(self.access.candidates(h))][:_LIMIT]

    def _later_rules_meeting(self, index: int) -> list[int]:
        """Later rules that apply to at least one host rule ``index`` applies to, in order."""
        scope = self.scopes[index]
        hosts = scope.hosts()
        if scope.any_host or not hosts:
            hosts += [h for later in self.scopes[index + 1:] for h in later.hosts()] + [_ANY_HOST]
        met = {j for h in dict.fromkeys(hosts) for j in self.access.candidates(h) if j > index}
        return sorted(met)

    # Example requests

    def _examples(self, first: _Scope, second: _Scope | None, hosts: list[str], paths_from: Iterable[str],
                  identities: list[tuple[str | None, frozenset[str]]]) -> Iterator[_Example]:
        paths = [p if p.startswith("/") else "/" + p for pattern in paths_from for p in samples(pattern)]
        paths = list(dict.fromkeys(paths + ["/"]))[: 2 * _LIMIT]
        methods = first.methods if second is None or second.methods is None else (
            second.methods if first.methods is None else first.methods & second.methods)
        ordered_methods = sorted(methods or {"GET"}, key=lambda m: (m != "GET", m))[:2]
        nets = (first.networks or []) + ((second.networks or []) if second else [])
        addresses = [n[1] if n.num_addresses > 2 else n.network_address for n in nets]  # 10.0.0.1, not 10.0.0.0
        ips = list(dict.fromkeys([_ANY_IP] + [str(a) for a in addresses]))[: 2 * _LIMIT]
        for host, path, method, ip, (user, groups) in itertools.product(hosts, paths, ordered_methods, ips, identities):
            yield _Example(host, path, method, ip, user, groups)

    # The checks

    def _check_shadowed(self, index: int) -> None:
        later = self.scopes[index]
        hosts = later.hosts()
        earlier_candidates = (range(index) if later.any_host or not hosts
                              else [i for i in self.access.candidates(hosts[0]) if i < index])
        for i in earlier_candidates:
            earlier = self.scopes[i]
            if _scope_covers(earlier, later) and _subject_covers(earlier, later):
                self.shadowed[index] = i
                return

    def _check_fall_through(self, index: int) -> None:
        keeper = self.scopes[index]
        later_rules: list[int | None] = [j for j in self._later_rules_meeting(index)
                                         if self.scopes[j].rule.policy != "deny" and j not in self.shadowed]
        if self.config.default_policy != "deny":
            later_rules.append(None)
        for j in later_rules:
            taker = self.scopes[j] if j is not None else None
            if taker is not None and _scope_covers(keeper, taker):
                continue  # a rule about (part of) the same scope: a deliberate grant to its own subject
            identities: list[tuple[str | None, frozenset[str]]] = (
                [(u or _ANY_USER, g) for u, g in taker.subjects] if taker and taker.rule.subject else [])
            identities = identities or [(_ANY_USER, frozenset())]
            paths_from = keeper.resources or (taker.resources if taker else [])
            for example in self._examples(keeper, taker, self._hosts(index, j), paths_from, identities[:_LIMIT]):
                trace: list[tuple[int, Criterion]] = []
                decision = self.access.decide(example.host, example.path, example.method, example.ip,
                                              example.user, example.groups, trace)
                if decision.rule == j and decision.policy != "deny" and (index, "subject") in trace:
                    self.findings.append(self._fall_through(index, j, decision.policy, example))
                    return

    def _fall_through(self, index: int, later: int | None, policy: str, example: _Example) -> Finding:
        keeper = self.scopes[index].rule
        target = _name(later) if later is not None else "access_control.default_policy"
        fix = {k: v for k, v in keeper.model_dump(include={"domain", "domain_regex", "resources", "methods",
                                                           "networks"}).items() if v}
        fields = ", ".join(f"{k}: {json.dumps(v)}" for k, v in fix.items())
        return Finding("fall_through", index, later, (
            f"{_name(index)} ({keeper.policy} for {_subject_text(keeper.subject)}) does not stop anyone else: they "
            f"fall through to {target} ({policy}), e.g. {_identity_text(example)} gets {example.request}"
            f"{_from_text(example, self.scopes[index], self.scopes[later] if later is not None else None)}. "
            f"Fix: add the rule {{{fields}, policy: deny}} right after rules[{index}]."))

    def _check_bypass(self, index: int) -> None:
        bypass = self.scopes[index]
        for j in self._later_rules_meeting(index):
            protected = self.scopes[j]
            if (self.shadowed.get(j, index) != index or protected.rule.policy == "bypass" or not protected.resources
                    or not _methods_cover(bypass, protected) or not _networks_cover(bypass, protected)):
                continue
            swallowed = [r for r in protected.resources if any(covers(b, r) for b in bypass.resources)]
            if not swallowed:
                continue
            hosts = self._hosts(index, j)
            for example in self._examples(protected, None, hosts, swallowed[:1], [(None, frozenset())]):
                if self._rule_for(example) == index:
                    self.findings.append(Finding("bypass", index, j, (
                        f"{_name(index)} (bypass) lets anyone through to what {_name(j)} protects "
                        f"({protected.rule.policy}): its resources cover {json.dumps(swallowed[0])}, e.g. "
                        f"{example.request} is let through by rules[{index}] without a login. "
                        f"Fix: move rules[{j}] above rules[{index}], or narrow rules[{index}]'s resources.")))
                    break

    def _check_unanchored(self, index: int) -> None:
        """A bypass resource found in the ?query of a path no rule is about opens every path that way."""
        bypass = self.scopes[index]
        for resource in bypass.resources:
            for example in self._examples(bypass, None, self._hosts(index, None), [], [(None, frozenset())]):
                for sample in samples(resource):
                    opened = replace(example, path=f"{_PROBE_PATH}?q={sample}")
                    if self._rule_for(opened) == index and self._rule_for(replace(example, path=_PROBE_PATH)) != index:
                        self.findings.append(Finding("unanchored", index, None, (
                            f"{_name(index)} (bypass) is not anchored at the start of the path: its resource "
                            f"{json.dumps(resource)} is searched in the path and the ?query, so {opened.request} is "
                            "let through without a login whatever its path. "
                            "Fix: start it with ^/ (e.g. ^/static/.*\\.css$ or ^/public/).")))
                        return

    def _rule_for(self, example: _Example) -> int | None:
        return self.access.decide(example.host, example.path, example.method, example.ip, example.user,
                                  example.groups).rule


def lint_access_rules(config: AccessControlConfig) -> list[Finding]:
    """Every fall-through, shadowed rule, bypass over a protected path and unanchored bypass in
    ``access_control``, in rule order."""
    return _Linter(config).run()


def _name(index: int) -> str:
    return f"access_control.rules[{index}]"


def _subject_text(subject: list[str | list[str]]) -> str:
    return " or ".join(item if isinstance(item, str) else " and ".join(item) for item in subject)


def _identity_text(example: _Example) -> str:
    groups = " and ".join(f"group:{g}" for g in sorted(example.groups))
    if example.user == _ANY_USER:
        return f"a user in {groups}" if groups else "any signed-in user"
    return f"user:{example.user}" + (f" (in {groups})" if groups else "")


def _from_text(example: _Example, first: _Scope, second: _Scope | None) -> str:
    """`` from 10.0.0.1`` when a rule's networks made the address matter."""
    return f" from {example.ip}" if first.networks or (second and second.networks) else ""
