"""Loan arithmetic for loan-processor: amortization exact to the cent, payoff, late charges, APR.

Money is an ``int`` of minor units (cents) everywhere; rates are exact (``Decimal``,
``Fraction``, ``int`` or a decimal string such as ``"0.0699"``; a ``float`` is refused,
since ``0.07`` as a float is not 7 %). No floats appear in any result.

Rules, stated once:

* **Level payment.** ``P * r / (1 - (1 + r) ** -n)`` with ``r = annual_rate / 12``,
  computed as a ``Fraction`` and rounded half up to the cent (``P / n`` at 0 %).
* **Interest.** Charged monthly on the outstanding balance at ``r``. Rounding is carried,
  not accumulated: the interest charged through period ``k`` is the exact interest
  accrued on the actual balances through ``k``, rounded half up once. Each period's charge
  is the difference, so the total interest is never more than half a cent away from the
  exact accrual, and the present value at ``r`` of the payments differs from the
  principal by less than half a cent (which is why the APR is never below the note rate
  once there is a fee of a cent or more).
* **Last payment** pays the remaining balance plus its interest, absorbing the rounding
  of the level payment and of the interest; the principal parts sum to the principal.
  Its distance from the level payment is at most one cent per period compounded at the
  note rate (:func:`rounding_bound`). A payment never exceeds what is owed: in the
  degenerate case of a few cents spread over many months, where a rounded-up payment
  would overpay, it is capped at the balance plus interest and later payments are zero;
  and it never falls below the period's interest (a payment that rounds to almost nothing
  would otherwise let the balance grow).
* **Fees** are prepaid finance charges, paid at closing: the amount financed is the
  principal minus the fees, and the payments are computed on the full principal.
* **APR**, by the actuarial method of US Regulation Z, Appendix J, with a one-month unit
  period: the periodic rate ``i`` at which the present value of the payments equals the
  amount financed, times 12. Solved by bracketing and safeguarded Newton steps (bisection
  when a step leaves the bracket) to the precision of a double, then given as a ``Decimal``
  of 12 places, so the present value at the stated APR matches to far below a cent.
* **Early repayment** (:func:`payoff_amount`): the balance after the last payment made,
  plus interest on it for the days since that due date on a 30/360 basis, plus any carried
  interest rounding. No prepayment penalty.
* **Late payment** (:func:`late_charge`): interest at the note rate on the overdue principal
  part for every day late (30/360; the money stayed out that long), and a late fee when the
  payment is later than the grace period: ``fee_bps`` of the installment, kept between
  ``fee_min`` and ``fee_max``, charged once per late installment. The caller applies a
  payment to the installment due before any fee, so an installment paid on time is never
  late only because an earlier fee is unpaid (no pyramiding of late fees).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

Rate = Decimal | Fraction | int | str

MONTHS_PER_YEAR = 12
DAYS_PER_MONTH = 30
"""30/360 day count: every month has 30 days, the year 360."""
APR_PLACES = 12
"""Decimal places of a returned APR (a fraction: 0.0699 is 6.99 %)."""


@dataclass(frozen=True, slots=True)
class Installment:
    """One period of a schedule: what is paid, how it splits, and what is still owed after it."""

    period: int
    """1-based period number; due ``period`` months after disbursement."""
    payment: int
    interest: int
    principal: int
    balance: int
    """Principal still owed after this payment."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """An amortization schedule: the loan's terms and every installment, all in minor units."""

    principal: int
    annual_rate: Fraction
    months: int
    fees: int
    level_payment: int
    """The rounded level payment: every payment but the last (and capped ones)."""
    installments: tuple[Installment, ...]

    @property
    def amount_financed(self) -> int:
        """Principal less the prepaid finance charges (fees), as Reg Z defines it."""
        return self.principal - self.fees

    @property
    def total_interest(self) -> int:
        """Sum of the interest parts of all installments."""
        return sum(i.interest for i in self.installments)

    @property
    def finance_charge(self) -> int:
        """The cost of the credit: interest plus fees."""
        return self.total_interest + self.fees

    @property
    def total_of_payments(self) -> int:
        """Everything the borrower pays over the term, fees at closing excluded."""
        return sum(i.payment for i in self.installments)

    @property
    def payments(self) -> list[int]:
        """The payment stream, period 1 first."""
        return [i.payment for i in self.installments]


@dataclass(frozen=True, slots=True)
class LatePolicy:
    """A late-payment rule: grace days, then a fee of ``fee_bps`` of the installment within bounds."""

    grace_days: int = 15
    fee_bps: int = 500
    fee_min: int = 0
    fee_max: int | None = None


@dataclass(frozen=True, slots=True)
class LateCharge:
    """What a late installment costs on top of itself."""

    days_late: int
    fee: int
    interest: int

    @property
    def total(self) -> int:
        """Fee plus extra interest."""
        return self.fee + self.interest


def exact_rate(rate: Rate) -> Fraction:
    """A rate as an exact ``Fraction``; floats are refused because they are not exact decimals."""
    if isinstance(rate, float | complex) or isinstance(rate, bool):
        raise TypeError(f"rates must be exact (Decimal, Fraction, int or str), got {type(rate).__name__}")
    if isinstance(rate, Decimal) and not rate.is_finite():
        raise ValueError(f"rate must be finite, got {rate}")
    return Fraction(rate)


def round_half_up(value: Fraction) -> int:
    """``value`` to the nearest integer, halves away from zero (the cent rounding used here)."""
    sign = -1 if value < 0 else 1
    value = abs(value)
    return sign * ((2 * value.numerator + value.denominator) // (2 * value.denominator))


def level_payment(principal: int, annual_rate: Rate, months: int) -> Fraction:
    """The exact (unrounded) level monthly payment that amortizes ``principal`` in ``months``."""
    _check_terms(principal, months, 0)
    r = exact_rate(annual_rate) / MONTHS_PER_YEAR
    if r < 0:
        raise ValueError(f"annual_rate must not be negative, got {annual_rate}")
    if r == 0:
        return Fraction(principal, months)
    growth = (1 + r) ** months
    return principal * r * growth / (growth - 1)


def amortization_schedule(principal: int, annual_rate: Rate, months: int, fees: int = 0) -> Schedule:
    """The monthly schedule for ``principal`` at a nominal ``annual_rate`` over ``months``, with ``fees``."""
    _check_terms(principal, months, fees)
    rate = exact_rate(annual_rate)
    if rate < 0:
        raise ValueError(f"annual_rate must not be negative, got {annual_rate}")
    payment = round_half_up(level_payment(principal, rate, months))
    monthly = rate / MONTHS_PER_YEAR
    num, den = monthly.numerator, monthly.denominator
    # Interest accrued so far, exactly, as a numerator over `den`: integers only, so a
    # 360-month schedule costs no Fraction normalisation per period.
    accrued = 0
    charged = 0
    balance = principal
    rows: list[Installment] = []
    for period in range(1, months + 1):
        accrued += balance * num
        interest = (2 * accrued + den) // (2 * den) - charged
        charged += interest
        due = balance + interest
        # Never more than is owed, never less than the interest (no negative amortization).
        pay = due if period == months else max(interest, min(payment, due))
        principal_part = pay - interest
        balance -= principal_part
        rows.append(Installment(period, pay, interest, principal_part, balance))
    return Schedule(principal, rate, months, fees, payment, tuple(rows))


def rounding_bound(schedule: Schedule) -> int:
    """Cents by which the last payment may differ from the level payment: 1 a period, compounded.

    The level payment's rounding (at most half a cent) and the carried interest rounding
    (at most half a cent) each period shift the final balance by at most one cent grown
    at the note rate to the end; the bound is that annuity factor, rounded up.
    """
    r = schedule.annual_rate / MONTHS_PER_YEAR
    if r == 0:
        return schedule.months
    return math.ceil(((1 + r) ** schedule.months - 1) / r)


def present_value(payments: Sequence[int], periodic_rate: Rate) -> Fraction:
    """Exact present value of monthly ``payments`` (period 1 first) at ``periodic_rate``."""
    v = 1 / (1 + exact_rate(periodic_rate))
    total = Fraction(0)
    factor = Fraction(1)
    for p in payments:
        factor *= v
        total += p * factor
    return total


def actuarial_apr(amount_financed: int, payments: Sequence[int]) -> Decimal:
    """APR by Reg Z's actuarial method: 12 x the monthly rate equating ``payments`` with ``amount_financed``.

    ``payments`` are due 1, 2, ... months after the credit is extended; none may be
    negative and their total must be at least the amount financed (a loan that costs
    nothing has an APR of 0).
    """
    if amount_financed <= 0:
        raise ValueError(f"amount financed must be positive, got {amount_financed}")
    if any(p < 0 for p in payments):
        raise ValueError("payments must not be negative")
    total = sum(payments)
    if total < amount_financed:
        raise ValueError(f"payments ({total}) are less than the amount financed ({amount_financed})")
    if total == amount_financed:
        return Decimal(0)
    i = _solve_periodic_rate(float(amount_financed), [float(p) for p in payments])
    return (Decimal(repr(i)) * MONTHS_PER_YEAR).quantize(Decimal(1).scaleb(-APR_PLACES))


def schedule_apr(schedule: Schedule) -> Decimal:
    """The APR of a schedule: its payments against its amount financed."""
    return actuarial_apr(schedule.amount_financed, schedule.payments)


def payoff_amount(schedule: Schedule, payments_made: int, days_since_due: int = 0) -> int:
    """What repays the loan in full ``days_since_due`` days after the due date of payment ``payments_made``.

    ``payments_made`` installments have been paid as scheduled (0: none, counting from
    disbursement). The payoff is the balance after them plus interest at the note rate
    for the days since (30/360). Paying off on a due date instead of that installment:
    ``payoff_amount(s, k - 1, 30)`` equals the balance before it plus its interest, up to
    the carried rounding.
    """
    if not 0 <= payments_made <= schedule.months:
        raise ValueError(f"payments_made must be within 0..{schedule.months}, got {payments_made}")
    if not 0 <= days_since_due <= DAYS_PER_MONTH:
        raise ValueError(f"days_since_due must be within 0..{DAYS_PER_MONTH}, got {days_since_due}")
    balance = schedule.principal if payments_made == 0 else schedule.installments[payments_made - 1].balance
    accrued = balance * schedule.annual_rate * days_since_due / (MONTHS_PER_YEAR * DAYS_PER_MONTH)
    return balance + round_half_up(accrued)


def late_charge(
    installment: Installment, days_late: int, annual_rate: Rate, policy: LatePolicy | None = None
) -> LateCharge:
    """The fee and extra interest owed when ``installment`` is paid ``days_late`` days after its due date."""
    policy = policy or LatePolicy()
    if days_late < 0:
        raise ValueError(f"days_late must not be negative, got {days_late}")
    fee = 0
    if days_late > policy.grace_days:
        fee = max(policy.fee_min, round_half_up(Fraction(installment.payment * policy.fee_bps, 10_000)))
        if policy.fee_max is not None:
            fee = min(fee, policy.fee_max)
    extra = installment.principal * exact_rate(annual_rate) * days_late / (MONTHS_PER_YEAR * DAYS_PER_MONTH)
    return LateCharge(days_late, fee, round_half_up(extra))


def _check_terms(principal: int, months: int, fees: int) -> None:
    for name, value in (("principal", principal), ("months", months), ("fees", fees)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int (minor units / months), got {type(value).__name__}")
    if principal <= 0:
        raise ValueError(f"principal must be positive, got {principal}")
    if months <= 0:
        raise ValueError(f"months must be positive, got {months}")
    if not 0 <= fees < principal:
        raise ValueError(f"fees must be within 0..principal-1, got {fees}")


def _pv_and_slope(i: float, payments: list[float]) -> tuple[float, float]:
    """Present value of ``payments`` at periodic rate ``i`` and its derivative in ``i``."""
    v = 1.0 / (1.0 + i)
    factor = 1.0
    pv = 0.0
    slope = 0.0
    for k, p in enumerate(payments, start=1):
        factor *= v
        pv += p * factor
        slope -= k * p * factor
    return pv, slope * v


def _solve_periodic_rate(target: float, payments: list[float]) -> float:
    """The rate where the present value of ``payments`` is ``target``: bracket, then safeguarded Newton.

    The present value falls strictly as the rate rises (payments are non-negative, one is
    positive), so the root is unique. Iterates until the bracket stops shrinking, i.e. to
    the precision of a double (far below the 1e-10 a cent needs on large loans).
    """
    if target <= 0:
        raise ArithmeticError("no rate gives a present value of nothing: the amount financed must be positive")
    lo, hi = 0.0, 0.01
    # The caller guarantees PV(0) = sum(payments) > target, so only the top needs growing. It stops: PV(i) is at
    # most sum(payments) / (1 + i), so the root is below sum(payments) / target, however extreme the loan (1 cent
    # financed against a 10-million payment is a rate of 1e9 a month).
    while _pv_and_slope(hi, payments)[0] > target:
        lo, hi = hi, hi * 2
    x = (lo + hi) / 2
    for _ in range(400):
        pv, slope = _pv_and_slope(x, payments)
        f = pv - target
        if f == 0:
            return x
        if f > 0:
            lo = x
        else:
            hi = x
        step = x - f / slope if slope else math.nan
        # Newton when it stays inside the bracket, else bisect: converges whatever the start.
        nxt = step if lo < step < hi else (lo + hi) / 2
        if nxt in (lo, hi) or nxt == x:
            return x
        x = nxt
    return x
