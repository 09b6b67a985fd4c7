"""A real SMTP server for the tests: aiosmtpd on loopback, STARTTLS with a certificate from the tests' own CA.

`SmtpServer().start()` listens on a free port; `messages` holds every message received (parsed), and
`wait_for(to)` returns the next one for that address. STARTTLS is required before MAIL FROM, as a mail
server for sign-in links should; the portal is given `ca_file` to trust it.
"""
from __future__ import annotations

import email
import ssl
import threading
import time
from email.message import EmailMessage
from email.policy import default
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from . import free_port
from .ca import CertificateAuthority


class _Collect:
    def __init__(self, server: SmtpServer):
        self.server = server

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        message = email.message_from_bytes(envelope.content, policy=default)  # type: ignore[arg-type]
        with self.server.lock:
            self.server.messages.append(message)  # type: ignore[arg-type]
        return "250 OK"


class SmtpServer:
    def __init__(self, directory: Path):
        self.port = free_port()
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()
        authority = CertificateAuthority("authportal smtp test CA")
        cert, key = authority.issue(directory / "smtp.pem", directory / "smtp.key", "localhost",
                                    dns_names=("localhost",), ips=("127.0.0.1",))
        self.ca_file = authority.write_cert(directory / "smtp-ca.pem")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self._controller = Controller(_Collect(self), hostname="127.0.0.1", port=self.port, tls_context=context,
                                      require_starttls=True, server_hostname="localhost")

    def start(self) -> SmtpServer:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def settings(self) -> dict:
        """The portal's `notifier` section for this server."""
        return {"smtp": {"host": "127.0.0.1", "port": self.port, "sender": "Portal <portal@example.test>",
                         "tls": "starttls", "ca_file": str(self.ca_file), "timeout": "5s"}}

    def wait_for(self, to: str, seen: int = 0, timeout: float = 30.0) -> EmailMessage:
        """The first message to `to` after the first `seen` of them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [m for m in self.messages if to in str(m["To"])]
            if len(found) > seen:
                return found[seen]
            time.sleep(0.05)
        raise AssertionError(f"no message to {to} within {timeout}s")
