"""Webhooks: merchants' endpoints, signed deliveries retried with backoff, and the receiver's verifier.

A merchant registers an endpoint (a URL and the event types it wants) and is shown its signing
secret (``whsec_...``) once; billing keeps it only as a key-service envelope
(:func:`nexus_ray.deployments.specialized.keys.encrypt`, context ``billing:webhook:<id>``).

An event of a payment intent is queued, in the transaction of the change, as one delivery per
enabled endpoint of the intent's merchant (``created_by``) that wants its type: the delivery
commits with the change or not at all, and ``(endpoint, event id)`` is unique. The deliverer
(:func:`deliver_forever`) POSTs the body with the header::

    Nexus-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the secret>

A 2xx answer delivers it; anything else -- another status, a refused connection, no answer
within ``billing_webhook_timeout_s`` -- is a failed attempt, recorded with its status or error
and duration, and tried again after ``billing_webhook_backoff_s`` doubled per failure (capped),
until ``billing_webhook_max_attempts`` have failed. A delivery is claimed by moving its
``next_attempt_at`` forward (a lease) in a short transaction, so replicas never send the same
attempt twice and no transaction stays open across an HTTP call. Delivery is at least once:
receivers deduplicate by the event ``id`` in the body.

A receiver checks a delivery with :func:`verify_signature` (the timestamp guards against replays
of an old delivery: it must be within ``tolerance_s`` of the receiver's clock).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg
import httpx
import orjson

from nexus_ray.deployments.kit import loops
from nexus_ray.deployments.kit.idempotency import Outcome, fingerprint
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.deployments.specialized import keys
from nexus_ray.exceptions import NotFound, ValidationFailed
from nexus_ray.stores import postgres
from nexus_ray.stores.events import NOTIFY, outbox_insert

from .keyed import KEYS
from .models import DeliveryAttempt, WebhookDeliveryRead, WebhookEndpointRead
from .settings import BillingSettings

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Nexus-Signature"
_ACTOR = "billing-service"
_wake = asyncio.Event()


class InvalidSignature(ValueError):
    """A delivery whose signature header is missing, malformed, wrong, or too old."""


def sign(body: bytes, secret: str, timestamp: int) -> str:
    """The signature header value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(payload: bytes | str, header: str | None, secret: str, tolerance_s: float = 300,
                     *, now: float | None = None) -> int:
    """Check a delivery as its receiver: returns its timestamp, or raises :class:`InvalidSignature`.

    ``payload`` is the raw request body (not re-serialised JSON), ``header`` the ``Nexus-Signature``
    value. Any ``v1`` entry may match (several are sent while a secret rotates); the timestamp must be
    within ``tolerance_s`` of ``now`` (default: this clock).
    """
    if not header:
        raise InvalidSignature("no signature header")
    body = payload.encode() if isinstance(payload, str) else bytes(payload)
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise InvalidSignature("the signature header has no timestamp or no v1 signature")
    expected = sign(body, secret, timestamp).rsplit("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise InvalidSignature("no v1 signature matches the payload")
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise InvalidSignature("the timestamp is outside the tolerance")
    return timestamp


def backoff_s(failures: int) -> float:
    """Wait after the ``failures``-th failed attempt: the base doubled per earlier failure, capped."""
    s = settings_of(BillingSettings)
    return float(min(s.billing_webhook_backoff_max_s, s.billing_webhook_backoff_s * 2 ** max(0, failures - 1)))


def wake(queued: int) -> None:
    """After a commit that queued ``queued`` deliveries: wake this process's deliverer if there are any (it would
    find them on its next poll anyway)."""
    if queued:
        _wake.set()


# -- endpoints ---------------------------------------------------------------------------------------------------

_ENDPOINT = "id, url, events, description, status, created_at"


def _context(endpoint_id: UUID) -> str:
    return f"billing:webhook:{endpoint_id}"


async def create_endpoint(*, owner: str, url: str, events: Sequence[str], description: str,
                          idempotency_key: str | None) -> tuple[Outcome, str | None]:
    """Register an endpoint: (the outcome, the signing secret -- None on a replay: it is shown once only).

    The stored response of a keyed request leaves the secret out, so no copy of it is kept in clear.
    """
    if url.startswith("http://") and not settings_of(BillingSettings).billing_webhook_allow_http:
        raise ValidationFailed.for_field("url", "must be an https URL")
    wanted = ["*"] if "*" in events else sorted(set(events))
    fp = fingerprint("create_webhook_endpoint", {"url": url, "events": wanted, "description": description})
    made: dict[str, str] = {}

    async def work(conn: asyncpg.Connection) -> tuple[int, dict[str, Any]]:
        endpoint_id = uuid.uuid4()
        secret = "whsec_" + secrets.token_urlsafe(32)
        envelope = await keys.encrypt(secret.encode(), context=_context(endpoint_id), actor=_ACTOR)
        row = await conn.fetchrow(
            f"INSERT INTO billing_webhook_endpoints (id, owner, url, events, description, secret, status) "
            f"VALUES ($1, $2, $3, $4, $5, $6, 'enabled') RETURNING {_ENDPOINT}",
            endpoint_id, owner, url, wanted, description, envelope)
        assert row is not None
        made["secret"] = secret
        return 201, _endpoint_read(row).model_dump(mode="json")

    outcome = await KEYS.run(scope=owner, key=idempotency_key, fingerprint=fp, work=work)
    return outcome, None if outcome.replayed else made.get("secret")


async def _endpoint_row(endpoint_id: UUID, owner: str, privileged: bool) -> asyncpg.Record:
    pg = await postgres.pool()
    row = await pg.fetchrow(f"SELECT owner, {_ENDPOINT} FROM billing_webhook_endpoints WHERE id = $1", endpoint_id)
    if row is None or (row["owner"] != owner and not privileged):
        raise NotFound(f"webhook endpoint {endpoint_id} not found")
    return row


def _endpoint_read(row: asyncpg.Record) -> WebhookEndpointRead:
    return WebhookEndpointRead(**{k: row[k] for k in ("id", "url", "events", "description", "status", "created_at")})


async def get_endpoint(*, endpoint_id: UUID, owner: str, privileged: bool) -> WebhookEndpointRead:
    return _endpoint_read(await _endpoint_row(endpoint_id, owner, privileged))


async def list_endpoints(*, owner: str, page: PageRequest) -> Page[WebhookEndpointRead]:
    after = page.after_value(0)
    try:
        after_id = UUID(str(after)) if after is not None else None
    except ValueError:
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list") from None
    pg = await postgres.pool()
    rows = await pg.fetch(
        f"SELECT {_ENDPOINT} FROM billing_webhook_endpoints WHERE owner = $1 AND ($2::uuid IS NULL OR id > $2) "
        f"ORDER BY id LIMIT $3", owner, after_id, page.fetch_limit)
    return page.of(rows, key=lambda r: (str(r["id"]),), item=_endpoint_read)


async def delete_endpoint(*, endpoint_id: UUID, owner: str, privileged: bool) -> None:
    """Remove an endpoint and its deliveries (idempotent for its owner: a second delete is a 404)."""
    await _endpoint_row(endpoint_id, owner, privileged)
    async with postgres.transaction() as conn:
        await conn.execute("DELETE FROM billing_webhook_endpoints WHERE id = $1", endpoint_id)


async def list_deliveries(*, endpoint_id: UUID, owner: str, privileged: bool, page: PageRequest
                          ) -> Page[WebhookDeliveryRead]:
    """An endpoint's deliveries, newest first, each with its attempts."""
    await _endpoint_row(endpoint_id, owner, privileged)
    after = page.after_value(0)
    pg = await postgres.pool()
    try:
        after_id = UUID(str(after)) if after is not None else None
    except ValueError:
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list") from None
    rows = await pg.fetch(
        "SELECT id, endpoint_id, event_id, event_type, status, attempts, next_attempt_at, last_status, created_at, "
        "delivered_at FROM billing_webhook_deliveries WHERE endpoint_id = $1 AND ($2::uuid IS NULL OR id > $2) "
        "ORDER BY id LIMIT $3", endpoint_id, after_id, page.fetch_limit)
    history: dict[UUID, list[DeliveryAttempt]] = {}
    for a in await pg.fetch(
            "SELECT delivery_id, attempt, at, status_code, error, duration_ms FROM billing_webhook_attempts "
            "WHERE delivery_id = ANY($1::uuid[]) ORDER BY delivery_id, attempt", [r["id"] for r in rows]):
        history.setdefault(a["delivery_id"], []).append(DeliveryAttempt(
            attempt=a["attempt"], at=a["at"], status_code=a["status_code"], error=a["error"],
            duration_ms=a["duration_ms"]))
    return page.of(rows, key=lambda r: (str(r["id"]),),
                   item=lambda r: WebhookDeliveryRead(**dict(r), history=history.get(r["id"], [])))


# -- queueing and delivery ---------------------------------------------------------------------------------------


class Report(NamedTuple):
    """Events about one object: ``(outbox topic, webhook event type)`` pairs, in order, the object's id (the
    events' key), the merchant whose endpoints may want them, and the object as the events carry it."""

    events: Sequence[tuple[str, str]]
    key: str
    owner: str
    data: dict[str, Any]


async def publish(conn: asyncpg.Connection, reports: Sequence[Report], *, beside: str | Sequence[str] = "",
                  args: Sequence[Any] = ()) -> int:
    """Record the events of ``reports`` in the outbox, in order, and queue each for its owner's endpoints that want
    its type: in the caller's transaction and in one statement whatever their number. Returns how many deliveries
    were queued. ``beside``: other data-modifying statements run in the same one (their parameters numbered from
    ``$9``, given in ``args``), as :func:`~nexus_ray.stores.events.emit_many` takes them."""
    if not conn.is_in_transaction():
        raise RuntimeError("publish() must run inside the transaction of the change it reports")
    ids = postgres.new_ids(sum(len(r.events) for r in reports))
    created = int(datetime.now(UTC).timestamp())
    topics, types, bodies, keys, owners, payloads = [], [], [], [], [], []
    numbered = iter(ids)
    for report in reports:
        payload = orjson.dumps(report.data).decode()
        for (topic, event_type), event_id in zip(report.events, numbered, strict=False):
            topics.append(topic)
            types.append(event_type)
            bodies.append(orjson.dumps({"id": str(event_id), "object": "event", "type": event_type,
                                        "created": created, "data": {"object": report.data}}).decode())
            keys.append(report.key)
            owners.append(report.owner)
            payloads.append(payload)
    changes = (beside,) if isinstance(beside, str) else tuple(beside)
    change = "".join(f"c{i} AS ({c}), " for i, c in enumerate(changes) if c)
    row = await conn.fetchrow(
        f"WITH {change}v AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], "
        "$6::text[], $7::text[]) WITH ORDINALITY AS v(event_id, topic, event_type, body, key, owner, payload, n)), "
        f"e AS ({outbox_insert('v.event_id', 'v.topic', 'v.key', 'v.payload', '$8', source='FROM v ORDER BY v.n')}), "
        "d AS (INSERT INTO billing_webhook_deliveries (id, endpoint_id, event_id, event_type, body, status, "
        "next_attempt_at) SELECT gen_random_uuid(), w.id, v.event_id, v.event_type, v.body, 'pending', now() "
        "FROM billing_webhook_endpoints w JOIN v ON w.owner = v.owner "
        "AND ('*' = ANY(w.events) OR v.event_type = ANY(w.events)) WHERE w.status = 'enabled' "
        "ON CONFLICT (endpoint_id, event_id) DO NOTHING RETURNING 1) "
        f"SELECT {NOTIFY}, (SELECT count(*) FROM d) AS queued",
        ids, topics, types, bodies, keys, owners, payloads, {}, *args)
    return int(row["queued"])


async def _claim_due(limit: int) -> list[asyncpg.Record]:
    s = settings_of(BillingSettings)
    lease = s.billing_webhook_timeout_s + 5
    pg = await postgres.pool()
    # One statement: its own transaction, whose commit waits for the disk (this pool's is never relaxed), and with
    # it the commit of every delivery it claims, which may not have waited (a checkout's capture): nothing is sent
    # that a crash of PostgreSQL could take back.
    return await pg.fetch(
        "UPDATE billing_webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => $2) "
        "FROM billing_webhook_endpoints e WHERE e.id = d.endpoint_id AND d.id IN ("
        "  SELECT id FROM billing_webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= now() "
        "  ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) "
        "RETURNING d.id, d.endpoint_id, d.body, d.attempts, e.url, e.secret", limit, float(lease))


async def _attempt(http: httpx.AsyncClient, d: asyncpg.Record, secrets_: dict[UUID, str]) -> None:
    s = settings_of(BillingSettings)
    secret = secrets_.get(d["endpoint_id"])
    if secret is None:
        secret = secrets_[d["endpoint_id"]] = (await keys.decrypt(
            d["secret"], context=_context(d["endpoint_id"]), actor=_ACTOR)).decode()
    body = d["body"].encode()
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        r = await http.post(d["url"], content=body, timeout=s.billing_webhook_timeout_s, headers={
            "Content-Type": "application/json", "User-Agent": "nexus-billing-webhooks/1",
            SIGNATURE_HEADER: sign(body, secret, int(time.time()))})
        status = r.status_code
        if not 200 <= status < 300:
            error = f"HTTP {status}"
    except httpx.TimeoutException:
        error = "timeout"
    except httpx.HTTPError as exc:
        error = type(exc).__name__
    took = int((time.monotonic() - started) * 1000)
    attempt = d["attempts"] + 1
    async with postgres.transaction() as conn:
        await conn.execute("INSERT INTO billing_webhook_attempts (delivery_id, attempt, status_code, error, "
                           "duration_ms) VALUES ($1, $2, $3, $4, $5)", d["id"], attempt, status, error, took)
        if error is None:
            await conn.execute("UPDATE billing_webhook_deliveries SET status = 'delivered', attempts = $2, "
                               "last_status = $3, delivered_at = now() WHERE id = $1", d["id"], attempt, status)
        elif attempt >= s.billing_webhook_max_attempts:
            await conn.execute("UPDATE billing_webhook_deliveries SET status = 'failed', attempts = $2, "
                               "last_status = $3 WHERE id = $1", d["id"], attempt, status)
        else:
            await conn.execute(
                "UPDATE billing_webhook_deliveries SET attempts = $2, last_status = $3, "
                "next_attempt_at = now() + make_interval(secs => $4) WHERE id = $1",
                d["id"], attempt, status, backoff_s(attempt))


async def deliver_due(http: httpx.AsyncClient, *, limit: int = 50) -> int:
    """One round: attempt every due delivery (concurrently); returns how many were attempted."""
    due = await _claim_due(limit)
    cache: dict[UUID, str] = {}
    results = await asyncio.gather(*(_attempt(http, d, cache) for d in due), return_exceptions=True)
    for d, res in zip(due, results, strict=True):
        if isinstance(res, Exception):  # its lease runs out and it is attempted again
            log.warning("webhook delivery %s could not be attempted: %s", d["id"], type(res).__name__)
    return len(due)


async def deliver_forever() -> None:
    """Background: deliver due webhooks, woken by new ones or every ``billing_webhook_poll_s``."""
    async with httpx.AsyncClient(follow_redirects=False) as http:
        await loops.repeat("webhook delivery round", lambda: deliver_due(http),
                           lambda: settings_of(BillingSettings).billing_webhook_poll_s, drain=True, wake=_wake)
