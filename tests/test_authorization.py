"""Access rules: one table row per behaviour, plus the host index at scale."""
from __future__ import annotations

import pytest

from authportal.authorization import AccessRules, Decision, normalise_path
from authportal.config import AccessControlConfig

NETWORKS = [{"name": "internal", "networks": ["10.0.0.0/8", "fd00::/8"]}]


def rules(*rule_list: dict, default: str = "deny") -> AccessRules:
    return AccessRules(
        AccessControlConfig.model_validate({"default_policy": default, "networks": NETWORKS, "rules": list(rule_list)})
    )


def req(host="app.example.com", path="/", method="GET", ip="192.0.2.1", user=None, groups=()):
    return {"host": host, "path": path, "method": method, "client_ip": ip, "user": user, "groups": frozenset(groups)}


P = "prometheus.example.com"
ONE = {"domain": P, "policy": "one_factor"}

CASES = [
    # --- domain: exact, case, port, trailing dot
    ("exact domain", [ONE], req(P), "one_factor", 0),
    ("other domain falls to default", [ONE], req("alertmanager.example.com"), "deny", None),
    ("host case-insensitive", [ONE], req("Prometheus.EXAMPLE.com"), "one_factor", 0),
    ("rule domain case-insensitive", [{"domain": "PROMETHEUS.example.COM", "policy": "bypass"}], req(P), "bypass", 0),
    ("port stripped", [ONE], req(P + ":9090"), "one_factor", 0),
    ("trailing dot stripped", [ONE], req(P + "."), "one_factor", 0),
    ("IPv6 literal with port", [{"domain": "[::1]", "policy": "bypass"}], req("[::1]:8080"), "bypass", 0),
    ("several domains", [{"domain": ["a.example.com", P], "policy": "bypass"}], req(P), "bypass", 0),
    # --- wildcards
    ("wildcard one level", [{"domain": "*.example.com", "policy": "bypass"}], req("a.example.com"), "bypass", 0),
    ("wildcard deeper", [{"domain": "*.example.com", "policy": "bypass"}], req("a.b.c.example.com"), "bypass", 0),
    ("wildcard not apex", [{"domain": "*.example.com", "policy": "bypass"}], req("example.com"), "deny", None),
    ("wildcard not suffix w/o dot", [{"domain": "*.example.com", "policy": "bypass"}], req("evilexample.com"), "deny", None),
    ("wildcard not other tld", [{"domain": "*.example.com", "policy": "bypass"}], req("a.example.com.evil.org"), "deny", None),
    ("star matches any host", [{"domain": "*", "policy": "one_factor"}], req("whatever.test"), "one_factor", 0),
    # --- domain_regex (fullmatch on the lowercased host; OR'ed with domain)
    ("regex domain", [{"domain_regex": r"(pub|img)-data\.example\.com", "policy": "bypass"}], req("IMG-data.example.com"), "bypass", 0),
    ("regex is anchored", [{"domain_regex": r"img-data\.example\.com", "policy": "bypass"}], req("img-data.example.com.evil.org"), "deny", None),
    ("regex no match", [{"domain_regex": r"(pub|img)-data\.example\.com", "policy": "bypass"}], req("doc-data.example.com"), "deny", None),
    ("domain OR domain_regex: domain", [{"domain": P, "domain_regex": r"x\d\.example\.com", "policy": "bypass"}], req(P), "bypass", 0),
    ("domain OR domain_regex: regex", [{"domain": P, "domain_regex": r"x\d\.example\.com", "policy": "bypass"}], req("x1.example.com"), "bypass", 0),
    # --- resources (re.search on path + ?query)
    ("resource match", [{"domain": P, "resources": ["^/api/v1/admin/"], "policy": "two_factor"}], req(P, "/api/v1/admin/tsdb/snapshot"), "two_factor", 0),
    ("resource no match", [{"domain": P, "resources": ["^/api/v1/admin/"], "policy": "two_factor"}], req(P, "/api/v1/query"), "deny", None),
    ("resource sees query", [{"domain": P, "resources": [r"^/graph\?debug=1$"], "policy": "bypass"}], req(P, "/graph?debug=1"), "bypass", 0),
    ("resource unanchored searches", [{"domain": P, "resources": ["admin"], "policy": "bypass"}], req(P, "/x/admin/y"), "bypass", 0),
    ("any resource of list", [{"domain": P, "resources": ["^/a$", "^/b$"], "policy": "bypass"}], req(P, "/b"), "bypass", 0),
    # --- methods
    ("method match", [{"domain": P, "methods": ["GET", "HEAD"], "policy": "bypass"}], req(P, method="HEAD"), "bypass", 0),
    ("method lowercase request", [{"domain": P, "methods": ["get"], "policy": "bypass"}], req(P, method="get"), "bypass", 0),
    ("method no match", [{"domain": P, "methods": ["GET"], "policy": "bypass"}], req(P, method="POST"), "deny", None),
    # --- networks
    ("CIDR match", [{"domain": P, "networks": ["192.0.2.0/24"], "policy": "bypass"}], req(P, ip="192.0.2.77"), "bypass", 0),
    ("CIDR no match", [{"domain": P, "networks": ["192.0.2.0/24"], "policy": "bypass"}], req(P, ip="198.51.100.1"), "deny", None),
    ("single address", [{"domain": P, "networks": ["203.0.113.5"], "policy": "bypass"}], req(P, ip="203.0.113.5"), "bypass", 0),
    ("named network", [{"domain": P, "networks": ["internal"], "policy": "bypass"}], req(P, ip="10.1.2.3"), "bypass", 0),
    ("named network v6", [{"domain": P, "networks": ["internal"], "policy": "bypass"}], req(P, ip="fd12::1"), "bypass", 0),
    ("named network miss", [{"domain": P, "networks": ["internal"], "policy": "bypass"}], req(P, ip="11.0.0.1"), "deny", None),
    ("IPv6 CIDR", [{"domain": P, "networks": ["2001:db8::/32"], "policy": "bypass"}], req(P, ip="2001:db8::42"), "bypass", 0),
    ("v4 client vs v6 net", [{"domain": P, "networks": ["::/0"], "policy": "bypass"}], req(P, ip="10.0.0.1"), "deny", None),
    ("v4-mapped v6 client", [{"domain": P, "networks": ["10.0.0.0/8"], "policy": "bypass"}], req(P, ip="::ffff:10.0.0.1"), "bypass", 0),
    ("garbage IP never matches", [{"domain": P, "networks": ["0.0.0.0/0"], "policy": "bypass"}], req(P, ip="not-an-ip"), "deny", None),
    ("empty IP never matches", [{"domain": P, "networks": ["0.0.0.0/0"], "policy": "bypass"}], req(P, ip=""), "deny", None),
    # --- subjects
    ("user subject", [{"domain": P, "subject": ["user:alice"], "policy": "one_factor"}], req(P, user="alice"), "one_factor", 0),
    ("user subject other user", [{"domain": P, "subject": ["user:alice"], "policy": "one_factor"}], req(P, user="bob"), "deny", None),
    ("group subject", [{"domain": P, "subject": ["group:ops"], "policy": "one_factor"}], req(P, user="bob", groups=["ops"]), "one_factor", 0),
    ("group is not user", [{"domain": P, "subject": ["group:alice"], "policy": "one_factor"}], req(P, user="alice"), "deny", None),
    ("user is not group", [{"domain": P, "subject": ["user:ops"], "policy": "one_factor"}], req(P, user="bob", groups=["ops"]), "deny", None),
    ("subjects OR'ed", [{"domain": P, "subject": ["user:alice", "group:ops"], "policy": "one_factor"}], req(P, user="bob", groups=["ops"]), "one_factor", 0),
    ("AND list all present", [{"domain": P, "subject": [["group:a", "group:b"]], "policy": "one_factor"}], req(P, user="u", groups=["a", "b", "c"]), "one_factor", 0),
    ("AND list one missing", [{"domain": P, "subject": [["group:a", "group:b"]], "policy": "one_factor"}], req(P, user="u", groups=["a"]), "deny", None),
    ("AND user+group", [{"domain": P, "subject": [["user:u", "group:a"]], "policy": "one_factor"}], req(P, user="u", groups=["a"]), "one_factor", 0),
    ("AND user+group wrong user", [{"domain": P, "subject": [["user:u", "group:a"]], "policy": "one_factor"}], req(P, user="v", groups=["a"]), "deny", None),
    ("AND of two users never matches", [{"domain": P, "subject": [["user:a", "user:b"]], "policy": "deny"}, ONE], req(P, user="a"), "one_factor", 1),
    ("AND of two users, anonymous", [{"domain": P, "subject": [["user:a", "user:b"]], "policy": "deny"}, ONE], req(P), "one_factor", 0),
    ("subject names case-sensitive", [{"domain": P, "subject": ["group:Ops"], "policy": "one_factor"}], req(P, user="u", groups=["ops"]), "deny", None),
    # --- anonymous + subject rule: log in first
    ("anonymous + subject → one_factor", [{"domain": P, "subject": ["group:admins"], "policy": "two_factor"}], req(P), "one_factor", 0),
    ("anonymous + subject deny rule → one_factor", [{"domain": P, "subject": ["group:x"], "policy": "deny"}, {"domain": P, "policy": "bypass"}], req(P), "one_factor", 0),
    ("anonymous, subject rule's other criteria miss", [{"domain": P, "methods": ["POST"], "subject": ["group:x"], "policy": "two_factor"}, {"domain": P, "policy": "bypass"}], req(P), "bypass", 1),
    ("logged in, subject miss → next rule", [{"domain": P, "subject": ["group:x"], "policy": "two_factor"}, {"domain": P, "policy": "one_factor"}], req(P, user="u"), "one_factor", 1),
    # --- all criteria together, first match wins, default policy
    (
        "all criteria",
        [{"domain": P, "resources": ["^/api/"], "methods": ["GET"], "networks": ["internal"], "subject": ["group:mon"], "policy": "one_factor"}],
        req(P, "/api/v1/query?query=up", "GET", "10.9.9.9", "g", ["mon"]),
        "one_factor",
        0,
    ),
    (
        "all criteria but one",
        [{"domain": P, "resources": ["^/api/"], "methods": ["GET"], "networks": ["internal"], "subject": ["group:mon"], "policy": "one_factor"}],
        req(P, "/api/v1/query?query=up", "GET", "8.8.8.8", "g", ["mon"]),
        "deny",
        None,
    ),
    ("first match wins", [{"domain": P, "policy": "two_factor"}, {"domain": P, "policy": "bypass"}], req(P), "two_factor", 0),
    ("wildcard before exact keeps order", [{"domain": "*.example.com", "policy": "two_factor"}, ONE], req(P), "two_factor", 0),
    ("regex before exact keeps order", [{"domain_regex": ".*", "policy": "two_factor"}, ONE], req(P), "two_factor", 0),
    ("later rule after miss", [{"domain": P, "methods": ["POST"], "policy": "deny"}, ONE], req(P), "one_factor", 1),
    ("default bypass", [], req(), "bypass", None, "bypass"),
    ("default two_factor", [ONE], req("x.example.com"), "two_factor", None, "two_factor"),
]


@pytest.mark.parametrize(
    ("rule_list", "request_", "policy", "index", "default"),
    [pytest.param(*c[1:], *(() if len(c) > 5 else ("deny",)), id=c[0]) for c in CASES],
)
def test_decide(rule_list, request_, policy, index, default):
    access = rules(*rule_list, default=default)
    decision = access.decide(**request_)
    assert (decision.policy, decision.rule) == (policy, index)
    # The answer is stable once the host and address caches are warm.
    assert access.decide(**request_) == decision


def test_basic_auth_passthrough():
    access = rules(
        {"domain": P, "resources": ["^/api/"], "policy": "one_factor", "basic_auth": True},
        {"domain": P, "subject": ["group:x"], "policy": "one_factor", "basic_auth": False},
        {"domain": "a.example.com", "policy": "one_factor"},
    )
    assert access.decide(**req(P, "/api/v1/query")) == Decision("one_factor", 0, True)
    assert access.decide(**req(P, "/graph")) == Decision("one_factor", 1, False)
    assert access.decide(**req("a.example.com")) == Decision("one_factor", 2, None)
    assert access.decide(**req("b.example.com")) == Decision("deny", None, None)


def test_decision_is_frozen():
    decision = Decision("deny", None, None)
    with pytest.raises(AttributeError):
        decision.policy = "bypass"  # type: ignore[misc]


def test_required_policy_splits_url():
    access = rules(
        {"domain": P, "resources": [r"^/api/v1/admin/.*\?x=1$"], "policy": "two_factor"},
        {"domain": P, "subject": ["group:ops"], "policy": "two_factor"},
        {"domain": P, "policy": "one_factor"},
    )
    ip, nobody = "10.0.0.1", frozenset()
    assert access.required_policy(f"https://{P}:8443/api/v1/admin/y?x=1", "GET", ip, "u", nobody) == "two_factor"
    assert access.required_policy(f"https://{P}/api/v1/admin/y", "GET", ip, "u", nobody) == "one_factor"
    assert access.required_policy(f"https://{P}/", "GET", ip, "u", frozenset({"ops"})) == "two_factor"
    assert access.required_policy(f"https://{P.upper()}", "GET", ip, "u", nobody) == "one_factor"
    assert access.required_policy("https://other.example.com/", "GET", ip, "u", nobody) == "deny"
    # judged on the path a proxy would route: dot segments and encodings resolved; nonsense asks for the most
    assert access.required_policy(f"https://{P}/x/../api/v1/%61dmin/y?x=1", "GET", ip, "u", nobody) == "two_factor"
    assert access.required_policy(f"https://{P}/../api", "GET", ip, "u", nobody) == "two_factor"


@pytest.mark.parametrize("target, normalised", [
    ("/", "/"),
    ("/prometheus/graph?g0.expr=up", "/prometheus/graph?g0.expr=up"),       # the common case is left alone
    ("/.well-known/x", "/.well-known/x"),
    ("/public/../prometheus/", "/prometheus/"),
    ("/public/%2e%2E/prometheus/x", "/prometheus/x"),
    ("/public/..%2Fprometheus/x", "/prometheus/x"),                          # %2F is a slash to nginx too
    ("//prometheus///x", "/prometheus/x"),                                   # merge_slashes, nginx's default
    ("/a/./b/.", "/a/b/"), ("/a/b/..", "/a/"), ("/a/..", "/"),
    ("/api/v1/%61dmin/x?q=%2e%2e/../y", "/api/v1/admin/x?q=%2e%2e/../y"),    # the query stays as sent
    ("/a%3Fb/c%23d?e", "/a%3Fb/c%23d?e"),                                    # a decoded ? never starts the query
    ("/%252e%252e/x", "/%2e%2e/x"),                                          # decoded once, like nginx
    ("/caf%C3%A9/", "/café/"),
])
def test_normalise_path(target, normalised):
    assert normalise_path(target) == normalised


@pytest.mark.parametrize("target", ["/..", "/../x", "/a/../../x", "/%2e%2e/x", "/a/%2E./../x", "/a%00b", "/x/%00"])
def test_normalise_path_refuses_climbing_above_the_root_and_nul(target):
    with pytest.raises(ValueError):
        normalise_path(target)


def test_overlong_host_matches_no_domain_rule():
    access = rules({"domain": "*.example.com", "policy": "bypass"}, {"domain": "*", "policy": "one_factor"})
    host = "a." * 200 + "example.com"
    assert access.decide(**req(host)) == Decision("one_factor", 1, None)


def test_caches_are_bounded():
    access = rules({"domain": "*.example.com", "networks": ["10.0.0.0/8"], "policy": "bypass"})
    for i in range(10_000):
        access.decide(**req(f"h{i}.example.com", ip=f"10.{i // 256 % 256}.{i % 256}.1"))
    assert len(access._candidates) <= 4096
    assert len(access._addresses) <= 4096
    assert access.decide(**req("h1.example.com", ip="10.0.1.1")).policy == "bypass"


def test_scale_candidates_stay_small():
    """10,000 rules with distinct domains: a host only ever looks at the rules that can apply to it."""
    many = [{"domain": f"svc{i}.example.com", "policy": "one_factor"} for i in range(10_000)]
    many += [
        {"domain": "*.team7.example.com", "policy": "two_factor"},
        {"domain_regex": r"adhoc-\d+\.example\.com", "policy": "bypass"},
    ]
    access = rules(*many)
    assert access.candidates("svc1234.example.com") == (1234,)
    assert access.candidates("svc9999.example.com:443") == (9999,)
    assert access.candidates("x.team7.example.com") == (10_000,)
    assert access.candidates("adhoc-42.example.com") == (10_001,)
    assert access.candidates("unknown.example.com") == ()
    assert access.decide(**req("svc5000.example.com")) == Decision("one_factor", 5000, None)
    assert access.decide(**req("a.b.team7.example.com")) == Decision("two_factor", 10_000, None)
    assert access.decide(**req("nothing.example.com")) == Decision("deny", None, None)
    # The index holds every exact domain once; only regex/"*" rules are scanned per new host.
    assert len(access._exact) == 10_000
    assert len(access._scan) == 1
