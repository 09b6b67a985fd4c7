"""The local users file, in the shape of Authelia's users_database.yml.

It is re-read when it changes (a watcher polls its mtime); a malformed new
version is refused, the last good one keeps serving, and health reports it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import FileBackendConfig, _format_errors
from ..passwords import PasswordHasher, check_hash_format
from ..yamlfile import YamlError, parse_yaml
from . import BackendUnavailable, PasswordRejected, UserDetails, acceptable_credentials
from .users_file_editor import load_users_document, save_users_document

log = logging.getLogger("authportal.users_file")

USERNAME_PATTERN = r"^[A-Za-z0-9._@\-]{1,128}$"


class UserEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    password: str
    displayname: str = ""
    email: str = ""
    groups: list[str] = []
    disabled: bool = False
    #: Extra facts for identity headers (`{attributes.NAME}`), e.g. employeeNumber: "4711".
    attributes: dict[str, str] = {}

    @field_validator("password")
    @classmethod
    def _known_format(cls, value: str) -> str:
        check_hash_format(value)
        return value


class UsersDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    users: dict[str, UserEntry] = Field(default_factory=dict)

    @field_validator("users")
    @classmethod
    def _names(cls, users: dict[str, UserEntry]) -> dict[str, UserEntry]:
        for name in users:
            if not re.fullmatch(USERNAME_PATTERN, name):
                raise ValueError(f"invalid user name {name!r} (letters, digits and . _ @ - only)")
        return users


class UsersFileError(Exception):
    """The users file cannot be used; the message names the file and the problem."""


def parse_users_file(path: Path) -> dict[str, UserEntry]:
    """Read and validate the whole file; raise UsersFileError with every problem."""
    try:
        raw = parse_yaml(path.read_text())
    except OSError as exc:
        raise UsersFileError(f"{path}: cannot read: {exc.strerror}") from None
    except YamlError as exc:
        raise UsersFileError(f"{path}: malformed YAML ({exc})") from None
    try:
        return UsersDocument.model_validate(raw or {}).users
    except ValidationError as exc:
        raise UsersFileError(f"{path}: " + "; ".join(_format_errors(exc))) from None


class UsersFileProvider:
    """UserProvider over the users file; thread-safe, swaps the whole table on reload."""

    def __init__(self, config: FileBackendConfig, hasher: PasswordHasher, poll_interval: float = 1.0):
        self.path = config.path
        self._hasher = hasher
        self._users: dict[str, UserEntry] = parse_users_file(self.path)
        self._stamp = self._file_stamp()
        self._error: str | None = None
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # one password write at a time: no lost update
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if config.watch:
            self._watcher = threading.Thread(
                target=self._watch, args=(poll_interval,), name="users-file-watcher", daemon=True
            )
            self._watcher.start()

    # UserProvider

    def check_password(self, username: str, password: str) -> UserDetails | None:
        if not acceptable_credentials(username, password):
            return None
        entry = self._users.get(username)
        if entry is None:
            self._hasher.verify_dummy(password)
            return None
        if not self._hasher.verify(entry.password, password) or entry.disabled:
            return None
        return _details(username, entry)

    def get_details(self, username: str) -> UserDetails | None:
        entry = self._users.get(username)
        if entry is None or entry.disabled:
            return None
        return _details(username, entry)

    def username_for_email(self, email: str) -> str | None:
        wanted = email.strip().casefold()
        found = [name for name, entry in self._users.items()
                 if entry.email and entry.email.casefold() == wanted and not entry.disabled]
        return found[0] if len(found) == 1 else None

    def change_password(self, username: str, old_password: str, new_password: str) -> None:
        self._write_password(username, new_password, old_password)

    def set_password(self, username: str, new_password: str) -> None:
        self._write_password(username, new_password, None)

    def health(self) -> str | None:
        return self._error

    def close(self) -> None:
        self._stop.set()

    def _write_password(self, username: str, new_password: str, old_password: str | None) -> None:
        """The new hash into the file (comments kept, atomic), then read back at once: the sessions of the old
        password end, and the one that changed it gets the new stamp without waiting for the watcher."""
        with self._write_lock:
            try:
                document = load_users_document(self.path)
            except (OSError, ValueError) as exc:
                raise BackendUnavailable(f"{self.path}: cannot read: {exc}") from None
            entry = document["users"].get(username)
            if entry is None or entry.get("disabled"):
                raise PasswordRejected("This account cannot change its password.")
            if old_password is not None and not self._hasher.verify(str(entry.get("password", "")), old_password):
                raise PasswordRejected("The current password is wrong.")
            entry["password"] = self._hasher.hash(new_password)
            try:
                save_users_document(self.path, document, parse_users_file)
            except (OSError, UsersFileError) as exc:
                raise BackendUnavailable(f"{self.path}: cannot write: {exc}") from None
            self.reload_if_changed()

    # Reloading

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each successful reload (the Basic-auth cache forgets everything)."""
        self._listeners.append(listener)

    def reload_if_changed(self) -> bool:
        """Re-read the file if its mtime/size/inode changed; True when a new version was loaded."""
        with self._lock:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                users = parse_users_file(self.path)
            except UsersFileError as exc:
                if self._error != str(exc):
                    log.error("users file not reloaded, the last good version keeps serving: %s", exc)
                self._error = str(exc)
                return False
            self._users = users
            if self._error:
                log.info("users file is valid again: %s", self.path)
            self._error = None
            log.info("users file reloaded: %s (%d users)", self.path, len(users))
        for listener in self._listeners:
            listener()
        return True

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.reload_if_changed()
            except Exception:  # the watcher must never die
                log.exception("users file watcher failed")


def _details(username: str, entry: UserEntry) -> UserDetails:
    return UserDetails(username=username, display_name=entry.displayname or username,
                       email=entry.email, groups=tuple(entry.groups), credential_stamp=credential_stamp(entry.password),
                       attributes=tuple(sorted(entry.attributes.items())))


def credential_stamp(stored_hash: str) -> str:
    """A short digest of the stored hash: a new password (a new salt) gives a new one, and it reveals nothing."""
    return hashlib.blake2b(stored_hash.encode(), digest_size=8).hexdigest()


def open_users_file(config: FileBackendConfig, hasher: PasswordHasher) -> UsersFileProvider:
    try:
        return UsersFileProvider(config, hasher)
    except UsersFileError as exc:
        raise BackendUnavailable(str(exc)) from None
