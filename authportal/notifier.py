"""Sending e-mails (password reset links): over SMTP, or appended to a file for trials and tests.

Messages leave from one background thread (`Outbox`), never from the request: the answer to "reset my
password" is the same, and takes the same time, whether the account exists and whether the mail server
answers. A mail server that cannot be reached is logged, counted, and shown on `/api/health` (as a degraded
part: sign-ins still work).
"""
from __future__ import annotations

import fcntl
import logging
import queue
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Protocol

from .config import NotifierConfig, SmtpConfig

log = logging.getLogger("authportal.notifier")

#: How long a mail server's health answer is reused (a probe is a connection to it).
HEALTH_CACHE_SECONDS = 30.0
#: Messages waiting beyond this many are dropped (logged): a flood of requests must not grow memory.
OUTBOX_LIMIT = 1000


@dataclass(frozen=True)
class Message:
    to: str
    subject: str
    text: str
    html: str


class Notifier(Protocol):
    def send(self, message: Message) -> None:
        """Deliver or raise OSError / smtplib.SMTPException."""

    def health(self) -> str | None:
        """None when messages can be sent, else why not."""


class SmtpNotifier:
    def __init__(self, config: SmtpConfig):
        self.config = config
        self._checked: tuple[float, str | None] | None = None

    def send(self, message: Message) -> None:
        mail = EmailMessage()
        mail["From"] = self.config.sender
        mail["To"] = message.to
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(localtime=False)
        mail["Message-ID"] = make_msgid(domain=self.config.sender.rpartition("@")[2].strip("<> ") or None)
        mail.set_content(message.text)
        mail.add_alternative(message.html, subtype="html")
        with self._connect() as smtp:
            smtp.send_message(mail)

    def health(self) -> str | None:
        checked = self._checked
        if checked and time.monotonic() - checked[0] < HEALTH_CACHE_SECONDS:
            return checked[1]
        try:
            with self._connect() as smtp:
                smtp.noop()
            problem = None
        except (OSError, smtplib.SMTPException) as exc:
            problem = f"{self.config.host}:{self.config.port}: {exc.__class__.__name__}: {exc}"
        self._checked = (time.monotonic(), problem)
        return problem

    def _connect(self) -> smtplib.SMTP:
        config = self.config
        context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
        smtp: smtplib.SMTP
        if config.tls == "implicit":
            smtp = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout, context=context)
        else:
            smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout)
        try:
            if config.tls == "starttls":
                smtp.starttls(context=context)
            if config.username and config.password is not None:
                smtp.login(config.username, config.password.get_secret_value())
        except BaseException:
            smtp.close()
            raise
        return smtp


class FilesystemNotifier:
    """Appends each message to a file, as text: for trials (`make run`) and tests."""

    def __init__(self, path: Path):
        self.path = path

    def send(self, message: Message) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = (f"Date: {formatdate(localtime=False)}\nTo: {message.to}\nSubject: {message.subject}\n\n"
                  f"{message.text.rstrip()}\n\n{'-' * 72}\n")
        with open(self.path, "a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # several workers append whole messages
            handle.write(record)

    def health(self) -> str | None:
        return None


def open_notifier(config: NotifierConfig) -> Notifier:
    if config.smtp is not None:
        return SmtpNotifier(config.smtp)
    assert config.filesystem is not None
    return FilesystemNotifier(config.filesystem.path)


class Outbox:
    """One background thread that runs jobs (look a user up, make a link, send the message) in order."""

    def __init__(self, on_failure: Callable[[Exception], None]):
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=OUTBOX_LIMIT)
        self._on_failure = on_failure
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    def post(self, job: Callable[[], None]) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            log.error("outbox full (%d messages waiting): a message was dropped", OUTBOX_LIMIT)

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every posted job ran (tests, and a clean shutdown)."""
        done = threading.Event()
        self.post(done.set)
        done.wait(timeout)

    def close(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception as exc:  # the outbox must never die
                log.error("sending a message failed: %s: %s", exc.__class__.__name__, exc)
                self._on_failure(exc)
