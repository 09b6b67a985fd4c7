"""`authportal access check URL`: which rule decides a request, and why the rules before it did not match.

The answer comes from the server's own code: the URL is read as `/api/verify` reads
``X-Original-URL`` (`AuthRequest`), the path normalised as there (`normalise_path`), and
`AccessRules.explain` runs the very matching the verify endpoint runs.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

import click

from ..authorization import AccessRules, Criterion, Explanation, normalise_host, normalise_path
from ..config import AccessRule, Config
from ..exits import EXIT_CONFIG, EXIT_RUNTIME
from .common import config_option, fail, load_or_exit

#: The name used for `--groups` without `--user`: no `user:` subject equals it (names hold no control characters).
_UNNAMED = "\x00"


@click.group(help="Look into the access_control rules.")
def access() -> None:
    pass


def _ip(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IP address") from None


@access.command("check", short_help="Which rule decides a URL, and why the earlier ones did not match.")
@click.argument("url")
@click.option("--user", "-u", metavar="USER",
              help="Signed in as USER; the groups come from the users file or LDAP (unless --groups gives them).")
@click.option("--groups", "-g", metavar="A,B",
              help="The user's groups, comma separated (\"\" = none). Alone: any signed-in user in these groups.")
@click.option("--method", "-m", default="GET", show_default=True, help="HTTP method of the request.")
@click.option("--ip", callback=_ip, metavar="ADDRESS",
              help="Client address, for rules with networks (without it, no network rule matches).")
@click.option("--factor", type=click.Choice(["one", "two"]), default="one", show_default=True,
              help="Factors the user has completed: password only (one), or password and TOTP (two).")
@config_option
def check(url: str, user: str | None, groups: str | None, method: str, ip: str | None, factor: str,
          config_path: str) -> None:
    """Explain how the access rules answer one request to URL.

    Prints every rule before the deciding one with the first criterion it did not match (domain,
    methods, networks, resources or subject), the rule that decides (or the default policy), its
    policy, and the answer the verify endpoint gives: allowed, login needed, second factor needed
    or forbidden. The URL is read as the proxy passes it (X-Original-URL) and its path normalised
    the way the verify endpoint does (percent-decoded once, dot segments resolved), so
    /public/../admin/ is judged as /admin/. Without --user or --groups the request is anonymous.

    \b
    Examples:
      authportal access check https://prometheus.example.com/graph --user bob -c config.yml
      authportal access check https://prometheus.example.com/api/v1/admin/tsdb/snapshot \\
          --method POST --groups admins --factor two --ip 10.1.2.3 -c config.yml

    Exit codes: 0 explained, 1 the directory (LDAP) is unreachable, 2 usage or configuration error.
    """
    config = load_or_exit(config_path)
    host, target, method = _read_url(url, method)
    who, source, user_name, user_groups = _identity(config, user, groups)
    if user_name is None and factor == "two":
        raise click.UsageError("--factor two needs --user or --groups (an anonymous request has no factor)")
    rules = AccessRules(config.access_control)
    explained = rules.explain(host, target, method, ip or "", user_name, user_groups)

    click.echo(f"request:  {method} {url.partition('#')[0]}")
    click.echo(f"          judged as host {normalise_host(host)}, path {target}")
    click.echo(f"who:      {who}{source}" + (f", signed in with {factor} factor{'s' if factor == 'two' else ''}"
                                     if user_name is not None else ""))
    click.echo(f"client:   {ip or 'no --ip given: rules with networks do not match'}")
    click.echo()
    request = _Request(normalise_host(host), target, method, ip, who)
    for index, criterion in explained.misses:
        rule = config.access_control.rules[index]
        click.echo(f"access_control.rules[{index}]  no match: {_why(criterion, rule, request)}")
    click.echo(_verdict(config, explained, user_name, factor))


@dataclass(frozen=True)
class _Request:
    """The request as the rules judged it, and who asked (for the reasons)."""

    host: str
    path: str
    method: str
    ip: str | None
    who: str


def _read_url(url: str, method: str) -> tuple[str, str, str]:
    """Host, normalised path + query and method, read as `/api/verify` reads X-Original-URL/-Method."""
    from ..verify import AuthRequest, BadRequest

    environ = {"HTTP_X_ORIGINAL_URL": url.partition("#")[0], "HTTP_X_ORIGINAL_METHOD": method}
    try:
        original = AuthRequest().read(environ)
        return original.host, normalise_path(original.target), original.method
    except BadRequest as exc:
        raise click.BadParameter(f"the verify endpoint would refuse it (400): {exc}", param_hint="URL") from None
    except ValueError as exc:
        raise click.BadParameter(f"the verify endpoint would refuse its path (400): {exc}", param_hint="URL") from None


def _identity(config: Config, user: str | None, groups: str | None) -> tuple[str, str, str | None, frozenset[str]]:
    """(who, where the groups came from, user for the rules, groups): given, looked up, or anonymous."""
    given = None if groups is None else frozenset(g.strip() for g in groups.split(",") if g.strip())
    if user is None and given is None:
        return "anonymous", " (not signed in)", None, frozenset()
    if user is None:
        assert given is not None
        return f"a user {_groups(given)}", " (--groups, no name)", _UNNAMED, given
    if given is not None:
        return f"{user} {_groups(given)}", " (--groups)", user, given
    from ..authentication import BackendUnavailable
    from ..portal import build_provider

    source = "LDAP" if config.authentication.backend == "ldap" else "the users file"
    try:
        provider = build_provider(config)
        try:
            details = provider.get_details(user)
        finally:
            provider.close()
    except BackendUnavailable as exc:
        fail(f"cannot read {user}'s groups from {source}: {exc}; give them with --groups", EXIT_RUNTIME)
    if details is None:
        fail(f"{user!r} is not a known, enabled user in {source}; give the groups with --groups to check anyway",
             EXIT_CONFIG)
    assert details is not None  # fail() exits
    found = frozenset(details.groups)
    return f"{user} {_groups(found)}", f" (from {source})", user, found


def _groups(names: frozenset[str]) -> str:
    return f"in {', '.join(sorted(names))}" if names else "in no group"


def _why(criterion: Criterion, rule: AccessRule, request: _Request) -> str:
    if criterion == "domain":
        names = [*rule.domain, *(f"regex {r}" for r in rule.domain_regex)]
        return f"domain ({request.host} is not {', '.join(names)})"
    if criterion == "methods":
        return f"methods ({request.method} is not {', '.join(rule.methods)})"
    if criterion == "networks":
        if not request.ip:
            return f"networks ({', '.join(rule.networks)}; no client address: give --ip)"
        return f"networks ({request.ip} is in none of {', '.join(rule.networks)})"
    if criterion == "resources":
        return f"resources ({request.path} matches none of {json.dumps(rule.resources)})"
    subjects = " or ".join(item if isinstance(item, str) else " and ".join(item) for item in rule.subject)
    return f"subject ({request.who} is not {subjects})"


def _verdict(config: Config, explained: Explanation, user: str | None, factor: str) -> str:
    decision = explained.decision
    if decision.rule is None:
        head = f"no rule matches: access_control.default_policy decides: {decision.policy}"
    else:
        rule = config.access_control.rules[decision.rule]
        if user is None and rule.subject:
            head = (f"access_control.rules[{decision.rule}]  decides: log in first (it has a subject; its policy "
                    f"{rule.policy} applies once the user is known)")
        else:
            head = f"access_control.rules[{decision.rule}]  decides: policy {decision.policy}"
    if decision.policy == "bypass":
        answer = "allowed (200), no login needed"
    elif decision.policy == "deny":
        answer = "forbidden (403)"
    elif user is None:
        answer = "login needed (401, or a redirect to the portal)"
    elif decision.policy == "two_factor" and factor == "one":
        answer = "second factor needed (401, or a redirect to the portal for the TOTP code)"
    else:
        answer = "allowed (200)"
    return f"{head}\nanswer:   {answer}"
