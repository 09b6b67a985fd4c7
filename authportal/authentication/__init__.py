"""Who a user is: the user-provider interface shared by the users file and LDAP backends."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class UserDetails:
    """What the portal knows about an authenticated user (goes into the session and Remote-* headers)."""

    username: str
    display_name: str = ""
    email: str = ""
    groups: tuple[str, ...] = ()
    #: Extra attributes for identity headers (`authentication.ldap.extra_attributes`, a users file entry's
    #: `attributes`), as sorted (name, value) pairs.
    attributes: tuple[tuple[str, str], ...] = ()
    #: Changes when the password changes (a digest of the users file's hash, AD's pwdLastSet; "" when the
    #: backend cannot tell): a session signed in with the old password then ends.
    credential_stamp: str = ""


class BackendUnavailable(Exception):
    """The credential backend cannot answer (directory down, file unreadable): the caller denies."""


class PasswordChangeRequired(Exception):
    """The password is right but may not sign in until it is changed: expired, or "must change at next logon"
    (AD's data 532 / 773). The user chooses a new one, with the old one, before signing in."""

    def __init__(self, username: str, reason: str):
        super().__init__(f"{username}: {reason}")
        self.username = username
        self.reason = reason


class PasswordRejected(Exception):
    """The backend refused a new password; the message says why in words a person understands (too short for
    the directory's policy, used before, changed too recently)."""


class UserProvider(Protocol):
    def check_password(self, username: str, password: str) -> UserDetails | None:
        """Details when the password is right; None for a wrong password, unknown or disabled user.

        Raises BackendUnavailable when no answer can be had.
        """

    def get_details(self, username: str) -> UserDetails | None:
        """Fresh details (groups) for a logged-in user; None when the user is gone or disabled."""

    def username_for_email(self, email: str) -> str | None:
        """The one enabled user with this e-mail address (a reset asked for by address), else None."""

    def change_password(self, username: str, old_password: str, new_password: str) -> None:
        """Replace a password, proving the old one (the users file; OpenLDAP's Password Modify as the user; AD's
        unicodePwd delete + add). Raises PasswordRejected (wrong old password included), BackendUnavailable."""

    def set_password(self, username: str, new_password: str) -> None:
        """Set a password without the old one (a reset by e-mail): the users file, or the directory as the
        service account (it needs the right to reset passwords). Raises PasswordRejected, BackendUnavailable."""

    def health(self) -> str | None:
        """None when the backend can serve, else a short reason."""

    def close(self) -> None:
        """Release connections and watchers."""


#: Refused before any backend sees them (an empty password is an anonymous LDAP bind).
MAX_USERNAME_LENGTH = 256
MAX_PASSWORD_LENGTH = 1024


def acceptable_credentials(username: str, password: str) -> bool:
    """Cheap sanity checks shared by every backend: non-empty, bounded, no NUL or control characters."""
    if not username or not password:
        return False
    if len(username) > MAX_USERNAME_LENGTH or len(password) > MAX_PASSWORD_LENGTH:
        return False
    if "\x00" in username or "\x00" in password:
        return False
    return not any(ord(c) < 32 or ord(c) == 127 for c in username)
