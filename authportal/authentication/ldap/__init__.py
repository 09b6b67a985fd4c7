"""LDAP and Active Directory: the `LdapUserProvider` and its parts, one module per concern.

- `provider`: the `UserProvider` — search the user, bind as them, read name, mail and groups; a right password
  that must be changed first raises `PasswordChangeRequired`.
- `passwords`: password change and reset (Password Modify, AD's `unicodePwd`), refusals in words.
- `pool`: connections — TLS, the service-account pool, short-lived user and write connections, failover between
  URLs, outage bookkeeping.
- `search`: reading the directory (a bounded search, a paged one) and attribute values.
- `activedirectory`: why an AD account is refused (its attributes, AD's bind error `data 533` …), `unicodePwd`
  values and AD's refusals of a new password.
- `ppolicy`: OpenLDAP's password policy control (expired, must change after a reset, policy refusals).
- `filters`: filter templates — placeholders, RFC 4515 escaping, and the check the configuration runs.

Presets and every check of the `authentication.ldap` keys live in config.py (it calls `filters` for the
filter checks): a validated `LdapConfig` is complete, so the provider reads plain values.
"""
from __future__ import annotations

from .provider import LdapUserProvider

__all__ = ["LdapUserProvider"]
