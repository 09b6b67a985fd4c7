"""What the tests share, imported by test modules and by bench/ — never by one test module from another.

- `portal`: the demo users, a portal's config directory (`PortalSetup`), the real
  server on it (`ServedPortal`), a browser-like `login()` over HTTP.
- `in_process`: the portal's WSGI app driven in-process (`ProxiedClient`) and what a
  person does on it (`AuthActions`: the `auth` fixture of tests/conftest.py).
- `stacks`: the portal behind a real nginx running one of examples/nginx/.
- `forward_auth_flow`: clients, forged headers and what reached the app, for the proxies.
- `proxy_contract`: `ProxyContract`, the tests every forward-auth proxy example must pass.
- `browsing`: a person in Chromium in front of the seed-layout stack.
- `accessibility`, `clock`: contrast measurement and axe-core; a clock set by hand.

The real servers (nginx, HAProxy, Caddy, slapd, Samba AD, PostgreSQL, Redis,
Chromium) and their fixtures live beside this package, in tests/servers/.
"""
