"""notification-service's logic: from an event or a direct send to a delivered (or dead) message.

A message is rendered when it is queued (its content is fixed then; a later template change does
not alter it) and stored with its delivery state::

    queued --> sending --> sent
                  |  \\
                  |   '--> failed --(backoff)--> sending ...   (a temporary failure, attempts left)
                  '------> dead                                (permanent failure, or the last attempt)

The delivery loop (any number of replicas) takes due messages with ``FOR UPDATE SKIP LOCKED`` and a
lease (``lease_until``): a replica that crashes mid-send leaves its messages to be taken again once
the lease passes. So delivery is at least once; the email's ``Message-ID`` is the message's id, so a
resend after such a crash is recognisable as the same message. Retries back off exponentially
(``notifications_retry_base_s`` doubled per attempt, capped); after ``max_attempts`` or at a
permanent failure the message is **dead**: listed by ``GET /dead-letters``, sent again on request.

Who gets what: the user's channels for the message's category (their preferences, else
:data:`DEFAULT_CHANNELS`), each needing an address in their contact details. Quiet hours (local to the
user's time zone) hold non-urgent messages until they end; security notices are urgent.
Idempotency: a message is unique per (sender, ``client_message_id``); events use their event id, so a
redelivered event queues nothing new, and a direct send retried with the same id returns the first.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from nexus_ray.deployments.kit import loops
from nexus_ray.deployments.kit.pages import Page, PageRequest, one_or_404
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import Conflict, ValidationFailed
from nexus_ray.stores import postgres
from nexus_ray.stores.events import RELAXED_FETCH_WAIT_MS, Event, EventConsumer
from nexus_ray.stores.together import GroupCommit

from . import providers, templates
from .models import MessageCreate, MessageRead, Preferences, PushSubscription, TemplateBody, TemplateRead
from .settings import NotificationSettings

log = logging.getLogger(__name__)

#: Channels of a category for a user who chose none.
DEFAULT_CHANNELS: dict[str, list[str]] = {
    "orders": ["email"], "payments": ["email", "sms"], "deliveries": ["email", "push"],
    "security": ["email", "sms"], "direct": ["email"],
}
#: Categories that cannot be turned off entirely: email is always among their channels.
MANDATORY = frozenset({"security"})

_MESSAGE_COLUMNS = ("id, client_message_id, created_by, user_id, channel, category, template, locale, recipient, "
                    "subject, body_text, urgent, status, attempts, max_attempts, next_attempt_at, last_error, "
                    "source_event, created_at, sent_at")
_wake = asyncio.Event()


def settings() -> NotificationSettings:
    return settings_of(NotificationSettings)


def _message(row: asyncpg.Record) -> MessageRead:
    return MessageRead.model_validate(dict(row))


def wake() -> None:
    """Tell this process's delivery loop that a message is due now."""
    _wake.set()


# -- contacts, preferences, quiet hours ----------------------------------------------------------------


@dataclass(frozen=True)
class Contact:
    user_id: str
    email: str | None
    phone: str | None
    push: list[dict[str, Any]]
    locale: str
    timezone: str
    quiet_start: time | None
    quiet_end: time | None


async def _contacts(conn: asyncpg.Connection | asyncpg.Pool, user_ids: Sequence[str]) -> dict[str, Contact]:
    """The contact details of those of ``user_ids`` who have them, by user."""
    rows = await conn.fetch(
        "SELECT user_id, email, phone, push, locale, timezone, quiet_start, quiet_end FROM notif_contacts "
        "WHERE user_id = ANY($1::text[])", list(user_ids))
    return {r["user_id"]: Contact(**dict(r)) for r in rows}


async def _contact(conn: asyncpg.Connection | asyncpg.Pool, user_id: str) -> Contact | None:
    return (await _contacts(conn, [user_id])).get(user_id)


def quiet_until(contact: Contact | None, now: datetime) -> datetime | None:
    """When the contact's quiet hours end, if ``now`` is inside them; None otherwise."""
    if contact is None or contact.quiet_start is None or contact.quiet_end is None:
        return None
    try:
        zone = ZoneInfo(contact.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    local = now.astimezone(zone)
    start, end, t = contact.quiet_start, contact.quiet_end, local.time().replace(tzinfo=None)
    inside = (start <= t < end) if start < end else (t >= start or t < end)  # e.g. 22:00-07:00 spans midnight
    if not inside or start == end:
        return None
    day = local.date() if t < end else local.date() + timedelta(days=1)
    return datetime.combine(day, end, tzinfo=zone).astimezone(UTC)


async def get_preferences(*, user_id: str) -> Preferences:
    p = await postgres.pool()
    contact = await _contact(p, user_id)
    rows = await p.fetch("SELECT category, channels FROM notif_preferences WHERE user_id = $1", user_id)
    channels = {r["category"]: list(r["channels"]) for r in rows}
    if contact is None:
        return Preferences(channels=channels)
    push = [PushSubscription.model_validate(sub) for sub in contact.push]
    return Preferences(email=contact.email, phone=contact.phone, push=push, locale=contact.locale,
                       timezone=contact.timezone, quiet_start=contact.quiet_start, quiet_end=contact.quiet_end,
                       channels=channels)


async def set_preferences(*, user_id: str, body: Preferences) -> Preferences:
    """Replace a user's contact details and channel choices (one transaction)."""
    try:
        ZoneInfo(body.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationFailed.for_field("timezone", f"unknown time zone {body.timezone!r}") from None
    if (body.quiet_start is None) != (body.quiet_end is None):
        raise ValidationFailed.for_field("quiet_end", "quiet hours need both a start and an end")
    for category in body.channels:
        if not category or len(category) > 40:
            raise ValidationFailed.for_field(f"channels.{category}", "is not a category")
    async with postgres.transaction() as conn:
        await conn.execute(
            "INSERT INTO notif_contacts (user_id, email, phone, push, locale, timezone, quiet_start, quiet_end) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (user_id) DO UPDATE SET email = $2, phone = $3, "
            "push = $4, locale = $5, timezone = $6, quiet_start = $7, quiet_end = $8, updated_at = now()",
            user_id, body.email, body.phone, [s.model_dump() for s in body.push], body.locale, body.timezone,
            body.quiet_start, body.quiet_end)
        await conn.execute("DELETE FROM notif_preferences WHERE user_id = $1", user_id)
        for category, channels in body.channels.items():
            await conn.execute("INSERT INTO notif_preferences (user_id, category, channels) VALUES ($1, $2, $3)",
                               user_id, category, sorted(set(channels)))
    return await get_preferences(user_id=user_id)


async def _channels(conn: asyncpg.Connection, wanted: Collection[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
    """The channels each (user, category) of ``wanted`` is sent on: the user's choice, else the category's default,
    with email always among a mandatory category's."""
    chosen = {(r["user_id"], r["category"]): list(r["channels"]) for r in await conn.fetch(
        "SELECT user_id, category, channels FROM notif_preferences "
        "WHERE (user_id, category) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        [u for u, _ in wanted], [c for _, c in wanted])}
    out = {}
    for user_id, category in wanted:
        channels = chosen.get((user_id, category), list(DEFAULT_CHANNELS.get(category, ["email"])))
        if category in MANDATORY and "email" not in channels:
            channels.append("email")
        out[(user_id, category)] = channels
    return out


def _addresses(contact: Contact | None, channel: str) -> list[str]:
    if contact is None:
        return []
    if channel == "email":
        return [contact.email] if contact.email else []
    if channel == "sms":
        return [contact.phone] if contact.phone else []
    return [str(s["endpoint"]) for s in contact.push if s.get("endpoint")]


# -- queueing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Queued:
    """One message to render and queue: the columns of ``notif_messages`` it is written with, its template's
    data, and when it is due (None: now)."""
    created_by: str
    client_message_id: str | None
    user_id: str | None
    channel: str
    recipient: str
    category: str
    template: str
    locale: str
    data: dict[str, Any]
    urgent: bool
    due: datetime | None
    source_event: UUID | None


#: Messages written together; one that its sender queued before (its ``client_message_id``) is left as it was.
_INSERT_MESSAGES = (
    "INSERT INTO notif_messages (id, created_by, client_message_id, user_id, channel, category, template, locale, "
    "recipient, subject, body_text, body_html, urgent, status, max_attempts, next_attempt_at, source_event) "
    "SELECT i, b, c, u, ch, ca, t, l, r, s, bt, bh, ur, 'queued', $16, coalesce(d, now()), e "
    "FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], "
    "$9::text[], $10::text[], $11::text[], $12::text[], $13::bool[], $14::timestamptz[], $15::uuid[]) "
    "AS m(i, b, c, u, ch, ca, t, l, r, s, bt, bh, ur, d, e) "
    f"ON CONFLICT (created_by, client_message_id) DO NOTHING RETURNING {_MESSAGE_COLUMNS}")


async def _queue_many(conn: asyncpg.Connection, items: Sequence[_Queued], *, replays: bool
                      ) -> list[tuple[asyncpg.Record | None, bool]]:
    """Render and insert ``items`` (their templates read in one statement, the messages written in one); for
    each, in order: (its row, whether it is new), or (None, False) when no template fits. A message its sender
    queued before is not written again; with ``replays`` its row is read back, else it comes as (None, False)."""
    s = settings()
    rendered = await templates.render_many(
        conn, [(q.template, q.channel, q.locale, q.data) for q in items], s.notifications_default_locale)
    ids = [uuid.uuid4() for _ in items]
    # Those with a template, in one order (the sender's ids), so that two batches that share an id take its lock in
    # the same order.
    go = sorted(((i, r) for i, r in enumerate(rendered) if r is not None),
                key=lambda ir: (items[ir[0]].created_by, items[ir[0]].client_message_id or ""))
    rows: dict[UUID, asyncpg.Record] = {}
    if go:
        rows = {r["id"]: r for r in await conn.fetch(
            _INSERT_MESSAGES, [ids[i] for i, _ in go], [items[i].created_by for i, _ in go],
            [items[i].client_message_id for i, _ in go], [items[i].user_id for i, _ in go],
            [items[i].channel for i, _ in go], [items[i].category for i, _ in go], [items[i].template for i, _ in go],
            [r.locale for _, r in go], [items[i].recipient for i, _ in go], [r.subject for _, r in go],
            [r.text for _, r in go], [r.html for _, r in go], [items[i].urgent for i, _ in go],
            [items[i].due for i, _ in go], [items[i].source_event for i, _ in go], s.notifications_max_attempts)}
    taken = [i for i, _ in go if ids[i] not in rows]  # queued by their sender before
    before: dict[tuple[str, str | None], asyncpg.Record] = {}
    if replays and taken:
        before = {(r["created_by"], r["client_message_id"]): r for r in await conn.fetch(
            f"SELECT {_MESSAGE_COLUMNS} FROM notif_messages WHERE (created_by, client_message_id) IN "
            f"(SELECT * FROM unnest($1::text[], $2::text[]))",
            [items[i].created_by for i in taken], [items[i].client_message_id for i in taken])}
    out: list[tuple[asyncpg.Record | None, bool]] = [(None, False)] * len(items)  # no template: nothing queued
    for i, _ in go:
        row = rows.get(ids[i])
        out[i] = (row, True) if row is not None else (before.get((items[i].created_by, items[i].client_message_id)),
                                                      False)
    return out


@dataclass(frozen=True)
class Notice:
    """A notification for a user, on each channel they receive its category on (see :func:`notify_users`)."""
    user_id: str
    category: str
    template: str
    data: dict[str, Any]
    key: str
    urgent: bool = False
    created_by: str = "events"
    source_event: UUID | None = None


async def notify_users(conn: asyncpg.Connection, notices: Sequence[Notice]) -> int:
    """Queue each notice's template for its user on each channel they receive its category on, in the caller's
    transaction, whatever their number in four statements: the contacts, the users' choices, the templates and
    the messages. A notice's ``key`` makes it idempotent (one message per key, channel and address). Returns how
    many messages were queued (none for a notice queued before)."""
    if not notices:
        return 0
    contacts = await _contacts(conn, sorted({n.user_id for n in notices}))
    for n in notices:
        if n.user_id not in contacts:
            log.debug("no contact details for user %s: %s not sent", n.user_id, n.template)
    reached = [n for n in notices if n.user_id in contacts]
    if not reached:
        return 0
    channels = await _channels(conn, sorted({(n.user_id, n.category) for n in reached}))
    now = datetime.now(UTC)
    items = []
    for n in reached:
        contact = contacts[n.user_id]
        due = None if n.urgent else quiet_until(contact, now)
        for channel in channels[(n.user_id, n.category)]:
            for i, address in enumerate(_addresses(contact, channel)):
                items.append(_Queued(
                    created_by=n.created_by, client_message_id=f"{n.key}:{channel}:{i}", user_id=n.user_id,
                    channel=channel, recipient=address, category=n.category, template=n.template,
                    locale=contact.locale, data=n.data, urgent=n.urgent, due=due, source_event=n.source_event))
    return sum(new for _, new in await _queue_many(conn, items, replays=False))


async def notify_user(conn: asyncpg.Connection, *, user_id: str, category: str, template: str, data: dict[str, Any],
                      key: str, urgent: bool = False, created_by: str = "events") -> int:
    """One :class:`Notice` queued by :func:`notify_users`; how many messages it queued."""
    return await notify_users(conn, [Notice(user_id=user_id, category=category, template=template, data=data,
                                            key=key, urgent=urgent, created_by=created_by)])


async def send_direct(*, caller: str, body: MessageCreate) -> tuple[MessageRead, bool]:
    """A direct send on one channel; (the message, whether it was created now) -- a replay returns the first."""
    if (body.user_id is None) == (body.to is None):
        raise ValidationFailed.for_field("user_id", "give either user_id or to")
    async with postgres.transaction() as conn:
        if body.client_message_id is not None:
            existing = await conn.fetchrow(
                f"SELECT {_MESSAGE_COLUMNS} FROM notif_messages WHERE created_by = $1 AND client_message_id = $2",
                caller, body.client_message_id)
            if existing is not None:
                return _same_or_conflict(existing, body), False
        contact = await _contact(conn, body.user_id) if body.user_id is not None else None
        if body.to is not None:
            recipient = body.to
        else:
            found = _addresses(contact, body.channel)
            if not found:
                raise ValidationFailed.for_field("user_id", f"the user has no {body.channel} address")
            recipient = found[0]
        locale = body.locale or (contact.locale if contact else settings().notifications_default_locale)
        [(row, new)] = await _queue_many(conn, [_Queued(
            created_by=caller, client_message_id=body.client_message_id, user_id=body.user_id, channel=body.channel,
            recipient=recipient, category=body.category, template=body.template, locale=locale, data=body.data,
            urgent=body.urgent, due=None if body.urgent else quiet_until(contact, datetime.now(UTC)),
            source_event=None)], replays=True)
        if row is None:
            raise ValidationFailed.for_field("template", f"no template {body.template!r} for {body.channel}")
    wake()
    return (_message(row) if new else _same_or_conflict(row, body)), new


def _same_or_conflict(row: asyncpg.Record, body: MessageCreate) -> MessageRead:
    if row["channel"] != body.channel or row["template"] != body.template:
        raise Conflict("client_message_id was used for another message", extra={"field": "client_message_id"})
    return _message(row)


# -- reading -------------------------------------------------------------------------------------------


async def get_message(*, message_id: UUID, caller: str, privileged: bool) -> MessageRead:
    p = await postgres.pool()
    row = await p.fetchrow(
        f"SELECT {_MESSAGE_COLUMNS} FROM notif_messages WHERE id = $1 AND ($2::text IS NULL OR created_by = $2 "
        f"OR user_id = $2)", message_id, None if privileged else caller)
    return _message(await one_or_404(row, "message", message_id))


async def list_messages(*, user_id: str | None, status: str | None, page: PageRequest) -> Page[MessageRead]:
    """Messages, latest first: of one user, and/or in one status (``dead``: the dead letters)."""
    p = await postgres.pool()
    after = page.after_value(0)
    rows = await p.fetch(
        f"SELECT {_MESSAGE_COLUMNS} FROM notif_messages WHERE ($1::text IS NULL OR user_id = $1) "
        f"AND ($2::text IS NULL OR status = $2) AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4)) "
        f"ORDER BY created_at DESC, id DESC LIMIT $5",
        user_id, status, datetime.fromisoformat(after) if after else None,
        UUID(page.after_value(1)) if after else None, page.fetch_limit)
    return page.of(rows, key=lambda r: (r["created_at"].isoformat(), str(r["id"])), item=_message)


async def retry_dead(*, message_id: UUID) -> MessageRead:
    """Send a dead message again (a fresh round of attempts); 409 unless it is dead."""
    p = await postgres.pool()
    row = await p.fetchrow(
        f"UPDATE notif_messages SET status = 'queued', attempts = 0, next_attempt_at = now(), updated_at = now() "
        f"WHERE id = $1 AND status = 'dead' RETURNING {_MESSAGE_COLUMNS}", message_id)
    if row is None:
        await one_or_404(p.fetchrow("SELECT 1 FROM notif_messages WHERE id = $1", message_id), "message", message_id)
        raise Conflict("only a dead message can be sent again")
    wake()
    return _message(row)


# -- templates ---------------------------------------------------------------------------------------------


async def put_template(*, key: str, channel: str, locale: str, body: TemplateBody) -> TemplateRead:
    p = await postgres.pool()
    row = await p.fetchrow(
        "INSERT INTO notif_templates (key, channel, locale, subject, body_text, body_html) VALUES ($1, $2, $3, $4, "
        "$5, $6) ON CONFLICT (key, channel, locale) DO UPDATE SET subject = $4, body_text = $5, body_html = $6, "
        "updated_at = now() RETURNING *", key, channel, locale, body.subject, body.body_text, body.body_html)
    return TemplateRead.model_validate(dict(row))


async def list_templates(*, key: str | None, page: PageRequest) -> Page[TemplateRead]:
    p = await postgres.pool()
    after = page.after
    rows = await p.fetch(
        "SELECT * FROM notif_templates WHERE ($1::text IS NULL OR key = $1) AND ($2::text IS NULL OR "
        "(key, channel, locale) > ($2, $3, $4)) ORDER BY key, channel, locale LIMIT $5",
        key, *(after if after and len(after) == 3 else (None, None, None)), page.fetch_limit)
    return page.of(rows, key=lambda r: (r["key"], r["channel"], r["locale"]),
                   item=lambda r: TemplateRead.model_validate(dict(r)))


# -- delivery ---------------------------------------------------------------------------------------------


def backoff_s(attempts: int) -> float:
    s = settings()
    return float(min(s.notifications_retry_max_s, s.notifications_retry_base_s * 2 ** (attempts - 1)))


async def _take(limit: int) -> list[asyncpg.Record]:
    p = await postgres.pool()
    return list(await p.fetch(
        "UPDATE notif_messages m SET status = 'sending', attempts = m.attempts + 1, updated_at = now(), "
        "lease_until = now() + make_interval(secs => $2) WHERE m.id IN (SELECT id FROM notif_messages "
        "WHERE (status IN ('queued', 'failed') AND next_attempt_at <= now()) OR (status = 'sending' AND "
        "lease_until < now()) ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) "
        "RETURNING m.id, m.channel, m.recipient, m.subject, m.body_text, m.body_html, m.attempts, m.max_attempts",
        limit, settings().notifications_lease_s))


@dataclass(frozen=True)
class _Sent:
    """How one message's send ended: ``sent`` (with the provider's id), ``failed`` (again after ``retry_s``) or
    ``dead``, with the error."""
    id: UUID
    status: str
    provider_id: str | None = None
    error: str | None = None
    retry_s: float = 0.0


async def _record_sends(_key: None, sends: list[_Sent]) -> list[None]:
    """The ends of the sends that finished together, in one statement (sorted by id: two batches lock their rows in
    one order). A failure is recorded only on a message still ``sending`` (its lease may have passed and another
    round taken it)."""
    batch = sorted(sends, key=lambda x: x.id)
    p = await postgres.pool()
    await p.execute(
        "UPDATE notif_messages m SET status = u.st, last_error = u.err, lease_until = NULL, updated_at = now(), "
        "sent_at = CASE WHEN u.st = 'sent' THEN now() ELSE m.sent_at END, "
        "provider_message_id = CASE WHEN u.st = 'sent' THEN u.pid ELSE m.provider_message_id END, "
        "next_attempt_at = CASE WHEN u.st = 'sent' THEN m.next_attempt_at "
        "ELSE now() + make_interval(secs => u.retry) END "
        "FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::float8[]) AS u(id, st, pid, err, retry) "
        "WHERE m.id = u.id AND (u.st = 'sent' OR m.status = 'sending')",
        [x.id for x in batch], [x.status for x in batch], [x.provider_id for x in batch], [x.error for x in batch],
        [x.retry_s for x in batch])
    return [None] * len(sends)


#: The ends of sends, recorded together: the messages of a round are sent at once and mostly end together.
_SENDS: GroupCommit[None, _Sent, None] = GroupCommit(_record_sends)


async def _deliver(row: asyncpg.Record) -> str:
    outgoing = providers.Outgoing(id=row["id"], channel=row["channel"], recipient=row["recipient"],
                                  subject=row["subject"], text=row["body_text"], html=row["body_html"])
    try:
        provider_id = await providers.for_channel(row["channel"]).send(outgoing)
    except Exception as exc:
        permanent = isinstance(exc, providers.DeliveryFailed) and exc.permanent
        dead = permanent or row["attempts"] >= row["max_attempts"]
        error = str(exc) if isinstance(exc, providers.DeliveryFailed) else f"{type(exc).__name__}: {exc}"
        await _SENDS.submit(None, _Sent(row["id"], "dead" if dead else "failed", error=error[:1000],
                                        retry_s=0.0 if dead else backoff_s(row["attempts"])))
        if dead:
            log.warning("message %s is dead after %d attempts: %s", row["id"], row["attempts"], error[:200])
        return "dead" if dead else "failed"
    await _SENDS.submit(None, _Sent(row["id"], "sent", provider_id=provider_id))
    return "sent"


async def deliver_due(*, limit: int | None = None) -> int:
    """One delivery round: take the due messages and send them concurrently; returns how many it took."""
    rows = await _take(limit or settings().notifications_batch)
    if rows:
        await asyncio.gather(*(_deliver(r) for r in rows))
    return len(rows)


async def _deliver_quietly(row: asyncpg.Record) -> None:
    try:
        await _deliver(row)
    except Exception as exc:  # its lease runs out and a later round takes it again
        log.warning("delivery of message %s stopped: %s", row["id"], type(exc).__name__)
    finally:
        _wake.set()  # room for one more


async def deliver_forever() -> None:
    """Background: deliver due messages, at most ``notifications_batch`` at a time, each on its own.

    A message is sent as soon as a slot is free, not when the round it was taken in ends: one slow
    provider exchange (up to its timeout) holds up its own message only. Idle, it waits for a
    wake-up or the poll interval.
    """
    if not settings().notifications_deliver:
        return
    sending: set[asyncio.Task[None]] = set()

    async def take_due() -> int:
        room = settings().notifications_batch - len(sending)
        rows = await _take(room) if room > 0 else []
        for row in rows:
            task = asyncio.create_task(_deliver_quietly(row))
            sending.add(task)
            task.add_done_callback(sending.discard)
        return len(rows)

    try:
        await loops.repeat("notification delivery round", take_due, lambda: settings().notifications_poll_s,
                           drain=True, wake=_wake)
    finally:  # stopping: what is still being sent is taken again by a later run once its lease ends
        for task in list(sending):
            task.cancel()


async def purge_messages(*, conn: asyncpg.Connection, older_than_days: int) -> int:
    """Delete sent and dead messages older than ``older_than_days`` (the housekeeping job calls it)."""
    done = await conn.fetch(
        "DELETE FROM notif_messages WHERE status IN ('sent', 'dead') AND updated_at < now() - "
        "make_interval(days => $1) RETURNING 1", older_than_days)
    await conn.execute("DELETE FROM notif_sandbox WHERE created_at < now() - make_interval(days => $1)",
                       older_than_days)
    return len(done)


# -- events ------------------------------------------------------------------------------------------------

#: topic -> (template, category, the payload field naming the user, urgent)
ROUTES: dict[str, tuple[str, str, tuple[str, ...], bool]] = {
    "order.created": ("order.created", "orders", ("customer",), False),
    "order.paid": ("order.paid", "orders", ("customer",), False),
    "payment_intent.payment_failed": ("payment.failed", "payments", ("customer",), False),
    "delivery.status": ("delivery.status", "deliveries", ("customer", "user_id"), False),
    "auth.user.password_changed": ("security.password_changed", "security", ("user_id",), True),
}
CONSUMER_GROUP = "notification-service"


async def on_events(conn: asyncpg.Connection, events: list[Event]) -> None:
    """The consumer's handler: queue a batch of events' notifications (:func:`notify_users`, a few statements for
    the whole batch) in the transaction that marks them processed."""
    notices = []
    for event in events:
        route = ROUTES.get(event.topic)
        if route is None:
            continue
        template, category, fields, urgent = route
        user_id = next((str(event.data[f]) for f in fields if event.data.get(f)), None)
        if user_id is None:
            log.debug("event %s (%s) names no user: nothing to notify", event.id, event.topic)
            continue
        notices.append(Notice(user_id=user_id, category=category, template=template, data=event.data,
                              key=f"event:{event.id}", urgent=urgent, source_event=event.id))
    if await notify_users(conn, notices):
        wake()  # in this process: the commit comes first, then the loop's next round finds them


async def consume_events() -> None:
    """Background: the consumer of the events that notify users."""
    if not settings().notifications_consume_events:
        return
    await EventConsumer(CONSUMER_GROUP, sorted(ROUTES), None, handle_many=on_events,
                        fetch_max_wait_ms=RELAXED_FETCH_WAIT_MS).run_until_stopped()


__all__ = ["Notice", "consume_events", "deliver_due", "deliver_forever", "notify_user", "notify_users", "on_events",
           "send_direct"]


async def home_summary(*, user_id: str) -> dict[str, Any]:
    """The home view's notifications part: messages to the user in the last 30 days and the 3 latest (no bodies)."""
    pg = await postgres.pool()
    rows = await pg.fetch(
        "SELECT id, channel, category, subject, status, created_at, count(*) OVER () AS n FROM notif_messages "
        "WHERE user_id = $1 AND created_at > now() - interval '30 days' ORDER BY created_at DESC, id LIMIT 3",
        user_id)
    return {"last_30_days": rows[0]["n"] if rows else 0,
            "latest": [{"message_id": str(r["id"]), "channel": r["channel"], "category": r["category"],
                        "subject": r["subject"], "status": r["status"], "created_at": r["created_at"].isoformat()}
                       for r in rows]}
