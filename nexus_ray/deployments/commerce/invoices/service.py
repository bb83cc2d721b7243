"""invoice-gen's logic: gap-free numbering, tax lines, immutable invoices, credit notes.

Gap-free numbering under concurrency
------------------------------------
Each (kind, series) has one counter row (``invoice_counters``: invoices and credit notes count
separately). The issuing transaction increments it (``INSERT ... ON CONFLICT DO UPDATE``, which
also creates a series on first use) and so holds the row's lock until it commits: numbers are
handed out one transaction at a time, and a transaction that rolls back after taking its
number (a database error, a crash, a concurrent duplicate of its idempotency key) rolls the
increment back too -- the next one gets the same number. A number therefore exists only if its
document committed: no gap, no duplicate (``UNIQUE (series, number)`` backs this up). The cost
is that issues in one series commit one after another; everything that does not need the
number (validation, rates, totals) runs before the lock is taken. A retry is not looked up first:
its insert finds its key taken, gives the number back, and the retry is answered with the first invoice.
Different series never wait on each other. Within a process, the issues of a series that arrive
while its transaction runs are written together by the next one (:func:`_write_series`): one
commit for many invoices, the same guarantee.

Tax
---
Rates come from ``invoice_tax_rates`` by (country, tax category) and are copied onto each line; a
country with no rates of its own is taxed by those of ``ZZ``, the rest of the world (zero-rated
exports as seeded).
A line's tax is ``net * rate / 100`` rounded **per line, half up, to the minor unit**
(:data:`TAX_ROUNDING`, stated on the invoice and its PDF); the invoice's tax is the sum of its
lines' taxes.

Immutability and credit notes
-----------------------------
Invoices, credit notes and their lines are append-only (database triggers refuse UPDATE,
DELETE and TRUNCATE). An invoice is corrected by credit notes, numbered in their own series,
each crediting quantities of its lines. Credit notes of one invoice are serialised by a lock
on the invoice row; a line can never be credited beyond what is left of it (quantity, net and
tax alike: the credit that completes a line takes exactly its remainder, so per-line rounding
can never make the credits exceed the invoice). ``status`` is ``credited`` once the credits
reach the invoice's total.

Idempotency: every issue carries a key scoped to the caller; the same key and the same request
replay the first result, the same key with another request is a 409 naming ``idempotency_key``.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.exceptions import Conflict, NexusError, NotFound, ValidationFailed
from nexus_ray.stores import kept, postgres
from nexus_ray.stores.events import NOTIFY, emit, emit_many, outbox_insert
from nexus_ray.stores.together import GroupCommit

from .models import (
    CreditNoteLineRead,
    CreditNoteRead,
    InvoiceLineRead,
    InvoiceRead,
    LineIn,
    TaxQuote,
    TaxRateRead,
    TaxSummary,
)

ISSUED = "invoice.issued"
CREDITED = "invoice.credited"
TAX_ROUNDING = "Tax is computed per line and rounded half up to the minor unit."
API = "/commerce/v1/invoices"

_NEXT_NUMBER = (
    "INSERT INTO invoice_counters (kind, series, last_number) VALUES ($1, $2, 1) "
    "ON CONFLICT (kind, series) DO UPDATE SET last_number = invoice_counters.last_number + 1 "
    "RETURNING last_number"
)


class _Duplicate(Exception):
    """A concurrent request with the same key committed first: roll back (and give the number back)."""


def request_hash(operation: str, body: dict[str, Any]) -> str:
    canonical = orjson.dumps({"op": operation, "body": body}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


def _key_reused() -> Conflict:
    return Conflict("idempotency_key was already used with another request", extra={
        "errors": [{"field": "idempotency_key", "message": "was used with another request",
                    "type": "idempotency_key_reused"}], "code": "idempotency_key_reused"})


def _key_missing() -> ValidationFailed:
    return ValidationFailed.for_field("idempotency_key", "is required (field or Idempotency-Key header)", "missing")


def rate_text(rate: Decimal) -> str:
    """A rate as the API and the PDF print it: ``19``, ``5.5``, ``8.1``."""
    return format(rate.normalize(), "f")


def line_tax(net: int, rate: Decimal) -> int:
    """The tax of one line: ``net * rate / 100`` rounded half up to the minor unit (exact decimals)."""
    return int((Decimal(net) * rate / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def display_number(series: str, number: int, *, credit: bool = False) -> str:
    """How a document's number reads: its series, then the number in at least six digits. (An issue's event gets
    the same from SQL, in :data:`_INSERT`, where the number is taken.)"""
    return f"{'CN-' if credit else ''}{series}-{number:06d}"


# -- reading -----------------------------------------------------------------------------------------------------

_INVOICE_COLUMNS = ("i.id, i.series, i.number, i.source, i.source_id, i.owner, i.customer, i.country, i.currency, "
                    "i.subtotal, i.tax_total, i.total, i.tax_rounding, i.issued_at")


def _invoice_read(row: asyncpg.Record, lines: list[asyncpg.Record], credited: int) -> InvoiceRead:
    by_rate: dict[Decimal, list[int]] = defaultdict(lambda: [0, 0])
    for ln in lines:
        by_rate[ln["tax_rate"]][0] += ln["net"]
        by_rate[ln["tax_rate"]][1] += ln["tax"]
    return InvoiceRead(
        id=row["id"], series=row["series"], number=row["number"],
        display_number=display_number(row["series"], row["number"]),
        status="credited" if credited >= row["total"] and row["total"] > 0 else "issued",
        source=row["source"], source_id=row["source_id"],
        order_id=row["source_id"] if row["source"] == "order" else None,
        customer=row["customer"], country=row["country"], currency=row["currency"].strip(),
        lines=[InvoiceLineRead(position=ln["position"], description=ln["description"], quantity=ln["quantity"],
                               unit_price=ln["unit_price"], tax_category=ln["tax_category"],
                               tax_rate=rate_text(ln["tax_rate"]), net=ln["net"], tax=ln["tax"], total=ln["total"])
               for ln in lines],
        tax_summary=[TaxSummary(tax_rate=rate_text(r), net=n, tax=t) for r, (n, t) in sorted(by_rate.items())],
        subtotal=row["subtotal"], tax_total=row["tax_total"], total=row["total"], credited=credited,
        tax_rounding=row["tax_rounding"], issued_at=row["issued_at"], pdf_url=f"{API}/invoices/{row['id']}/pdf",
    )


async def _load_invoice(conn: asyncpg.Connection | asyncpg.Pool, where: str, *args: Any) -> InvoiceRead | None:
    row = await conn.fetchrow(f"SELECT {_INVOICE_COLUMNS} FROM invoices i WHERE {where}", *args)
    if row is None:
        return None
    lines = await conn.fetch(
        "SELECT position, description, quantity, unit_price, tax_category, tax_rate, net, tax, total "
        "FROM invoice_lines WHERE invoice_id = $1 ORDER BY position", row["id"])
    credited = await conn.fetchval(
        "SELECT coalesce(sum(total), 0) FROM invoice_credit_notes WHERE invoice_id = $1", row["id"])
    return _invoice_read(row, list(lines), int(credited))


def _visible(owner: str | None, caller: str, privileged: bool) -> bool:
    return privileged or (owner is not None and owner == caller)


async def get_invoice(*, invoice_id: UUID, caller: str, privileged: bool) -> InvoiceRead:
    """An invoice, for its customer (``customer.id``) or an administrator; 404 for anyone else."""
    invoice = await _load_invoice(await postgres.pool(), "i.id = $1", invoice_id)
    if invoice is None or not _visible(invoice.customer.get("id"), caller, privileged):
        raise NotFound(f"invoice {invoice_id} not found")
    return invoice


async def list_invoices(*, owner: str | None, page: PageRequest) -> Page[InvoiceRead]:
    """Invoices of ``owner`` (all of them for None), in id order (keyset on id)."""
    pg = await postgres.pool()
    value = page.after_value(0)
    try:
        after = UUID(str(value)) if value is not None else None
    except ValueError:
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list") from None
    rows = await pg.fetch(
        f"SELECT {_INVOICE_COLUMNS} FROM invoices i WHERE ($1::text IS NULL OR i.owner = $1) "
        f"AND ($2::uuid IS NULL OR i.id > $2) ORDER BY i.id LIMIT $3", owner, after, page.fetch_limit)
    ids = [r["id"] for r in rows]
    lines: dict[UUID, list[asyncpg.Record]] = defaultdict(list)
    for ln in await pg.fetch(
            "SELECT invoice_id, position, description, quantity, unit_price, tax_category, tax_rate, net, tax, total "
            "FROM invoice_lines WHERE invoice_id = ANY($1::uuid[]) ORDER BY invoice_id, position", ids):
        lines[ln["invoice_id"]].append(ln)
    credited = {r["invoice_id"]: int(r["total"]) for r in await pg.fetch(
        "SELECT invoice_id, sum(total) AS total FROM invoice_credit_notes WHERE invoice_id = ANY($1::uuid[]) "
        "GROUP BY invoice_id", ids)}
    return page.of(rows, key=lambda r: (str(r["id"]),),
                   item=lambda r: _invoice_read(r, lines[r["id"]], credited.get(r["id"], 0)))


# -- issuing -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Priced:
    line: LineIn
    rate: Decimal
    net: int
    tax: int


#: Whose rates a country with none of its own uses (the rest of the world).
WORLD = "ZZ"


#: The rates of each country read before, kept until a rate is set (:func:`set_tax_rate` notifies every process).
_KEPT_RATES: kept.Kept[str, dict[str, Decimal]] = kept.Kept("invoice_tax_rates", max_items=1_000)


async def _country_rates(country: str, asks: list[None]) -> list[dict[str, Decimal]]:
    """The rates of ``country`` by category (the rest of the world's for a country with none), read once for the
    requests that ask at the same moment (each gets a read made after it asked)."""
    pg = await postgres.pool()
    stamp = _KEPT_RATES.stamp()
    rows = await pg.fetch(
        "SELECT category, rate FROM invoice_tax_rates WHERE country = (SELECT coalesce("
        "(SELECT country FROM invoice_tax_rates WHERE country = $1 LIMIT 1), $2))", country, WORLD)
    rates = {r["category"]: r["rate"] for r in rows}
    _KEPT_RATES.keep(country, rates, stamp)
    return [rates] * len(asks)


#: Rate look-ups of one country asked at the same moment, read together.
_RATES: GroupCommit[str, None, dict[str, Decimal]] = GroupCommit(_country_rates)


async def _rates(country: str, lines: list[LineIn]) -> list[Decimal]:
    """The rate of each line: the country's own, or the rest of the world's for a country with none."""
    found = _KEPT_RATES.get(country)
    if found is None:
        found = await _RATES.submit(country, None)
    for i, ln in enumerate(lines):
        if ln.tax_category not in found:
            raise ValidationFailed.for_field(
                f"lines[{i}].tax_category", f"has no tax rate for {country}", "unknown_tax_category")
    return [found[ln.tax_category] for ln in lines]


async def _replay_invoice(conn: asyncpg.Pool | asyncpg.Connection, caller: str, key: str,
                          h: str) -> InvoiceRead | None:
    found = await conn.fetchrow("SELECT request_hash FROM invoices WHERE caller = $1 AND idempotency_key = $2",
                                caller, key)
    if found is None:
        return None
    if found["request_hash"] != h:
        raise _key_reused()
    return await _load_invoice(conn, "i.caller = $1 AND i.idempotency_key = $2", caller, key)


@dataclass
class _Issue:
    """One invoice waiting to be written by its series' batch."""

    id: UUID
    caller: str
    key: str
    request_hash: str
    series: str
    source: str
    source_id: str
    customer: dict[str, Any]
    country: str
    currency: str
    priced: list[_Priced]
    issued_at: datetime

    @property
    def subtotal(self) -> int:
        return sum(p.net for p in self.priced)

    @property
    def tax_total(self) -> int:
        return sum(p.tax for p in self.priced)


# One statement: take the series' next number (and its lock), insert the invoice, its lines and its event (whose
# number and display number are filled in here: they exist only now). When the idempotency key is taken (a concurrent
# duplicate committed) the statement fails (invoice_key_taken, migration 1501), so the number it took is given back
# with it, whether it runs on its own or in its batch's savepoint.
_INSERT = f"""
WITH n AS (
    INSERT INTO invoice_counters (kind, series, last_number) VALUES ('invoice', $2::text, 1)
    ON CONFLICT (kind, series) DO UPDATE SET last_number = invoice_counters.last_number + 1
    RETURNING last_number),
inv AS (
    INSERT INTO invoices (id, series, number, source, source_id, owner, customer, country, currency, subtotal,
                          tax_total, total, tax_rounding, caller, idempotency_key, request_hash, issued_at)
    SELECT $1::uuid, $2::text, n.last_number, $3::text, $4::text, $5::text, $6::jsonb, $7::char(2), $8::char(3),
           $9::bigint, $10::bigint, $9::bigint + $10::bigint, $11::text, $12::text, $13::text, $14::text,
           $15::timestamptz FROM n
    ON CONFLICT (caller, idempotency_key) DO NOTHING
    RETURNING id, number),
lines AS (
    INSERT INTO invoice_lines (invoice_id, position, description, quantity, unit_price, tax_category, tax_rate,
                               net, tax, total)
    SELECT inv.id, l.n - 1, l.d, l.q, l.u, l.c, l.r, l.net, l.tax, l.net + l.tax
    FROM inv, unnest($16::text[], $17::int[], $18::bigint[], $19::text[], $20::numeric[], $21::bigint[],
                     $22::bigint[]) WITH ORDINALITY AS l(d, q, u, c, r, net, tax, n)),
e AS ({outbox_insert(
    '$23', f"'{ISSUED}'", '$1', "($24::jsonb || jsonb_build_object('number', inv.number, 'display_number', "
    "$2 || '-' || CASE WHEN inv.number < 1000000 THEN lpad(inv.number::text, 6, '0') ELSE inv.number::text END))",
    "'{}'", source='FROM inv')})
SELECT coalesce((SELECT number FROM inv), invoice_key_taken()) AS number, {NOTIFY}"""


async def _write(conn: asyncpg.Pool | asyncpg.Connection, item: _Issue) -> int:
    """Write ``item``, with its event, in one statement on ``conn`` (a pool: on its own; a connection: in a
    savepoint of its batch): its number. Raises _Duplicate when its key was used (and the number was given back).
    """
    p = item.priced
    try:
        number = await conn.fetchval(
            _INSERT, item.id, item.series, item.source, item.source_id, item.customer.get("id"), item.customer,
            item.country, item.currency, item.subtotal, item.tax_total, TAX_ROUNDING, item.caller, item.key,
            item.request_hash, item.issued_at, [x.line.description for x in p], [x.line.quantity for x in p],
            [x.line.unit_price for x in p], [x.line.tax_category for x in p], [x.rate for x in p],
            [x.net for x in p], [x.tax for x in p], postgres.new_ids(1)[0], _event(item, None))
    except asyncpg.RaiseError as exc:
        if "invoice key taken" in str(exc):
            raise _Duplicate from None
        raise
    return int(number)


def _event(item: _Issue, number: int | None) -> dict[str, Any]:
    """The ``invoice.issued`` payload; without its number (None) for :data:`_INSERT`, which adds it."""
    event = {
        "invoice_id": str(item.id), "series": item.series, "source": item.source, "source_id": item.source_id,
        "order_id": item.source_id if item.source == "order" else None, "customer_id": item.customer.get("id"),
        "currency": item.currency, "subtotal": item.subtotal, "tax_total": item.tax_total,
        "total": item.subtotal + item.tax_total,
    }
    if number is not None:
        event |= {"number": number, "display_number": display_number(item.series, number)}
    return event


async def _write_all(conn: asyncpg.Connection, series: str, batch: list[_Issue]) -> list[int]:
    """Write a whole batch set-based (a handful of statements, whatever its size): the numbers, in order.

    Raises _Duplicate when a key of the batch is taken (a concurrent duplicate committed); any error
    leaves the batch to be written one issue at a time (the caller's savepoint takes this back).
    """
    last = await conn.fetchval(
        "INSERT INTO invoice_counters (kind, series, last_number) VALUES ('invoice', $1, $2) "
        "ON CONFLICT (kind, series) DO UPDATE SET last_number = invoice_counters.last_number + $2 "
        "RETURNING last_number", series, len(batch))
    numbers = list(range(last - len(batch) + 1, last + 1))
    inserted = await conn.fetchval(
        "WITH inv AS (INSERT INTO invoices (id, series, number, source, source_id, owner, customer, country, "
        "currency, subtotal, tax_total, total, tax_rounding, caller, idempotency_key, request_hash, issued_at) "
        "SELECT i, $1, n, s, sid, o, c::jsonb, co, cu, st, tt, st + tt, $2, ca, k, h, at "
        "FROM unnest($3::uuid[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], "
        "$10::text[], $11::bigint[], $12::bigint[], $13::text[], $14::text[], $15::text[], $16::timestamptz[]) "
        "AS u(i, n, s, sid, o, c, co, cu, st, tt, ca, k, h, at) "
        "ON CONFLICT (caller, idempotency_key) DO NOTHING RETURNING 1) SELECT count(*) FROM inv",
        series, TAX_ROUNDING, [b.id for b in batch], numbers, [b.source for b in batch],
        [b.source_id for b in batch], [b.customer.get("id") for b in batch],
        [orjson.dumps(b.customer).decode() for b in batch], [b.country for b in batch],
        [b.currency for b in batch], [b.subtotal for b in batch], [b.tax_total for b in batch],
        [b.caller for b in batch], [b.key for b in batch], [b.request_hash for b in batch],
        [b.issued_at for b in batch])
    if inserted != len(batch):
        raise _Duplicate
    rows = [(b.id, i, p) for b in batch for i, p in enumerate(b.priced)]
    await conn.execute(
        "INSERT INTO invoice_lines (invoice_id, position, description, quantity, unit_price, tax_category, tax_rate, "
        "net, tax, total) SELECT i, pos, d, q, u, c, r, net, tax, net + tax FROM unnest($1::uuid[], $2::int[], "
        "$3::text[], $4::int[], $5::bigint[], $6::text[], $7::numeric[], $8::bigint[], $9::bigint[]) "
        "AS l(i, pos, d, q, u, c, r, net, tax)",
        [r[0] for r in rows], [r[1] for r in rows], [r[2].line.description for r in rows],
        [r[2].line.quantity for r in rows], [r[2].line.unit_price for r in rows],
        [r[2].line.tax_category for r in rows], [r[2].rate for r in rows], [r[2].net for r in rows],
        [r[2].tax for r in rows])
    await emit_many(conn, ISSUED, [(str(b.id), _event(b, n)) for b, n in zip(batch, numbers, strict=True)])
    return numbers


async def _write_series(series: str, batch: list[_Issue]) -> list[int | BaseException | None]:
    """Group commit per series (:class:`~nexus_ray.stores.together.GroupCommit`): the issues of one series
    waiting in this process share one transaction.

    Numbers of a series are taken one transaction at a time (the counter's lock), so with one issue
    per transaction each commit -- one WAL flush -- would bound a series to a few dozen invoices a
    second on a slow disk. Instead, while one transaction of a series runs, the issues that arrive
    queue, and the next transaction takes them all: it moves the counter by the batch's size and
    writes the invoices, their lines and their events set-based, in a handful of statements. If any
    of them cannot be written (a database error, a key a concurrent request already used), that
    attempt is rolled back to its savepoint and the batch is written one issue at a time, each in a
    savepoint of its own: a failing issue takes back its own number and the others go on, so the
    numbers that commit are still consecutive. If the transaction itself fails (the connection is
    lost, the commit fails), every issue of the batch fails and no number was used. Other
    processes' batches queue on the counter's row lock as single issues would. A batch of one (a quiet
    series) is its one statement alone, without a transaction to begin and commit or a savepoint.
    """
    if len(batch) == 1:
        return [await _write_alone(batch[0])]
    return await _write_batch(batch)


async def _write_batch(batch: list[_Issue]) -> list[int | BaseException | None]:
    """Several issues in one transaction: set-based in a savepoint, else one at a time, each in its own."""
    outcomes: list[int | BaseException | None] = []
    async with postgres.transaction() as conn:
        try:
            async with conn.transaction():  # a savepoint: the set-based attempt, all or nothing
                outcomes = list(await _write_all(conn, batch[0].series, batch))
        except (_Duplicate, asyncpg.PostgresError):
            outcomes = []  # one issue of the batch cannot be written: write them one at a time
            for item in batch:
                try:
                    async with conn.transaction():  # a savepoint: a failure takes back this one alone
                        outcomes.append(await _write(conn, item))
                except _Duplicate:
                    outcomes.append(None)
                except (asyncpg.PostgresError, NexusError) as exc:
                    outcomes.append(exc)
    return outcomes


async def _write_alone(item: _Issue) -> int | None:
    """A batch of one (no issue of its series was waiting): its one statement (the invoice, its lines and its
    event), atomic on its own, with no transaction to begin and commit. A duplicate key (None) or a failure
    (raised) fails the statement, so its number is given back as in a batch."""
    try:
        return await _write(await postgres.pool(), item)
    except _Duplicate:
        return None


#: Shielded: a caller that stops waiting does not stop its issue (a retry with its key replays it).
_batches: GroupCommit[str, _Issue, int | None] = GroupCommit(_write_series)


async def tax_quote(*, country: str, currency: str, lines: list[LineIn]) -> TaxQuote:
    """The subtotal, tax and total an invoice of ``lines`` would have, without issuing one.

    The same rates and per-line rounding as :func:`issue_invoice`, so a checkout charges exactly what
    the invoice it issues afterwards will say (unless a rate changes in between).
    """
    nets = [ln.quantity * ln.unit_price for ln in lines]
    taxes = [line_tax(net, rate) for net, rate in zip(nets, await _rates(country, lines), strict=True)]
    return TaxQuote(country=country, currency=currency, subtotal=sum(nets), tax_total=sum(taxes),
                    total=sum(nets) + sum(taxes), tax_rounding=TAX_ROUNDING)


async def issue_invoice(
    *, caller: str, series: str, source: str, source_id: str, customer: dict[str, Any], country: str,
    currency: str, lines: list[LineIn], idempotency_key: str | None,
) -> tuple[InvoiceRead, bool]:
    """Issue an invoice with the next number of ``series``: (the invoice, whether it was a replay)."""
    if idempotency_key is None:
        raise _key_missing()
    h = request_hash("invoice", {
        "series": series, "source": source, "source_id": source_id, "customer": customer, "country": country,
        "currency": currency, "lines": [ln.model_dump() for ln in lines]})
    # A retry is not looked up first: its insert finds the key taken (the number given back) and it is answered
    # below. Only a retry that cannot be priced now is looked up before it is refused.
    try:
        rates = await _rates(country, lines)
    except NexusError:
        if (replay := await _replay_invoice(await postgres.pool(), caller, idempotency_key, h)) is not None:
            return replay, True
        raise
    priced = []
    for ln, rate in zip(lines, rates, strict=True):
        net = ln.quantity * ln.unit_price
        priced.append(_Priced(ln, rate, net, line_tax(net, rate)))
    item = _Issue(id=uuid.uuid4(), caller=caller, key=idempotency_key, request_hash=h, series=series, source=source,
                  source_id=source_id, customer=customer, country=country, currency=currency, priced=priced,
                  issued_at=datetime.now(UTC))
    number = await _batches.submit(series, item)
    if number is None:  # the key was used: a retry, or a concurrent request that committed first
        replay = await _replay_invoice(await postgres.pool(), caller, idempotency_key, h)
        assert replay is not None
        return replay, True
    lines_read = [(i, p.line.description, p.line.quantity, p.line.unit_price, p.line.tax_category, p.rate, p.net,
                   p.tax) for i, p in enumerate(priced)]
    row = {"id": item.id, "series": series, "number": number, "source": source, "source_id": source_id,
           "customer": customer, "country": country, "currency": currency, "subtotal": item.subtotal,
           "tax_total": item.tax_total, "total": item.subtotal + item.tax_total, "tax_rounding": TAX_ROUNDING,
           "issued_at": item.issued_at}
    return _invoice_read(row, [dict(zip(("position", "description", "quantity", "unit_price", "tax_category",
                                         "tax_rate", "net", "tax"), ln, strict=True)) | {"total": ln[6] + ln[7]}
                               for ln in lines_read], 0), False


# -- credit notes --------------------------------------------------------------------------------------------------

_CREDIT_COLUMNS = ("c.id, c.invoice_id, c.series, c.number, c.reason, c.currency, c.subtotal, c.tax_total, "
                   "c.total, c.issued_at, i.owner, i.number AS invoice_number")


async def _load_credit_note(conn: asyncpg.Connection | asyncpg.Pool, where: str,
                            *args: Any) -> tuple[CreditNoteRead, str | None] | None:
    row = await conn.fetchrow(
        f"SELECT {_CREDIT_COLUMNS} FROM invoice_credit_notes c JOIN invoices i ON i.id = c.invoice_id WHERE {where}",
        *args)
    if row is None:
        return None
    lines = await conn.fetch(
        "SELECT line, description, quantity, unit_price, tax_rate, net, tax, total FROM invoice_credit_note_lines "
        "WHERE credit_note_id = $1 ORDER BY line", row["id"])
    note = CreditNoteRead(
        id=row["id"], invoice_id=row["invoice_id"], invoice_number=display_number(row["series"],
                                                                                  row["invoice_number"]),
        series=row["series"], number=row["number"],
        display_number=display_number(row["series"], row["number"], credit=True), reason=row["reason"],
        currency=row["currency"].strip(),
        lines=[CreditNoteLineRead(line=ln["line"], description=ln["description"], quantity=ln["quantity"],
                                  unit_price=ln["unit_price"], tax_rate=rate_text(ln["tax_rate"]), net=ln["net"],
                                  tax=ln["tax"], total=ln["total"]) for ln in lines],
        subtotal=row["subtotal"], tax_total=row["tax_total"], total=row["total"], issued_at=row["issued_at"],
        pdf_url=f"{API}/credit-notes/{row['id']}/pdf")
    return note, row["owner"]


async def get_credit_note(*, credit_note_id: UUID, caller: str, privileged: bool) -> CreditNoteRead:
    """A credit note, for the invoice's customer or an administrator; 404 for anyone else."""
    found = await _load_credit_note(await postgres.pool(), "c.id = $1", credit_note_id)
    if found is None or not _visible(found[1], caller, privileged):
        raise NotFound(f"credit note {credit_note_id} not found")
    return found[0]


async def list_credit_notes(*, invoice_id: UUID, caller: str, privileged: bool) -> list[CreditNoteRead]:
    """The credit notes of an invoice, oldest first (an invoice has few)."""
    await get_invoice(invoice_id=invoice_id, caller=caller, privileged=privileged)
    pg = await postgres.pool()
    ids = await pg.fetch("SELECT id FROM invoice_credit_notes WHERE invoice_id = $1 ORDER BY number", invoice_id)
    notes = []
    for r in ids:
        found = await _load_credit_note(pg, "c.id = $1", r["id"])
        if found is not None:
            notes.append(found[0])
    return notes


async def _replay_credit(conn: asyncpg.Pool | asyncpg.Connection, caller: str, key: str,
                         h: str) -> CreditNoteRead | None:
    found = await conn.fetchrow(
        "SELECT request_hash FROM invoice_credit_notes WHERE caller = $1 AND idempotency_key = $2", caller, key)
    if found is None:
        return None
    if found["request_hash"] != h:
        raise _key_reused()
    note = await _load_credit_note(conn, "c.caller = $1 AND c.idempotency_key = $2", caller, key)
    assert note is not None
    return note[0]


@dataclass(frozen=True)
class _Credit:
    line: int
    description: str
    quantity: int
    unit_price: int
    rate: Decimal
    net: int
    tax: int


def _credits(invoice_lines: list[asyncpg.Record], credited: dict[int, asyncpg.Record],
             requested: list[tuple[int, int]] | None) -> list[_Credit]:
    """The lines of a credit note, each within what is left of its invoice line (409/422 naming the field)."""
    by_position = {ln["position"]: ln for ln in invoice_lines}

    def left(pos: int) -> tuple[int, int, int]:
        done = credited.get(pos)
        ln = by_position[pos]
        if done is None:
            return ln["quantity"], ln["net"], ln["tax"]
        return ln["quantity"] - done["quantity"], ln["net"] - done["net"], ln["tax"] - done["tax"]

    if requested is None:
        requested = [(pos, left(pos)[0]) for pos in sorted(by_position) if left(pos)[0] > 0]
        if not requested:
            raise Conflict("the invoice has been credited in full", extra={"code": "nothing_left_to_credit"})
    out = []
    seen = set()
    for i, (pos, quantity) in enumerate(requested):
        if pos not in by_position:
            raise ValidationFailed.for_field(f"lines[{i}].line", "is not a line of the invoice", "unknown_line")
        if pos in seen:
            raise ValidationFailed.for_field(f"lines[{i}].line", "is named twice", "duplicate_line")
        seen.add(pos)
        qty_left, net_left, tax_left = left(pos)
        if quantity > qty_left:
            raise Conflict(f"line {pos} has {qty_left} units left to credit", extra={
                "code": "exceeds_remaining", "errors": [{
                    "field": f"lines[{i}].quantity", "message": f"at most {qty_left} left to credit",
                    "type": "exceeds_remaining"}]})
        ln = by_position[pos]
        if quantity == qty_left:  # the last units take exactly what is left: credits never exceed the line
            net, tax = net_left, tax_left
        else:
            net = quantity * ln["unit_price"]
            tax = min(line_tax(net, ln["tax_rate"]), tax_left)
        out.append(_Credit(pos, ln["description"], quantity, ln["unit_price"], ln["tax_rate"], net, tax))
    return out


async def credit_note(
    *, caller: str, invoice_id: UUID, reason: str, lines: list[tuple[int, int]] | None, idempotency_key: str | None,
) -> tuple[CreditNoteRead, bool]:
    """Credit ``lines`` ((position, quantity); None: all that is left) of an invoice: (the note, replayed)."""
    if idempotency_key is None:
        raise _key_missing()
    h = request_hash("credit", {"invoice_id": str(invoice_id), "reason": reason, "lines": lines})
    pg = await postgres.pool()
    replay = await _replay_credit(pg, caller, idempotency_key, h)
    if replay is not None:
        return replay, True
    note_id = uuid.uuid4()
    try:
        async with postgres.transaction() as conn:
            # The invoice's row lock serialises its credit notes (a lock is not an update: the trigger allows it).
            inv = await conn.fetchrow(
                "SELECT id, series, currency, total, source, source_id, owner FROM invoices WHERE id = $1 FOR UPDATE",
                invoice_id)
            if inv is None:
                raise NotFound(f"invoice {invoice_id} not found")
            # A request with this key that committed while we waited for the lock: replay it, do not refuse it.
            replay = await _replay_credit(conn, caller, idempotency_key, h)
            if replay is not None:
                return replay, True
            invoice_lines = list(await conn.fetch(
                "SELECT position, description, quantity, unit_price, tax_rate, net, tax FROM invoice_lines "
                "WHERE invoice_id = $1 ORDER BY position", invoice_id))
            credited = {r["line"]: r for r in await conn.fetch(
                "SELECT line, sum(quantity)::int AS quantity, sum(net)::bigint AS net, sum(tax)::bigint AS tax "
                "FROM invoice_credit_note_lines WHERE invoice_id = $1 GROUP BY line", invoice_id)}
            credits = _credits(invoice_lines, credited, lines)
            subtotal = sum(c.net for c in credits)
            tax_total = sum(c.tax for c in credits)
            if subtotal + tax_total <= 0:
                raise Conflict("the lines credited are worth nothing", extra={"code": "nothing_to_credit"})
            number = await conn.fetchval(_NEXT_NUMBER, "credit_note", inv["series"])
            row = await conn.fetchrow(
                "INSERT INTO invoice_credit_notes (id, invoice_id, series, number, reason, currency, subtotal, "
                "tax_total, total, caller, idempotency_key, request_hash, issued_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
                "ON CONFLICT (caller, idempotency_key) DO NOTHING RETURNING id",
                note_id, invoice_id, inv["series"], number, reason, inv["currency"], subtotal, tax_total,
                subtotal + tax_total, caller, idempotency_key, h, datetime.now(UTC))
            if row is None:
                raise _Duplicate
            await conn.executemany(
                "INSERT INTO invoice_credit_note_lines (credit_note_id, invoice_id, line, description, quantity, "
                "unit_price, tax_rate, net, tax, total) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                [(note_id, invoice_id, c.line, c.description, c.quantity, c.unit_price, c.rate, c.net, c.tax,
                  c.net + c.tax) for c in credits])
            credited_total = int(await conn.fetchval(
                "SELECT sum(total) FROM invoice_credit_notes WHERE invoice_id = $1", invoice_id))
            await emit(conn, CREDITED, {
                "invoice_id": str(invoice_id), "credit_note_id": str(note_id), "series": inv["series"],
                "number": number, "display_number": display_number(inv["series"], number, credit=True),
                "order_id": inv["source_id"] if inv["source"] == "order" else None, "customer_id": inv["owner"],
                "currency": inv["currency"].strip(), "total": subtotal + tax_total, "credited": credited_total,
                "status": "credited" if credited_total >= inv["total"] else "issued",
            }, key=str(invoice_id))
            found = await _load_credit_note(conn, "c.id = $1", note_id)
    except _Duplicate:
        replay = await _replay_credit(pg, caller, idempotency_key, h)
        assert replay is not None
        return replay, True
    assert found is not None
    return found[0], False


# -- tax rates -----------------------------------------------------------------------------------------------------


def _rate_read(row: asyncpg.Record) -> TaxRateRead:
    return TaxRateRead(country=row["country"], category=row["category"], rate=rate_text(row["rate"]),
                       updated_at=row["updated_at"])


async def list_tax_rates(*, country: str | None, page: PageRequest) -> Page[TaxRateRead]:
    pg = await postgres.pool()
    after = page.after
    if after is not None and (len(after) != 2 or not all(isinstance(v, str) for v in after)):
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list")
    rows = await pg.fetch(
        "SELECT country, category, rate, updated_at FROM invoice_tax_rates "
        "WHERE ($1::text IS NULL OR country = $1) AND ($2::text IS NULL OR (country, category) > ($2, $3)) "
        "ORDER BY country, category LIMIT $4",
        country, after[0] if after else None, after[1] if after else None, page.fetch_limit)
    return page.of(rows, key=lambda r: (r["country"], r["category"]), item=_rate_read)


async def set_tax_rate(*, country: str, category: str, rate: Decimal) -> TaxRateRead:
    """Set the rate of (country, category) for invoices issued from now on (issued ones keep theirs)."""
    pg = await postgres.pool()
    row = await pg.fetchrow(
        "WITH s AS (INSERT INTO invoice_tax_rates (country, category, rate) VALUES ($1, $2, $3) "
        "ON CONFLICT (country, category) DO UPDATE SET rate = EXCLUDED.rate, updated_at = now() "
        f"RETURNING country, category, rate, updated_at) SELECT s.*, {kept.notify_sql(_KEPT_RATES.topic)} FROM s",
        country, category, rate)
    _KEPT_RATES.drop()  # this process prices with it at once; the others when the notification reaches them
    assert row is not None
    return _rate_read(row)
