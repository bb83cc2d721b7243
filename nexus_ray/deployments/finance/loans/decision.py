"""The credit decision of loan-processor: stated rules over the risk score, the amount and the income.

An application is **approved** when every rule passes, else **declined**; the decision
lists every rule with whether it passed and why, and is stored and returned with the loan.

1. ``risk``: the probability of default (from risk-assessment, or given by a reviewer when
   the model was unavailable) is at most ``loans_max_probability_of_default`` (35 %).
2. ``amount``: the principal is at most ``loans_max_income_share_bps`` of the yearly income
   (50 %): no loan larger than half a year's income.
3. ``debt_to_income``: the existing monthly debt payments plus the new loan's level payment
   are at most ``loans_max_dti_bps`` of the monthly income (43 %).

The price follows the probability of default (``PRICING``, first row that fits): the note
rate and the origination fee, a prepaid finance charge kept from the amount disbursed.

=============  =========  ===============
PD below       rate       origination fee
=============  =========  ===============
5 %            6.99 %     1 %
10 %           9.99 %     2 %
20 %           14.99 %    3 %
(the limit)    21.99 %    4 %
=============  =========  ===============

The APR of the offer comes from the schedule and the fee by the actuarial method
(:func:`nexus_ray.compute.loans.schedule_apr`).
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from nexus_ray.compute.loans import amortization_schedule, round_half_up

from .models import Decision, RiskScore, RuleResult
from .settings import LoanSettings

#: (probability of default strictly below, note rate, origination fee in basis points of the principal)
PRICING: tuple[tuple[Decimal, Decimal, int], ...] = (
    (Decimal("0.05"), Decimal("0.0699"), 100),
    (Decimal("0.10"), Decimal("0.0999"), 200),
    (Decimal("0.20"), Decimal("0.1499"), 300),
    (Decimal("1.01"), Decimal("0.2199"), 400),
)


def price(probability_of_default: float) -> tuple[Decimal, int]:
    """The note rate and the fee (basis points) for a probability of default."""
    pd = Decimal(repr(probability_of_default))
    for below, rate, fee_bps in PRICING:
        if pd < below:
            return rate, fee_bps
    return PRICING[-1][1], PRICING[-1][2]


def decide(*, amount: int, term_months: int, annual_income: int, monthly_debt: int, risk: RiskScore,
           settings: LoanSettings) -> Decision:
    """Apply the rules of the module docstring; the decision carries every rule's result and the price."""
    rate, fee_bps = price(risk.probability_of_default)
    fees = round_half_up(Fraction(amount * fee_bps, 10_000))
    payment = amortization_schedule(amount, rate, term_months, fees).level_payment
    limit_pd = settings.loans_max_probability_of_default
    rules = [
        RuleResult(rule="risk", passed=risk.probability_of_default <= limit_pd,
                   detail=f"probability of default {risk.probability_of_default:.4f} (band {risk.band}); "
                          f"at most {limit_pd:.4f} is lent to"),
        RuleResult(rule="amount",
                   passed=amount * 10_000 <= annual_income * settings.loans_max_income_share_bps,
                   detail=f"principal {amount} against a yearly income of {annual_income}: at most "
                          f"{settings.loans_max_income_share_bps / 100:g} % of it"),
        RuleResult(rule="debt_to_income",
                   passed=(monthly_debt + payment) * 12 * 10_000 <= annual_income * settings.loans_max_dti_bps,
                   detail=f"monthly debt {monthly_debt} plus the new payment {payment} against a monthly income "
                          f"of {annual_income // 12}: at most {settings.loans_max_dti_bps / 100:g} %"),
    ]
    approved = all(r.passed for r in rules)
    return Decision(outcome="approved" if approved else "declined", rules=rules,
                    annual_rate=str(rate) if approved else None, fees=fees if approved else None)
