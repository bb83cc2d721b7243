"""Delivery providers: one interface per channel, the implementations the service ships.

* email: :class:`SmtpEmail` -- real SMTP through the configured relay (``smtp_url``): the embedded
  development server by default, or an external relay with STARTTLS (or implicit TLS, ``smtps://``) and
  authentication. stdlib :mod:`smtplib` in worker threads, over a small pool of open connections.
* push: :class:`SandboxPush` -- builds what a Web Push request carries (the VAPID ``Authorization``
  header, an ES256 JWT signed with the service's P-256 key, and the payload) and records it instead of
  sending it.
* sms: :class:`SandboxSms` -- records the text it would send.

A provider raises :class:`TemporaryFailure` (retry later: a 4xx SMTP reply, a dropped connection, a
timeout) or :class:`PermanentFailure` (a 5xx reply: retrying cannot help; the message is dead at once).
Install another with :func:`install` (a real SMS gateway, say): the interface is :class:`Provider`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import queue
import smtplib
import ssl
import time
import uuid
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nexus_ray.config import get_settings
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.stores import postgres

from .settings import NotificationSettings

log = logging.getLogger(__name__)


class DeliveryFailed(Exception):
    """A provider could not deliver a message."""

    permanent = False


class TemporaryFailure(DeliveryFailed):
    """Try again later."""


class PermanentFailure(DeliveryFailed):
    """Retrying cannot help."""

    permanent = True


@dataclass(frozen=True)
class Outgoing:
    """A rendered message on its way to a provider."""

    id: uuid.UUID
    channel: str
    recipient: str
    subject: str
    text: str
    html: str
    data: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    """Delivers messages of one channel; returns the provider's id for the message."""

    async def send(self, message: Outgoing) -> str: ...


# -- email over SMTP ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Relay:
    """Where and how to reach the SMTP relay, from ``smtp_url``."""

    host: str
    port: int
    implicit_tls: bool
    starttls: str  # "auto" (when offered), "require", or "off"
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> Relay:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("smtp_url reads smtp://[user:password@]host:port or smtps://...")
        query = parse_qs(parts.query)
        starttls = query.get("starttls", ["auto"])[0]
        if starttls not in ("auto", "require", "off"):
            raise ValueError("smtp_url's starttls is auto, require or off")
        return cls(host=parts.hostname, port=parts.port or (465 if parts.scheme == "smtps" else 587),
                   implicit_tls=parts.scheme == "smtps", starttls=starttls,
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None)


def _classify(code: int, message: str) -> DeliveryFailed:
    text = f"SMTP {code}: {message}"[:500]
    return PermanentFailure(text) if 500 <= code < 600 else TemporaryFailure(text)


class SmtpEmail:
    """Email through an SMTP relay; connections are kept open and reused (one per worker thread at a time)."""

    def __init__(self, url: str | None = None, *, sender: str | None = None) -> None:
        s = settings_of(NotificationSettings)
        self.relay = Relay.parse(url or get_settings().smtp_url)
        self.sender = sender or s.notifications_from
        self.timeout = s.notifications_smtp_timeout_s
        self.ca_file = s.notifications_smtp_ca_file or None
        self._idle: queue.SimpleQueue[smtplib.SMTP] = queue.SimpleQueue()
        self._slots = asyncio.Semaphore(s.notifications_smtp_connections)

    def _connect(self) -> smtplib.SMTP:
        r = self.relay
        context = ssl.create_default_context(cafile=self.ca_file)
        client: smtplib.SMTP
        if r.implicit_tls:
            client = smtplib.SMTP_SSL(r.host, r.port, timeout=self.timeout, context=context)
        else:
            client = smtplib.SMTP(r.host, r.port, timeout=self.timeout)
            client.ehlo()
            if r.starttls != "off" and client.has_extn("starttls"):
                client.starttls(context=context)
                client.ehlo()
            elif r.starttls == "require":
                client.close()
                raise PermanentFailure("the SMTP relay does not offer STARTTLS, which smtp_url requires")
        if r.username is not None:
            client.login(r.username, r.password or "")
        return client

    def _message(self, m: Outgoing) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = m.recipient
        msg["Subject"] = m.subject
        msg["Date"] = formatdate(localtime=False)
        # The message's id: a receiver can tell a resend after a crash from a new message.
        msg["Message-ID"] = f"<{m.id}@nexus-notifications>"
        msg.set_content(m.text)
        if m.html:
            msg.add_alternative(m.html, subtype="html")
        return msg

    def _send_blocking(self, m: Outgoing) -> str:
        msg = self._message(m)
        for attempt in (1, 2):
            try:
                # The retry goes on a fresh connection: the other kept ones are as old as the one that was
                # dropped, and after a quiet spell (the server's idle timeout) all of them are.
                client = self._idle.get_nowait() if attempt == 1 else self._connect()
            except queue.Empty:
                client = self._connect()
            try:
                client.send_message(msg)
            except smtplib.SMTPServerDisconnected:
                with contextlib.suppress(Exception):
                    client.close()
                if attempt == 2:
                    raise
                continue  # a kept connection the server closed meanwhile: once more on a fresh one
            except BaseException:
                with contextlib.suppress(Exception):
                    client.quit()
                raise
            self._idle.put(client)
            return str(msg["Message-ID"])
        raise AssertionError("unreachable")

    async def send(self, message: Outgoing) -> str:
        async with self._slots:
            try:
                return await asyncio.to_thread(self._send_blocking, message)
            except smtplib.SMTPRecipientsRefused as exc:
                code, reply = next(iter(exc.recipients.values()))
                raise _classify(code, reply.decode(errors="replace")) from None
            except smtplib.SMTPResponseException as exc:
                raise _classify(exc.smtp_code, exc.smtp_error.decode(errors="replace")
                                if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)) from None
            except (smtplib.SMTPException, OSError) as exc:
                raise TemporaryFailure(f"{type(exc).__name__}: {exc}"[:500]) from None

    def close(self) -> None:
        while True:
            try:
                client = self._idle.get_nowait()
            except queue.Empty:
                return
            with contextlib.suppress(Exception):
                client.quit()


# -- sandboxes -------------------------------------------------------------------------------------------


async def _record(channel: str, m: Outgoing, payload: dict[str, Any]) -> str:
    p = await postgres.pool()
    sandbox_id = await p.fetchval(
        "INSERT INTO notif_sandbox (channel, recipient, message_id, payload) VALUES ($1, $2, $3, $4) RETURNING id",
        channel, m.recipient, m.id, payload)
    return f"sandbox-{channel}-{sandbox_id}"


class SandboxSms:
    """Records each SMS it would send (no gateway is reachable from here)."""

    async def send(self, message: Outgoing) -> str:
        return await _record("sms", message, {"to": message.recipient, "text": message.text[:1600]})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Vapid:
    """The application server's VAPID identity (RFC 8292): a P-256 key signing short-lived ES256 JWTs."""

    def __init__(self, pem: str = "", subject: str = "mailto:ops@nexus.test") -> None:
        if pem:
            key = serialization.load_pem_private_key(pem.encode(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
                raise ValueError("the VAPID key must be a P-256 private key")
            self._key = key
        else:
            if get_settings().environment == "production":
                raise ValueError("NEXUS_NOTIFICATIONS_VAPID_PRIVATE_KEY is required in production")
            self._key = ec.generate_private_key(ec.SECP256R1())
        self.subject = subject
        raw = self._key.public_key().public_bytes(serialization.Encoding.X962,
                                                  serialization.PublicFormat.UncompressedPoint)
        self.public_key = _b64(raw)  # what browsers subscribe with (applicationServerKey)

    def authorization(self, endpoint: str, *, ttl_s: int = 12 * 3600) -> str:
        """The ``Authorization`` header for a push to ``endpoint`` (audience: its origin)."""
        parts = urlsplit(endpoint)
        claims = {"aud": f"{parts.scheme}://{parts.netloc}", "exp": int(time.time()) + ttl_s, "sub": self.subject}
        token = jwt.encode(claims, self._key, algorithm="ES256", headers={"typ": "JWT"})
        return f"vapid t={token}, k={self.public_key}"


class SandboxPush:
    """Builds each Web Push request (VAPID-signed) and records it instead of sending it."""

    def __init__(self, vapid: Vapid | None = None) -> None:
        s = settings_of(NotificationSettings)
        self.vapid = vapid or Vapid(s.notifications_vapid_private_key, s.notifications_vapid_subject)

    async def send(self, message: Outgoing) -> str:
        endpoint = message.recipient
        payload = {"title": message.subject, "body": message.text, "data": message.data}
        request = {"method": "POST", "url": endpoint,
                   "headers": {"Authorization": self.vapid.authorization(endpoint), "TTL": "86400",
                               "Urgency": "normal"},
                   "payload": payload}
        return await _record("push", message, request)


_providers: dict[str, Provider] = {}


def install(channel: str, provider: Provider) -> Provider | None:
    """Use ``provider`` for ``channel`` from now on; returns the one it replaces."""
    previous = _providers.get(channel)
    _providers[channel] = provider
    return previous


def for_channel(channel: str) -> Provider:
    """The provider of ``channel`` (the shipped default, made on first use)."""
    found = _providers.get(channel)
    if found is None:
        found = {"email": SmtpEmail, "sms": SandboxSms, "push": SandboxPush}[channel]()
        _providers[channel] = found
    return found


def reset() -> None:
    """Forget the providers made so far (settings changed: the next use makes them again)."""
    for p in _providers.values():
        if isinstance(p, SmtpEmail):
            p.close()
    _providers.clear()


__all__ = ["DeliveryFailed", "Outgoing", "PermanentFailure", "Provider", "SandboxPush", "SandboxSms", "SmtpEmail",
           "TemporaryFailure", "Vapid", "for_channel", "install"]
