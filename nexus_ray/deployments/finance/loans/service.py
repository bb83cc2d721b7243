"""loan-processor's logic: a loan's life from application to closing, every movement on the ledger.

State machine
-------------
::

    applied ──> scored ──> offered ──> accepted ──> disbursed ──> repaying ──> closed
       │          │           │                        │             │
       └> manual_review ──> scored                     └──────┬──────┴──> defaulted
                  │ (a reviewer scores)                       └─────────> closed (paid off early)
                  └> declined        scored ──> declined     offered ──> declined (by the borrower)

A transition is one conditional UPDATE (``WHERE status = ANY(<allowed sources>)``) with its
row in ``loan_transitions``, in one transaction: two racing requests cannot both move a loan,
and a request a loan's state does not allow is a 409 naming the status.

Money on the ledger (ledger-mgr's exports, one balanced entry per movement)
---------------------------------------------------------------------------
Accounts: the loan's **receivable** (asset, platform: the principal owed), the borrower's
**wallet** (liability, the borrower's: what the platform holds for them), and per currency
the platform's **origination fees**, **interest income**, **late fees** (revenue) and
**loan losses** (expense).

* disbursement: receivable D principal; wallet C principal - fee; origination fees C fee;
* installment: wallet D payment (+ late charges); receivable C its principal part; interest
  income C its interest (+ late interest); late fees C the late fee;
* payoff (early repayment): wallet D payoff; receivable C the balance; interest income C the
  interest accrued since the last due date;
* default: loan losses D the balance; receivable C the balance (written off).

So the receivable's balance is always the schedule's outstanding principal. Each entry's
idempotency key is derived from the operation (``loan:<id>:disburse``,
``loan:<id>:installment:<period>``, ``loan:<id>:payoff``, ``loan:<id>:default``): the
ledger posts it once whatever is retried. The ledger entry is posted first, then the loan's
state moves; a failure between the two is healed by retrying the request, whose entry is
then a replay.

Repayments
----------
Each repayment pays the next installment in full (:mod:`nexus_ray.compute.loans`): on time,
the scheduled payment; late (``paid_on`` after the due date), plus interest at the note rate
on the installment's principal for each day late (30/360) and, past the grace period
(``loans_late_grace_days``, 15), a late fee of ``loans_late_fee_bps`` (5 %) of the
installment within ``loans_late_fee_min``..``loans_late_fee_max``, once per installment.
Early repayment (payoff) pays the outstanding principal plus interest for the days since the
last due date; there is no prepayment penalty. A payoff is refused (409) while an
installment is overdue: that one is paid first, with its late charges.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import asyncpg

from nexus_ray.compute.loans import (
    DAYS_PER_MONTH,
    Installment,
    LatePolicy,
    Schedule,
    amortization_schedule,
    late_charge,
    payoff_amount,
    schedule_apr,
)
from nexus_ray.deployments.finance.accounts import ledger_account
from nexus_ray.deployments.kit.calls import call
from nexus_ray.deployments.kit.pages import Page, PageRequest
from nexus_ray.deployments.kit.settings import settings_of
from nexus_ray.exceptions import Conflict, Forbidden, NotFound, ValidationFailed
from nexus_ray.stores import postgres
from nexus_ray.stores.events import emit

from . import decision, risk
from .models import (
    Decision,
    InstallmentRead,
    LoanCreate,
    LoanRead,
    Offer,
    PayoffQuote,
    RepaymentRead,
    RiskScore,
    Transition,
)
from .settings import LoanSettings

SERVICE = "puabo-blac-loan-processor"
LEDGER = "ledger-mgr"
PLATFORM = "platform"
STATUS_CHANGED = "loan.status"
_ACCOUNTS = "loans_ledger_accounts"

#: status -> the statuses it may move to.
NEXT: dict[str, frozenset[str]] = {
    "applied": frozenset({"scored", "manual_review"}),
    "manual_review": frozenset({"scored", "declined"}),
    "scored": frozenset({"offered", "declined"}),
    "offered": frozenset({"accepted", "declined"}),
    "accepted": frozenset({"disbursed"}),
    "disbursed": frozenset({"repaying", "closed", "defaulted"}),
    "repaying": frozenset({"repaying", "closed", "defaulted"}),
}


def sources_of(target: str) -> list[str]:
    """The statuses from which a loan may move to ``target``."""
    return sorted(s for s, nxt in NEXT.items() if target in nxt)


# -- reading -------------------------------------------------------------------------------------


def _today() -> date:
    return datetime.now(UTC).date()


def _schedule(row: asyncpg.Record) -> Schedule:
    """The loan's schedule, recomputed from its terms (the same every time: pure arithmetic)."""
    return amortization_schedule(row["amount"], row["annual_rate"], row["term_months"], row["fees"])


def _outstanding(row: asyncpg.Record, schedule: Schedule | None) -> int:
    if row["status"] in ("closed", "defaulted"):
        return 0
    if schedule is None or row["disbursed_on"] is None:
        return 0
    k = row["payments_made"]
    return schedule.principal if k == 0 else schedule.installments[k - 1].balance


def _offer(row: asyncpg.Record, schedule: Schedule) -> Offer:
    return Offer(annual_rate=row["annual_rate"], apr=row["apr"], fees=schedule.fees,
                 amount_financed=schedule.amount_financed, level_payment=schedule.level_payment,
                 total_of_payments=schedule.total_of_payments, finance_charge=schedule.finance_charge)


async def _read(conn: asyncpg.Connection | asyncpg.Pool, row: asyncpg.Record) -> LoanRead:
    schedule = _schedule(row) if row["annual_rate"] is not None else None
    history = await conn.fetch(
        "SELECT from_status, to_status, actor, at FROM loan_transitions WHERE loan_id = $1 ORDER BY id", row["id"])
    return LoanRead(
        id=row["id"], borrower=row["borrower"], status=row["status"], amount=row["amount"],
        currency=row["currency"].strip(), term_months=row["term_months"], purpose=row["purpose"], risk=row["risk"],
        decision=Decision.model_validate(row["decision"]) if row["decision"] else None,
        offer=_offer(row, schedule) if schedule is not None else None, payments_made=row["payments_made"],
        outstanding_principal=_outstanding(row, schedule), wallet_account_id=row["wallet_account"],
        receivable_account_id=row["receivable_account"], disbursed_on=row["disbursed_on"],
        created_at=row["created_at"], updated_at=row["updated_at"],
        history=[Transition.model_validate(dict(h)) for h in history],
    )


async def _visible(loan_id: UUID, caller: str, privileged: bool) -> asyncpg.Record:
    pg = await postgres.pool()
    row = await pg.fetchrow("SELECT * FROM loans WHERE id = $1", loan_id)
    # Another borrower's loan is reported as missing: its existence is not the caller's business.
    if row is None or (row["borrower"] != caller and not privileged):
        raise NotFound(f"loan {loan_id} not found")
    return row


async def get_loan(*, loan_id: UUID, caller: str, privileged: bool) -> LoanRead:
    """The loan, for its borrower or an administrator."""
    row = await _visible(loan_id, caller, privileged)
    return await _read(await postgres.pool(), row)


async def list_loans(*, borrower: str, page: PageRequest) -> Page[LoanRead]:
    """The loans of ``borrower``, by id."""
    pg = await postgres.pool()
    after = page.after_value(0)
    try:
        after_id = UUID(str(after)) if after is not None else None
    except ValueError:
        raise ValidationFailed.for_field("cursor", "is not a cursor returned by this list") from None
    rows = await pg.fetch(
        "SELECT * FROM loans WHERE borrower = $1 AND ($2::uuid IS NULL OR id > $2::uuid) ORDER BY id LIMIT $3",
        borrower, after_id, page.fetch_limit)
    items = [await _read(pg, r) for r in rows]
    return page.of(items, key=lambda loan: (str(loan.id),))


async def installments(*, loan_id: UUID, caller: str, privileged: bool) -> list[InstallmentRead]:
    """The loan's schedule, period by period, with what is paid."""
    row = await _visible(loan_id, caller, privileged)
    pg = await postgres.pool()
    rows = await pg.fetch("SELECT * FROM loan_installments WHERE loan_id = $1 ORDER BY period", loan_id)
    return [InstallmentRead(period=r["period"], due_on=r["due_on"], payment=r["payment"], interest=r["interest"],
                            principal=r["principal"], balance=r["balance"], paid=r["period"] <= row["payments_made"])
            for r in rows]


async def repayments(*, loan_id: UUID, caller: str, privileged: bool) -> list[RepaymentRead]:
    """The repayments made on the loan, in order."""
    await _visible(loan_id, caller, privileged)
    pg = await postgres.pool()
    rows = await pg.fetch("SELECT * FROM loan_repayments WHERE loan_id = $1 ORDER BY seq", loan_id)
    return [RepaymentRead.model_validate(dict(r)) for r in rows]


# -- transitions ---------------------------------------------------------------------------------


async def _move(conn: asyncpg.Connection, loan_id: UUID, target: str, actor: str, *, sources: list[str] | None = None,
                **columns: Any) -> asyncpg.Record:
    """Move the loan to ``target`` (setting ``columns``) if its status allows it, else 409 (404 if missing)."""
    allowed = sources if sources is not None else sources_of(target)
    names = list(columns)
    sets = "".join(f", {n} = ${i + 4}" for i, n in enumerate(names))
    row = await conn.fetchrow(
        f"WITH old AS (SELECT status FROM loans WHERE id = $1 FOR UPDATE) "
        f"UPDATE loans SET status = $2, updated_at = now(){sets} FROM old "
        f"WHERE loans.id = $1 AND old.status = ANY($3::text[]) RETURNING loans.*, old.status AS from_status",
        loan_id, target, allowed, *columns.values())
    if row is None:
        current = await conn.fetchval("SELECT status FROM loans WHERE id = $1", loan_id)
        if current is None:
            raise NotFound(f"loan {loan_id} not found")
        raise Conflict(f"a loan that is {current} cannot become {target}",
                       extra={"field": "status", "status": current, "allowed_from": allowed})
    await conn.execute("INSERT INTO loan_transitions (loan_id, from_status, to_status, actor) VALUES ($1, $2, $3, $4)",
                       loan_id, row["from_status"], target, actor)
    await emit(conn, STATUS_CHANGED, {"loan_id": str(loan_id), "borrower": row["borrower"], "status": target,
                                      "from": row["from_status"]}, key=str(loan_id))
    return row


def _refuse_unless(row: asyncpg.Record, target: str) -> None:
    """409 before any side effect when the loan's status does not allow ``target``."""
    if row["status"] not in sources_of(target):
        raise Conflict(f"a loan that is {row['status']} cannot become {target}",
                       extra={"field": "status", "status": row["status"], "allowed_from": sources_of(target)})


# -- application, score, decision, offer ---------------------------------------------------------


def _risk_input(loan_id: UUID, body: LoanCreate) -> dict[str, Any]:
    return {"application_id": str(loan_id), "amount": body.amount, "currency": body.currency,
            "term_months": body.term_months, "annual_income": body.annual_income,
            "monthly_debt": body.monthly_debt, "purpose": body.purpose, **body.details}


async def apply(*, borrower: str, body: LoanCreate) -> tuple[LoanRead, bool]:
    """File an application, score it and decide: (the loan, whether it was created now).

    The same ``idempotency_key`` from the same borrower returns the first application.
    """
    s = settings_of(LoanSettings)
    if not s.loans_min_amount <= body.amount <= s.loans_max_amount:
        raise ValidationFailed.for_field("amount", f"must be within {s.loans_min_amount}..{s.loans_max_amount}")
    loan_id = uuid.uuid4()
    async with postgres.transaction() as conn:
        row = await conn.fetchrow(
            "INSERT INTO loans (id, borrower, status, amount, currency, term_months, annual_income, monthly_debt, "
            "purpose, application_key) VALUES ($1, $2, 'applied', $3, $4, $5, $6, $7, $8, $9) "
            "ON CONFLICT (borrower, application_key) DO NOTHING RETURNING *",
            loan_id, borrower, body.amount, body.currency, body.term_months, body.annual_income, body.monthly_debt,
            body.purpose, body.idempotency_key)
        if row is None:
            existing = await conn.fetchrow("SELECT * FROM loans WHERE borrower = $1 AND application_key = $2",
                                           borrower, body.idempotency_key)
            assert existing is not None
            return await _read(conn, existing), False
        await conn.execute("INSERT INTO loan_transitions (loan_id, from_status, to_status, actor) "
                           "VALUES ($1, NULL, 'applied', $2)", loan_id, borrower)
        await emit(conn, STATUS_CHANGED, {"loan_id": str(loan_id), "borrower": borrower, "status": "applied",
                                          "from": None}, key=str(loan_id))
    found, why = await risk.score(_risk_input(loan_id, body))
    if found is None:
        async with postgres.transaction() as conn:
            await _move(conn, loan_id, "manual_review", SERVICE, risk={"unavailable": why})
        return await get_loan(loan_id=loan_id, caller=borrower, privileged=True), True
    return await _score_and_decide(loan_id, found, SERVICE), True


async def review(*, loan_id: UUID, reviewer: str, score: RiskScore) -> LoanRead:
    """A reviewer's score for a loan in manual review; the same rules then decide."""
    return await _score_and_decide(loan_id, score.model_copy(update={"source": "review"}), reviewer,
                                   sources=["manual_review"])


async def _score_and_decide(loan_id: UUID, score: RiskScore, actor: str, *, sources: list[str] | None = None
                            ) -> LoanRead:
    async with postgres.transaction() as conn:
        row = await _move(conn, loan_id, "scored", actor, sources=sources or ["applied"],
                          risk=score.model_dump(mode="json"))
        outcome = decision.decide(amount=row["amount"], term_months=row["term_months"],
                                  annual_income=row["annual_income"], monthly_debt=row["monthly_debt"], risk=score,
                                  settings=settings_of(LoanSettings))
        if outcome.outcome == "declined":
            await _move(conn, loan_id, "declined", SERVICE, decision=outcome.model_dump(mode="json"))
        else:
            assert outcome.annual_rate is not None and outcome.fees is not None
            schedule = amortization_schedule(row["amount"], outcome.annual_rate, row["term_months"], outcome.fees)
            await _move(conn, loan_id, "offered", SERVICE, decision=outcome.model_dump(mode="json"),
                        annual_rate=outcome.annual_rate, fees=outcome.fees, apr=str(schedule_apr(schedule)))
            await conn.executemany(
                "INSERT INTO loan_installments (loan_id, period, payment, interest, principal, balance) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                [(loan_id, i.period, i.payment, i.interest, i.principal, i.balance) for i in schedule.installments])
        final = await conn.fetchrow("SELECT * FROM loans WHERE id = $1", loan_id)
        return await _read(conn, final)


async def accept(*, loan_id: UUID, caller: str) -> LoanRead:
    """The borrower accepts the offer."""
    await _visible(loan_id, caller, False)
    async with postgres.transaction() as conn:
        row = await _move(conn, loan_id, "accepted", caller)
        return await _read(conn, row)


async def decline_offer(*, loan_id: UUID, caller: str) -> LoanRead:
    """The borrower turns the offer down."""
    await _visible(loan_id, caller, False)
    async with postgres.transaction() as conn:
        row = await _move(conn, loan_id, "declined", caller, sources=["offered"])
        return await _read(conn, row)


# -- ledger accounts -----------------------------------------------------------------------------


async def _platform_account(purpose: str, currency: str, type: Any) -> UUID:
    return await ledger_account(table=_ACCOUNTS, key=f"{purpose}:{currency}", caller=SERVICE, owner=PLATFORM,
                                name=f"loans {purpose} {currency}", type=type, currency=currency)


async def _wallet(borrower: str, currency: str) -> UUID:
    return await ledger_account(table=_ACCOUNTS, key=f"wallet:{borrower}:{currency}", caller=SERVICE, owner=borrower,
                                name=f"wallet {currency}", type="liability", currency=currency)


def _line(account: UUID, side: str, amount: int, currency: str) -> dict[str, Any] | None:
    return {"account_id": str(account), "side": side, "amount": amount, "currency": currency} if amount else None


async def _post(key: str, description: str, loan_id: UUID, *lines: dict[str, Any] | None) -> UUID:
    entry = await call(LEDGER, "post_entry", caller=SERVICE, lines=[ln for ln in lines if ln is not None],
                       idempotency_key=key, description=description, metadata={"loan_id": str(loan_id)})
    return UUID(str(entry.id))


# -- disbursement, repayment, payoff, default ----------------------------------------------------


async def disburse(*, loan_id: UUID, actor: str) -> LoanRead:
    """Pay the principal less the fee into the borrower's wallet; the receivable holds the principal."""
    row = await _visible(loan_id, actor, True)
    _refuse_unless(row, "disbursed")
    currency = row["currency"].strip()
    receivable = await ledger_account(table=_ACCOUNTS, key=f"receivable:{loan_id}", caller=SERVICE, owner=PLATFORM,
                                      name=f"loan {loan_id} receivable", type="asset", currency=currency)
    wallet = await _wallet(row["borrower"], currency)
    fees_account = await _platform_account("origination-fees", currency, "revenue")
    await _post(f"loan:{loan_id}:disburse", "loan disbursement", loan_id,
                _line(receivable, "debit", row["amount"], currency),
                _line(wallet, "credit", row["amount"] - row["fees"], currency),
                _line(fees_account, "credit", row["fees"], currency))
    today = _today()
    async with postgres.transaction() as conn:
        moved = await _move(conn, loan_id, "disbursed", actor, receivable_account=receivable, wallet_account=wallet,
                            disbursed_on=today)
        await conn.execute(
            "UPDATE loan_installments SET due_on = ($2::date + make_interval(months => period))::date "
            "WHERE loan_id = $1",
            loan_id, today)
        return await _read(conn, moved)


def _value_date(paid_on: date | None, privileged: bool) -> date:
    if paid_on is None:
        return _today()
    if not privileged:
        raise Forbidden("only an administrator records a payment with a value date", extra={"field": "paid_on"})
    return paid_on


async def _replayed(loan_id: UUID, key: str) -> bool:
    pg = await postgres.pool()
    return bool(await pg.fetchval("SELECT 1 FROM loan_repayments WHERE loan_id = $1 AND idempotency_key = $2",
                                  loan_id, key))


async def repay(*, loan_id: UUID, caller: str, privileged: bool, idempotency_key: str,
                paid_on: date | None = None) -> tuple[LoanRead, bool]:
    """Pay the next installment (with late charges when late) from the borrower's wallet: (loan, replayed)."""
    row = await _visible(loan_id, caller, privileged)
    if await _replayed(loan_id, idempotency_key):
        return await _read(await postgres.pool(), row), True
    _refuse_unless(row, "repaying")
    day = _value_date(paid_on, privileged)
    schedule = _schedule(row)
    period = row["payments_made"] + 1
    inst: Installment = schedule.installments[period - 1]
    pg = await postgres.pool()
    due_on: date = await pg.fetchval("SELECT due_on FROM loan_installments WHERE loan_id = $1 AND period = $2",
                                     loan_id, period)
    s = settings_of(LoanSettings)
    policy = LatePolicy(grace_days=s.loans_late_grace_days, fee_bps=s.loans_late_fee_bps,
                        fee_min=s.loans_late_fee_min, fee_max=s.loans_late_fee_max)
    days_late = max(0, (day - due_on).days)
    late = late_charge(inst, days_late, row["annual_rate"], policy)
    currency = row["currency"].strip()
    interest, total = inst.interest + late.interest, inst.payment + late.total
    entry = await _post(
        f"loan:{loan_id}:installment:{period}", f"loan repayment {period}/{row['term_months']}", loan_id,
        _line(row["wallet_account"], "debit", total, currency),
        _line(row["receivable_account"], "credit", inst.principal, currency),
        _line(await _platform_account("interest-income", currency, "revenue"), "credit", interest, currency),
        _line(await _platform_account("late-fees", currency, "revenue"), "credit", late.fee, currency))
    target = "closed" if period == row["term_months"] else "repaying"
    async with postgres.transaction() as conn:
        made = await conn.fetchval("SELECT payments_made FROM loans WHERE id = $1 FOR UPDATE", loan_id)
        if made != period - 1:
            raise Conflict("another repayment was recorded meanwhile; retry", extra={"field": "idempotency_key"})
        moved = await _move(conn, loan_id, target, caller, sources=["disbursed", "repaying"], payments_made=period)
        await _record(conn, loan_id, kind="installment", period=period, paid_on=day, days_late=days_late,
                      principal=inst.principal, interest=interest, late_fee=late.fee, total=total,
                      key=idempotency_key, entry_id=entry)
        return await _read(conn, moved), False


async def _record(conn: asyncpg.Connection, loan_id: UUID, *, kind: str, period: int | None, paid_on: date,
                  days_late: int, principal: int, interest: int, late_fee: int, total: int, key: str,
                  entry_id: UUID) -> None:
    # A concurrent repayment of the same period moved payments_made first: the conditional check in
    # repay() and this UNIQUE (loan_id, seq) keep one row per period.
    await conn.execute(
        "INSERT INTO loan_repayments (loan_id, seq, kind, period, paid_on, days_late, principal, interest, late_fee, "
        "total, idempotency_key, entry_id) SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
        "$11 FROM loan_repayments WHERE loan_id = $1",
        loan_id, kind, period, paid_on, days_late, principal, interest, late_fee, total, key, entry_id)


async def _payoff_terms(row: asyncpg.Record, day: date) -> PayoffQuote:
    if row["status"] not in ("disbursed", "repaying"):
        raise Conflict(f"a loan that is {row['status']} has nothing to pay off", extra={"field": "status",
                                                                                         "status": row["status"]})
    schedule = _schedule(row)
    k = row["payments_made"]
    pg = await postgres.pool()
    last_due = row["disbursed_on"] if k == 0 else await pg.fetchval(
        "SELECT due_on FROM loan_installments WHERE loan_id = $1 AND period = $2", row["id"], k)
    next_due = await pg.fetchval("SELECT due_on FROM loan_installments WHERE loan_id = $1 AND period = $2",
                                 row["id"], k + 1)
    if day > next_due:
        raise Conflict(f"installment {k + 1} was due on {next_due}: pay it (with its late charges) first",
                       extra={"field": "paid_on"})
    days = min(DAYS_PER_MONTH, max(0, (day - last_due).days))
    total = payoff_amount(schedule, k, days)
    principal = schedule.principal if k == 0 else schedule.installments[k - 1].balance
    return PayoffQuote(on=day, principal=principal, interest=total - principal, total=total)


async def payoff_quote(*, loan_id: UUID, caller: str, privileged: bool, on: date | None) -> PayoffQuote:
    """What repays the loan in full on ``on`` (default today)."""
    row = await _visible(loan_id, caller, privileged)
    return await _payoff_terms(row, on or _today())


async def pay_off(*, loan_id: UUID, caller: str, privileged: bool, idempotency_key: str,
                  paid_on: date | None = None) -> tuple[LoanRead, bool]:
    """Repay the whole outstanding principal plus accrued interest now; the loan closes: (loan, replayed)."""
    row = await _visible(loan_id, caller, privileged)
    if await _replayed(loan_id, idempotency_key):
        return await _read(await postgres.pool(), row), True
    day = _value_date(paid_on, privileged)
    quote = await _payoff_terms(row, day)
    currency = row["currency"].strip()
    entry = await _post(
        f"loan:{loan_id}:payoff", "loan paid off", loan_id,
        _line(row["wallet_account"], "debit", quote.total, currency),
        _line(row["receivable_account"], "credit", quote.principal, currency),
        _line(await _platform_account("interest-income", currency, "revenue"), "credit", quote.interest, currency))
    async with postgres.transaction() as conn:
        moved = await _move(conn, loan_id, "closed", caller, sources=["disbursed", "repaying"])
        await _record(conn, loan_id, kind="payoff", period=None, paid_on=day, days_late=0, principal=quote.principal,
                      interest=quote.interest, late_fee=0, total=quote.total, key=idempotency_key, entry_id=entry)
        return await _read(conn, moved), False


async def default(*, loan_id: UUID, actor: str) -> LoanRead:
    """Declare the loan defaulted and write its outstanding principal off to loan losses."""
    row = await _visible(loan_id, actor, True)
    _refuse_unless(row, "defaulted")
    schedule = _schedule(row)
    balance = _outstanding(row, schedule)
    currency = row["currency"].strip()
    await _post(f"loan:{loan_id}:default", "loan written off", loan_id,
                _line(await _platform_account("loan-losses", currency, "expense"), "debit", balance, currency),
                _line(row["receivable_account"], "credit", balance, currency))
    async with postgres.transaction() as conn:
        moved = await _move(conn, loan_id, "defaulted", actor)
        return await _read(conn, moved)
