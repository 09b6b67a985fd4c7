"""LDAP and Active Directory: the `LdapUserProvider` and its parts, one module per concern.

- `provider`: the `UserProvider` — search the user, bind as them, read name, mail and groups.
- `pool`: connections — TLS, the service-account pool, failover between URLs, outage bookkeeping.
- `search`: reading the directory (a bounded search, a paged one) and attribute values.
- `activedirectory`: why an AD account is refused (its attributes, AD's bind error `data 533` …).
- `filters`: filter templates — placeholders, RFC 4515 escaping, and the check the configuration runs.

Presets and every check of the `authentication.ldap` keys live in config.py (it calls `filters` for the
filter checks): a validated `LdapConfig` is complete, so the provider reads plain values.
"""
from __future__ import annotations

from .provider import LdapUserProvider

__all__ = ["LdapUserProvider"]
