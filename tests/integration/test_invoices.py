"""invoice-gen on the real stores: gap-free numbering under concurrency (a failure in the middle leaves no gap),
per-line tax rounding, immutability enforced by the database, credit-note limits, idempotency, the PDF."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pdfread
import pytest

from nexus_ray.deployments.kit.calls import call
from nexus_ray.exceptions import Conflict, ValidationFailed

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("client")]

API = "/commerce/v1/invoices"
SERVICE = "invoice-gen"


@pytest.fixture(scope="module")
def admin(bearer):
    return bearer("commerce:invoices:*", subject="billing-ops")


def series() -> str:
    return "T" + uuid.uuid4().hex[:8].upper()


def line(unit_price=1000, quantity=1, category="standard", description="Widget"):
    return {"description": description, "quantity": quantity, "unit_price": unit_price, "tax_category": category}


async def issue(*, lines, series_name=None, customer=None, country="DE", key=None, order_id=None, **extra):
    return await call(SERVICE, "issue_invoice", caller="order-processor", series=series_name or series(),
                      order_id=order_id or f"ord-{uuid.uuid4().hex[:10]}",
                      customer=customer or {"id": "cust-1", "name": "Ada Lovelace"}, country=country,
                      currency="EUR", lines=lines, idempotency_key=key or uuid.uuid4().hex, **extra)


async def a_rate(client, admin, rate: str, country: str = "DE") -> str:
    """A tax category of its own with ``rate`` percent (tests do not change the seeded rates)."""
    category = "t" + uuid.uuid4().hex[:8]
    r = await client.put(f"{API}/tax-rates/{country}/{category}", json={"rate": rate}, headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["rate"] == rate
    return category


# -- numbering -------------------------------------------------------------------------------------------------


async def inject_fault(pg) -> None:  # type: ignore[no-untyped-def]
    """A fault after the number is taken and the invoice written: recording the event of an issue whose source id
    starts with ``fault-`` fails."""
    await pg.execute("""
        CREATE OR REPLACE FUNCTION test_invoice_fault() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.topic = 'invoice.issued' AND NEW.payload->>'source_id' LIKE 'fault-%' THEN
                RAISE EXCEPTION 'injected fault';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER test_invoice_fault BEFORE INSERT ON outbox
            FOR EACH ROW EXECUTE FUNCTION test_invoice_fault();""")


async def remove_fault(pg) -> None:  # type: ignore[no-untyped-def]
    await pg.execute("DROP TRIGGER test_invoice_fault ON outbox; DROP FUNCTION test_invoice_fault();")


async def test_a_lone_issue_that_fails_gives_its_number_back():
    """An issue with no other of its series waiting is written in a transaction of its own: when it fails after
    taking its number, the number is not used, and the next issue of the series takes it."""
    from nexus_ray.stores import postgres

    name = series()
    pg = await postgres.pool()
    await inject_fault(pg)
    try:
        with pytest.raises(asyncpg.RaiseError):
            await issue(series_name=name, lines=[line()], order_id="fault-alone")
    finally:
        await remove_fault(pg)
    assert await pg.fetchval("SELECT count(*) FROM invoices WHERE series = $1", name) == 0
    assert (await issue(series_name=name, lines=[line()])).number == 1


async def test_200_concurrent_invoices_are_numbered_1_to_200_and_failures_in_the_middle_leave_no_gap():
    from nexus_ray.stores import postgres

    name = series()
    pg = await postgres.pool()
    await inject_fault(pg)
    try:
        jobs = [issue(series_name=name, lines=[line(100 + i)]) for i in range(200)]
        for i in range(10):  # spread among the good ones
            jobs.insert(i * 20 + 7, issue(series_name=name, lines=[line()], order_id=f"fault-{i}"))
        results = await asyncio.gather(*jobs, return_exceptions=True)
    finally:
        await remove_fault(pg)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 10 and all(isinstance(f, asyncpg.RaiseError) for f in failed), failed[:1]
    numbers = sorted(r.number for r in results if not isinstance(r, BaseException))
    assert numbers == list(range(1, 201))  # no gap, no duplicate
    assert await pg.fetchval("SELECT last_number FROM invoice_counters WHERE kind = 'invoice' AND series = $1",
                             name) == 200
    # The next one continues the series.
    nxt = await issue(series_name=name, lines=[line()])
    assert nxt.number == 201 and nxt.display_number == f"{name}-000201"


async def test_retries_among_concurrent_issues_replay_their_invoice_and_leave_no_gap():
    """Forty issues of one series at once, ten of them sent again with their key in the same moment: every retry is
    answered with its invoice, the forty are numbered 1 to 40, and the counter stands at 40 (a retry's insert finds
    its key taken and gives its number back)."""
    from nexus_ray.stores import postgres

    name = series()
    firsts = [await issue(series_name=name, lines=[line(100 + i)], key=f"k-{name}-{i}", order_id=f"ord-{name}-{i}")
              for i in range(10)]
    jobs = [issue(series_name=name, lines=[line(200 + i)]) for i in range(30)]
    for i in range(10):  # the same requests again, spread among the new ones
        jobs.insert(i * 3 + 1, issue(series_name=name, lines=[line(100 + i)], key=f"k-{name}-{i}",
                                     order_id=f"ord-{name}-{i}"))
    results = await asyncio.gather(*jobs)
    again = [r for r in results if r.source_id.startswith(f"ord-{name}-")]
    assert sorted((r.id, r.number) for r in again) == sorted((f.id, f.number) for f in firsts)
    assert sorted(r.number for r in results if r not in again) == list(range(11, 41))
    pg = await postgres.pool()
    assert await pg.fetchval("SELECT last_number FROM invoice_counters WHERE kind = 'invoice' AND series = $1",
                             name) == 40


async def test_series_count_on_their_own_and_an_event_is_emitted_with_the_invoice_in_one_statement():
    from nexus_ray.stores import postgres

    a, b = series(), series()
    first_key = uuid.uuid4().hex
    first = await issue(series_name=a, lines=[line()], key=first_key)
    assert (await issue(series_name=b, lines=[line()])).number == 1
    assert (await issue(series_name=a, lines=[line()])).number == 2
    pg = await postgres.pool()
    payload = await pg.fetchval("SELECT payload FROM outbox WHERE topic = 'invoice.issued' AND key = $1",
                                str(first.id))
    assert payload["number"] == 1 and payload["order_id"] == first.order_id and payload["total"] == first.total
    assert payload["display_number"] == first.display_number == f"{a}-000001"
    # A lone retry (its issue is one statement on its own) replays the invoice and gives its number back.
    again = await issue(series_name=a, lines=[line()], key=first_key, order_id=first.order_id)
    assert (again.id, again.number) == (first.id, 1)
    assert (await issue(series_name=a, lines=[line()])).number == 3
    # The event's display number, made where the number is taken, reads as the invoice's past six digits too.
    await pg.execute("UPDATE invoice_counters SET last_number = 999998 WHERE kind = 'invoice' AND series = $1", b)
    for number in (999_999, 1_000_000):
        issued = await issue(series_name=b, lines=[line()])
        payload = await pg.fetchval("SELECT payload FROM outbox WHERE topic = 'invoice.issued' AND key = $1",
                                    str(issued.id))
        assert (issued.number, payload["display_number"]) == (number, issued.display_number)
    assert issued.display_number == f"{b}-1000000"


# -- tax ---------------------------------------------------------------------------------------------------------


async def test_tax_is_rounded_half_up_per_line_and_the_rule_is_stated(client, admin):
    quarter = await a_rate(client, admin, "25")
    odd = await a_rate(client, admin, "7.7")
    # 10 at 25% = 2.5 -> 3 per line; rounded on the sum the three lines would owe 7.5 -> 8, not 9.
    # 999 at 7.7% = 76.923 -> 77; 1 at 7.7% = 0.077 -> 0; 7 at 7.7% = 0.539 -> 1.
    invoice = await issue(lines=[line(10, 1, quarter), line(10, 1, quarter), line(5, 2, quarter),
                                 line(333, 3, odd), line(1, 1, odd), line(7, 1, odd)])
    assert [(ln.net, ln.tax) for ln in invoice.lines] == [(10, 3), (10, 3), (10, 3), (999, 77), (1, 0), (7, 1)]
    assert [ln.tax_rate for ln in invoice.lines] == ["25", "25", "25", "7.7", "7.7", "7.7"]
    assert (invoice.subtotal, invoice.tax_total, invoice.total) == (1037, 87, 1124)
    assert {(t.tax_rate, t.net, t.tax) for t in invoice.tax_summary} == {("25", 30, 9), ("7.7", 1007, 78)}
    assert "per line" in invoice.tax_rounding and "half up" in invoice.tax_rounding
    # A later rate change leaves the issued invoice as it was.
    await a_rate(client, admin, "30")
    r = await client.put(f"{API}/tax-rates/DE/{quarter}", json={"rate": "30"}, headers=admin)
    assert r.status_code == 200
    r = await client.get(f"{API}/invoices/{invoice.id}", headers=admin)
    assert r.json()["tax_total"] == 87 and r.json()["lines"][0]["tax_rate"] == "25"


async def test_rates_are_kept_until_a_change_of_them_is_notified_and_one_set_here_prices_at_once(client, admin,
                                                                                                  until):
    from nexus_ray.deployments.commerce.invoices import service
    from nexus_ray.deployments.commerce.invoices.models import LineIn
    from nexus_ray.stores import kept, postgres

    category = await a_rate(client, admin, "10")

    async def tax() -> int:
        quote = await service.tax_quote(country="DE", currency="EUR", lines=[
            LineIn(description="Widget", quantity=1, unit_price=1000, tax_category=category)])
        return quote.tax_total

    async def kept_here() -> bool:  # priced once the process listens: its read is then kept
        return await tax() == 100 and category in (service._KEPT_RATES.get("DE") or {})
    await until(kept_here, within_s=20)
    pg = await postgres.pool()
    change = "UPDATE invoice_tax_rates SET rate = $2 WHERE country = 'DE' AND category = $1"
    # A change that no process was told of is not seen: the rates come from what this process kept.
    await pg.execute(change, category, 20)
    assert await tax() == 100 and (await issue(lines=[line(1000, 1, category)])).tax_total == 100
    # Another process sets a rate: its change notifies when it commits, and this process prices with it from
    # when the notification arrives.
    await pg.execute(f"WITH c AS ({change} RETURNING 1) SELECT {kept.notify_sql('invoice_tax_rates')} FROM c",
                     category, 30)

    async def taxed_at_30() -> bool:
        return await tax() == 300
    await until(taxed_at_30, within_s=10)
    assert (await issue(lines=[line(1000, 1, category)])).tax_total == 300
    # A rate set through this process's API prices its next invoice at once.
    r = await client.put(f"{API}/tax-rates/DE/{category}", json={"rate": "40"}, headers=admin)
    assert r.status_code == 200
    assert (await issue(lines=[line(1000, 1, category)])).tax_total == 400


async def test_an_unknown_tax_category_or_bad_line_is_a_422_naming_the_field():
    with pytest.raises(ValidationFailed) as err:
        await issue(lines=[line(), line(category="nonexistent")])
    assert err.value.extra["errors"][0]["field"] == "lines[1].tax_category"
    # A country with no rates of its own is taxed as the rest of the world (ZZ: zero-rated as seeded).
    export = await issue(country="JP", lines=[line(1000, 2), line(500, 1, "digital")])
    assert (export.tax_total, [ln.tax_rate for ln in export.lines]) == (0, ["0", "0"])
    with pytest.raises(ValidationFailed) as err:
        await issue(country="JP", lines=[line(category="nonexistent")])
    assert err.value.extra["errors"][0]["field"] == "lines[0].tax_category"
    with pytest.raises(ValidationFailed) as err:
        await issue(lines=[line(unit_price=10.5)])
    assert err.value.extra["errors"][0]["field"] == "lines[0].unit_price"


# -- immutability, idempotency ---------------------------------------------------------------------------------------


async def test_an_issued_invoice_cannot_be_changed_in_the_database():
    from nexus_ray.stores import postgres

    invoice = await issue(lines=[line()])
    pg = await postgres.pool()
    for sql in ("UPDATE invoices SET total = 1, subtotal = 1, tax_total = 0 WHERE id = $1",
                "DELETE FROM invoices WHERE id = $1",
                "UPDATE invoice_lines SET unit_price = 1 WHERE invoice_id = $1"):
        with pytest.raises(asyncpg.RestrictViolationError, match="immutable"):
            await pg.execute(sql, invoice.id)
    assert await pg.fetchval("SELECT total FROM invoices WHERE id = $1", invoice.id) == invoice.total


async def test_issuing_is_idempotent_per_key_and_admin_only_over_http(client, admin, bearer):
    body = {"series": series(), "source": "manual", "source_id": "adj-1", "country": "FR", "currency": "EUR",
            "customer": {"id": "cust-9", "name": "Grace"}, "lines": [line(2000, 1, "reduced")]}
    key = uuid.uuid4().hex
    first = await client.post(f"{API}/invoices", json=body, headers={**admin, "Idempotency-Key": key})
    assert first.status_code == 201, first.text
    assert first.json()["tax_total"] == 110 and first.json()["number"] == 1  # 5.5% of 20.00
    again = await client.post(f"{API}/invoices", json=body, headers={**admin, "Idempotency-Key": key})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    other = await client.post(f"{API}/invoices", json={**body, "source_id": "adj-2"},
                              headers={**admin, "Idempotency-Key": key})
    assert other.status_code == 409 and other.json()["errors"][0]["field"] == "idempotency_key"
    # Concurrent retries with one key: one invoice, one number.
    key2 = uuid.uuid4().hex
    results = await asyncio.gather(*[client.post(f"{API}/invoices", json=body, headers={**admin,
                                                                                       "Idempotency-Key": key2})
                                     for _ in range(8)])
    assert {r.status_code for r in results} == {201} and len({r.json()["id"] for r in results}) == 1
    assert results[0].json()["number"] == 2
    user = bearer("commerce:invoices:read", "commerce:invoices:write", subject="cust-9")
    r = await client.post(f"{API}/invoices", json=body, headers={**user, "Idempotency-Key": uuid.uuid4().hex})
    assert r.status_code == 403


# -- credit notes -----------------------------------------------------------------------------------------------------


async def test_credit_notes_never_exceed_what_is_left(client, admin):
    half = await a_rate(client, admin, "50")
    invoice = await issue(lines=[line(1, 3, half), line(1000, 2)])  # line 0: net 3, tax 1.5 -> 2; line 1: 2000 + 380
    assert invoice.total == 3 + 2 + 2000 + 380
    credit = "credit_note"
    one = await call(SERVICE, credit, caller="ops", invoice_id=invoice.id, idempotency_key="c1", reason="damaged",
                     lines=[{"line": 0, "quantity": 1}])
    assert (one.subtotal, one.tax_total) == (1, 1)  # tax 0.5 -> 1
    assert one.number >= 1 and one.display_number.startswith(f"CN-{invoice.series}-")
    with pytest.raises(Conflict) as err:
        await call(SERVICE, credit, caller="ops", invoice_id=invoice.id, idempotency_key="c2", reason="x",
                   lines=[{"line": 1, "quantity": 1}, {"line": 0, "quantity": 3}])
    assert err.value.extra["errors"][0]["field"] == "lines[1].quantity"
    with pytest.raises(ValidationFailed) as err:
        await call(SERVICE, credit, caller="ops", invoice_id=invoice.id, idempotency_key="c2b", reason="x",
                   lines=[{"line": 7, "quantity": 1}])
    assert err.value.extra["errors"][0]["field"] == "lines[0].line"
    two = await call(SERVICE, credit, caller="ops", invoice_id=invoice.id, idempotency_key="c3", reason="x",
                     lines=[{"line": 0, "quantity": 1}])
    assert (two.subtotal, two.tax_total) == (1, 1)  # 0.5 -> 1, still within the line's 2
    # The rest of the invoice: the last unit of line 0 takes exactly what is left of its tax (0), then line 1.
    rest = await call(SERVICE, credit, caller="ops", invoice_id=invoice.id, idempotency_key="c4", reason="return")
    assert [(ln.line, ln.quantity, ln.net, ln.tax) for ln in rest.lines] == [(0, 1, 1, 0), (1, 2, 2000, 380)]
    assert one.total + two.total + rest.total == invoice.total
    assert rest.number == two.number + 1 == one.number + 2  # the credit notes' own gap-free series
    # Replays, and nothing left to credit.
    assert (await call(SERVICE, credit, caller="ops", invoice_id=invoice.id, idempotency_key="c4",
                       reason="return")).id == rest.id
    with pytest.raises(Conflict) as err:
        await call(SERVICE, credit, caller="ops", invoice_id=invoice.id, idempotency_key="c5", reason="again")
    assert err.value.extra["code"] == "nothing_left_to_credit"
    r = await client.get(f"{API}/invoices/{invoice.id}", headers=admin)
    assert r.json()["status"] == "credited" and r.json()["credited"] == invoice.total
    notes = await client.get(f"{API}/invoices/{invoice.id}/credit-notes", headers=admin)
    assert [n["id"] for n in notes.json()] == [str(one.id), str(two.id), str(rest.id)]


async def test_concurrent_full_credits_credit_once(client, admin):
    from nexus_ray.stores import postgres

    invoice = await issue(lines=[line(500, 4)])
    results = await asyncio.gather(*[
        client.post(f"{API}/invoices/{invoice.id}/credit-notes", json={"reason": "cancel", "idempotency_key": f"k{i}"},
                    headers=admin) for i in range(6)])
    assert sorted(r.status_code for r in results) == [201] + [409] * 5, [r.text for r in results]
    pg = await postgres.pool()
    assert await pg.fetchval("SELECT sum(total) FROM invoice_credit_notes WHERE invoice_id = $1",
                             invoice.id) == invoice.total
    assert await pg.fetchval("SELECT count(*) FROM outbox WHERE topic = 'invoice.credited' AND key = $1",
                             str(invoice.id)) == 1


# -- PDF ------------------------------------------------------------------------------------------------------------


async def test_the_pdf_is_valid_deterministic_and_its_customers_alone(client, admin, bearer):
    invoice = await issue(customer={"id": "cust-pdf", "name": "Émile (Zola)", "address": ["1 Rue X", "Paris"]},
                          country="FR", lines=[line(1999, 2, description="Book: Germinal"), line(500, 1, "reduced")])
    owner = bearer("commerce:invoices:read", subject="cust-pdf")
    r = await client.get(f"{API}/invoices/{invoice.id}/pdf", headers=owner)
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf"
    shown = pdfread.texts(r.content)
    assert f"No. {invoice.display_number}" in shown
    assert "Émile (Zola)" in shown and "Book: Germinal" in shown
    assert "39.98 EUR" in shown  # 2 x 19.99 net
    assert f"{invoice.total / 100:.2f} EUR" in shown
    assert any("rounded half up" in t for t in shown)
    again = await client.get(f"{API}/invoices/{invoice.id}/pdf", headers=owner)
    assert again.content == r.content
    other = bearer("commerce:invoices:read", subject="someone-else")
    assert (await client.get(f"{API}/invoices/{invoice.id}/pdf", headers=other)).status_code == 404
    assert (await client.get(f"{API}/invoices/{invoice.id}", headers=other)).status_code == 404
    mine = await client.get(f"{API}/invoices", headers=owner)
    assert [i["id"] for i in mine.json()["items"]] == [str(invoice.id)]
    note = await call(SERVICE, "credit_note", caller="ops", invoice_id=invoice.id, idempotency_key=uuid.uuid4().hex,
                      reason="goodwill", lines=[{"line": 1, "quantity": 1}])
    r = await client.get(f"{API}/credit-notes/{note.id}/pdf", headers=owner)
    assert r.status_code == 200
    shown = pdfread.texts(r.content)
    assert f"No. {note.display_number}" in shown and f"Credits invoice {invoice.display_number}" in shown
