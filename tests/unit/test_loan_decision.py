"""loan-processor's stated decision rules and pricing, and the token-mgr vesting arithmetic: pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from nexus_ray.deployments.finance.loans.decision import decide, price
from nexus_ray.deployments.finance.loans.models import RiskScore
from nexus_ray.deployments.finance.loans.settings import LoanSettings
from nexus_ray.deployments.finance.tokens import vesting

SETTINGS = LoanSettings()


def score(pd: float) -> RiskScore:
    return RiskScore(probability_of_default=pd, band="x", reasons=[])


def outcome(pd=0.04, amount=1_000_000, income=6_000_000, debt=0, months=12):
    d = decide(amount=amount, term_months=months, annual_income=income, monthly_debt=debt, risk=score(pd),
               settings=SETTINGS)
    return d.outcome, [r.rule for r in d.rules if not r.passed], d


@pytest.mark.parametrize(("pd", "rate", "fee_bps"), [
    (0.0, "0.0699", 100), (0.0499, "0.0699", 100), (0.05, "0.0999", 200), (0.1999, "0.1499", 300),
    (0.35, "0.2199", 400)])
def test_price_follows_the_probability_of_default(pd, rate, fee_bps):
    assert price(pd) == (Decimal(rate), fee_bps)


def test_every_rule_decides_and_is_reported():
    assert outcome()[:2] == ("approved", [])
    assert outcome(pd=0.36)[:2] == ("declined", ["risk"])
    assert outcome(pd=0.35)[0] == "approved"  # the limit itself is lent to
    assert outcome(amount=3_000_001, months=60)[1] == ["amount"]  # more than half of a 6,000,000 yearly income
    assert outcome(amount=3_000_000, months=60)[1] == []
    # 43 % of a 500,000 monthly income is 215,000: the existing debt leaves too little room for the new payment.
    assert outcome(debt=150_000)[1] == ["debt_to_income"]
    assert outcome(debt=100_000)[1] == []


def test_an_approval_carries_its_price_and_a_decline_none():
    _, _, approved = outcome(pd=0.12)
    assert (approved.annual_rate, approved.fees) == ("0.1499", 30_000)
    _, _, declined = outcome(pd=0.9)
    assert (declined.annual_rate, declined.fees) == (None, None)


@pytest.mark.parametrize(("total", "periods", "cliff"), [(1_000, 20, 4), (7, 3, 0), (1, 12, 12), (10**12 + 1, 48, 12)])
def test_vesting_releases_sum_to_the_total_and_nothing_before_the_cliff(total, periods, cliff):
    releases = [vesting.release(total, periods, cliff, k) for k in range(1, periods + 1)]
    assert sum(releases) == total
    assert all(r == 0 for r in releases[: max(cliff, 1) - 1])
    assert all(r >= 0 for r in releases)
    assert vesting.vested(total, periods, cliff, periods + 5) == total


def test_periods_elapsed_counts_whole_days_and_calendar_months():
    start = datetime(2026, 1, 31, 12, tzinfo=UTC)
    assert vesting.periods_elapsed(start, "day", 30, start + timedelta(days=3, hours=23)) == 3
    assert vesting.period_end(start, "month", 1) == datetime(2026, 2, 28, 12, tzinfo=UTC)
    assert vesting.periods_elapsed(start, "month", 12, datetime(2026, 2, 28, 11, tzinfo=UTC)) == 0
    assert vesting.periods_elapsed(start, "month", 12, datetime(2026, 2, 28, 12, tzinfo=UTC)) == 1
    assert vesting.periods_elapsed(start, "month", 12, datetime(2030, 1, 1, tzinfo=UTC)) == 12
    assert vesting.periods_elapsed(start, "day", 5, start - timedelta(days=1)) == 0
