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
number (validation, rates, totals, the idempotency look-up) runs before the lock is taken.
Different series never wait on each other.

Tax
---
Rates come from ``invoice_tax_rates`` by (country, tax category) and are copied onto each line.
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
from nexus_ray.exceptions import Conflict, NotFound, ValidationFailed
from nexus_ray.stores import postgres
from nexus_ray.stores.events import emit

from .models import (
    CreditNoteLineRead,
    CreditNoteRead,
    InvoiceLineRead,
    InvoiceRead,
    LineIn,
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
    text = format(rate.normalize(), "f")
    return text


def line_tax(net: int, rate: Decimal) -> int:
    """The tax of one line: ``net * rate / 100`` rounded half up to the minor unit (exact decimals)."""
    return int((Decimal(net) * rate / 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def display_number(series: str, number: int, *, credit: bool = False) -> str:
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
    ids = await pg.fetch(
        "SELECT id FROM invoices WHERE ($1::text IS NULL OR owner = $1) AND ($2::uuid IS NULL OR id > $2) "
        "ORDER BY id LIMIT $3", owner, after, page.fetch_limit)
    items = []
    for r in ids:
        found = await _load_invoice(pg, "i.id = $1", r["id"])
        if found is not None:
            items.append(found)
    return page.of(items, key=lambda i: (str(i.id),))


# -- issuing -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Priced:
    line: LineIn
    rate: Decimal
    net: int
    tax: int


async def _rates(conn: asyncpg.Pool | asyncpg.Connection, country: str, lines: list[LineIn]) -> list[Decimal]:
    rows = await conn.fetch("SELECT category, rate FROM invoice_tax_rates WHERE country = $1 AND category = ANY($2)",
                            country, sorted({ln.tax_category for ln in lines}))
    found = {r["category"]: r["rate"] for r in rows}
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
    pg = await postgres.pool()
    replay = await _replay_invoice(pg, caller, idempotency_key, h)
    if replay is not None:
        return replay, True
    priced = []
    for ln, rate in zip(lines, await _rates(pg, country, lines), strict=True):
        net = ln.quantity * ln.unit_price
        priced.append(_Priced(ln, rate, net, line_tax(net, rate)))
    subtotal = sum(p.net for p in priced)
    tax_total = sum(p.tax for p in priced)
    invoice_id = uuid.uuid4()
    owner = customer.get("id")
    try:
        async with postgres.transaction() as conn:
            number = await conn.fetchval(_NEXT_NUMBER, "invoice", series)  # the series' lock, held to commit
            row = await conn.fetchrow(
                "INSERT INTO invoices (id, series, number, source, source_id, owner, customer, country, currency, "
                "subtotal, tax_total, total, tax_rounding, caller, idempotency_key, request_hash, issued_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) "
                "ON CONFLICT (caller, idempotency_key) DO NOTHING RETURNING issued_at",
                invoice_id, series, number, source, source_id, owner, customer, country, currency, subtotal,
                tax_total, subtotal + tax_total, TAX_ROUNDING, caller, idempotency_key, h, datetime.now(UTC))
            if row is None:
                raise _Duplicate
            await conn.execute(
                "INSERT INTO invoice_lines (invoice_id, position, description, quantity, unit_price, tax_category, "
                "tax_rate, net, tax, total) "
                "SELECT $1, n - 1, d, q, u, c, r, net, tax, net + tax FROM unnest($2::text[], $3::int[], "
                "$4::bigint[], $5::text[], $6::numeric[], $7::bigint[], $8::bigint[]) "
                "WITH ORDINALITY AS l(d, q, u, c, r, net, tax, n)",
                invoice_id, [p.line.description for p in priced], [p.line.quantity for p in priced],
                [p.line.unit_price for p in priced], [p.line.tax_category for p in priced],
                [p.rate for p in priced], [p.net for p in priced], [p.tax for p in priced])
            await emit(conn, ISSUED, {
                "invoice_id": str(invoice_id), "series": series, "number": number,
                "display_number": display_number(series, number), "source": source, "source_id": source_id,
                "order_id": source_id if source == "order" else None, "customer_id": owner,
                "currency": currency, "subtotal": subtotal, "tax_total": tax_total, "total": subtotal + tax_total,
            }, key=str(invoice_id))
            invoice = await _load_invoice(conn, "i.id = $1", invoice_id)
    except _Duplicate:
        replay = await _replay_invoice(pg, caller, idempotency_key, h)
        assert replay is not None
        return replay, True
    assert invoice is not None
    return invoice, False


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
        "INSERT INTO invoice_tax_rates (country, category, rate) VALUES ($1, $2, $3) "
        "ON CONFLICT (country, category) DO UPDATE SET rate = EXCLUDED.rate, updated_at = now() "
        "RETURNING country, category, rate, updated_at", country, category, rate)
    assert row is not None
    return _rate_read(row)
