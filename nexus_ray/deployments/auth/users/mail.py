"""How user-auth's mail leaves: a provider interface and the in-database mailbox that ships with it.

A provider receives the connection of the transaction that makes the change (a new
verification token, say), so the mail exists exactly when the change commits. The
shipped :class:`MailboxProvider` writes it to the ``mail_outbox`` table: a relay
(notification-service's SMTP sender) delivers from there and stamps ``delivered_at``;
development tools and tests read it with :func:`messages`. Other providers register
with :func:`register_provider` and are chosen by the ``mail_provider`` setting.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg

from nexus_ray.deployments.auth.users.settings import settings as users_settings
from nexus_ray.stores import postgres


@dataclass(frozen=True)
class Mail:
    """One message to one recipient."""

    to: str
    template: str
    subject: str
    body_text: str
    user_id: uuid.UUID | None = None


class MailProvider(Protocol):
    """Delivers mail; ``send`` runs inside the transaction of the change that sends it."""

    async def send(self, conn: asyncpg.Connection, mail: Mail) -> uuid.UUID: ...


class MailboxProvider:
    """Writes each message to ``mail_outbox`` in the caller's transaction."""

    async def send(self, conn: asyncpg.Connection, mail: Mail) -> uuid.UUID:
        if not conn.is_in_transaction():
            raise RuntimeError("mail is sent inside the transaction of the change it reports")
        message_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO mail_outbox (message_id, user_id, to_address, template, subject, body_text) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            message_id,
            mail.user_id,
            mail.to,
            mail.template,
            mail.subject,
            mail.body_text,
        )
        return message_id


_PROVIDERS: dict[str, Callable[[], MailProvider]] = {"mailbox": MailboxProvider}


def register_provider(name: str, factory: Callable[[], MailProvider]) -> None:
    """Make a provider selectable with ``NEXUS_MAIL_PROVIDER=<name>``."""
    _PROVIDERS[name] = factory


def provider() -> MailProvider:
    """The configured provider."""
    name = users_settings().mail_provider
    try:
        return _PROVIDERS[name]()
    except KeyError:
        raise RuntimeError(f"unknown mail provider {name!r}; known: {sorted(_PROVIDERS)}") from None


async def messages(*, to: str, template: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The mailbox of ``to``, newest first (what a recipient would have received)."""
    pg = await postgres.pool()
    rows = await pg.fetch(
        "SELECT message_id, user_id, to_address, template, subject, body_text, created_at, delivered_at "
        "FROM mail_outbox WHERE lower(to_address) = lower($1) AND ($2::text IS NULL OR template = $2) "
        "ORDER BY id DESC LIMIT $3",
        to,
        template,
        limit,
    )
    return [dict(r) for r in rows]
