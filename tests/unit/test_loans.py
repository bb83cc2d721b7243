"""Loan arithmetic: schedules exact to the cent, APR by the actuarial method, payoff and late charges."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nexus_ray.compute.loans import (
    Installment,
    LatePolicy,
    actuarial_apr,
    amortization_schedule,
    exact_rate,
    late_charge,
    level_payment,
    payoff_amount,
    present_value,
    round_half_up,
    rounding_bound,
    schedule_apr,
)


def test_textbook_payments():
    # $1,000 at 12 % over a year: $88.85 a month; $200,000 at 6.5 % over 30 years: $1,264.14.
    assert amortization_schedule(100_000, "0.12", 12).level_payment == 8885
    assert amortization_schedule(20_000_000, Decimal("0.065"), 360).level_payment == 126_414


def test_schedule_rows_follow_the_rules():
    s = amortization_schedule(100_000, "0.12", 12)
    balance = 100_000
    for row in s.installments:
        assert row.payment == row.interest + row.principal
        assert row.balance == balance - row.principal
        balance = row.balance
    assert s.installments[0].interest == 1000  # 1 % a month on $1,000
    assert balance == 0
    assert sum(r.principal for r in s.installments) == 100_000
    assert s.payments[:-1] == [8885] * 11
    assert s.total_of_payments == 100_000 + s.total_interest


def test_interest_rounding_is_carried_not_accumulated():
    # 1 cent a month of interest at most through 0.5 % on 1.. a balance that rounds each month:
    # the total interest is within half a cent of the exact accrual on the actual balances.
    s = amortization_schedule(123_457, "0.0799", 60)
    exact = Fraction(0)
    balance = s.principal
    for row in s.installments:
        exact += balance * Fraction("0.0799") / 12
        balance = row.balance
    assert abs(s.total_interest - exact) <= Fraction(1, 2)


def test_zero_rate_splits_the_principal():
    s = amortization_schedule(1_000_000, 0, 12)
    assert s.payments == [83_333] * 11 + [83_337]
    assert s.total_interest == 0
    assert schedule_apr(s) == 0


def test_a_payment_never_exceeds_what_is_owed():
    # 12 cents over 8 months: the level payment 1.5 rounds up to 2, which would overpay.
    s = amortization_schedule(12, 0, 8)
    assert s.payments == [2, 2, 2, 2, 2, 2, 0, 0]
    assert all(r.balance >= 0 for r in s.installments)


def test_a_payment_always_covers_the_interest():
    # One cent over 20 years at 2.5 %: the level payment rounds to 0, the interest does not.
    s = amortization_schedule(1, "0.025", 241)
    assert s.level_payment == 0
    assert all(r.principal >= 0 and 0 <= r.balance <= 1 for r in s.installments)
    assert sum(r.principal for r in s.installments) == 1


def test_fees_raise_the_apr_above_the_note_rate():
    no_fee = amortization_schedule(20_000_000, "0.065", 360)
    with_fee = amortization_schedule(20_000_000, "0.065", 360, fees=400_000)
    assert with_fee.payments == no_fee.payments
    assert with_fee.amount_financed == 19_600_000
    assert with_fee.finance_charge == with_fee.total_interest + 400_000
    apr = schedule_apr(with_fee)
    # 2 % points on a 30-year loan at 6.5 %: about 6.70 %, as published calculators give.
    assert Decimal("0.0669") < apr < Decimal("0.0670")
    assert abs(schedule_apr(no_fee) - Decimal("0.065")) < Decimal("0.00001")


def test_apr_against_an_independent_root():
    # A single payment of 110.00 a month after borrowing 100.00: 10 % a month, 120 % a year.
    assert actuarial_apr(10_000, [11_000]) == Decimal("1.2")
    # Two payments of 60.00 for 100.00: 100 x^2 = 60 x + 60 with x = 1 + i, so i = (sqrt(69) - 7) / 10.
    i = (Decimal(69).sqrt() - 7) / 10
    assert abs(actuarial_apr(10_000, [6_000, 6_000]) - 12 * i) < Decimal("1e-11")


def test_apr_refuses_what_has_no_rate():
    with pytest.raises(ValueError):
        actuarial_apr(10_000, [5_000, 4_999])
    with pytest.raises(ValueError):
        actuarial_apr(0, [1])
    with pytest.raises(ValueError):
        actuarial_apr(10, [20, -1])


def test_inputs_are_checked():
    with pytest.raises(TypeError):
        exact_rate(0.07)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        amortization_schedule(100.0, "0.05", 12)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        amortization_schedule(100, "-0.01", 12)
    with pytest.raises(ValueError):
        amortization_schedule(100, "0.05", 0)
    with pytest.raises(ValueError):
        amortization_schedule(100, "0.05", 12, fees=100)


def test_round_half_up():
    assert [round_half_up(Fraction(n, 2)) for n in (-3, -1, 1, 3, 5)] == [-2, -1, 1, 2, 3]
    assert round_half_up(Fraction(149, 100)) == 1


def test_payoff():
    s = amortization_schedule(100_000, "0.12", 12)
    assert payoff_amount(s, 0) == 100_000
    assert payoff_amount(s, 3) == s.installments[2].balance
    # Half a month after the 3rd due date: half a month of interest on that balance.
    b3 = s.installments[2].balance
    assert payoff_amount(s, 3, 15) == b3 + round_half_up(Fraction(b3, 200))
    # A full month after payment k-1 is what payment k and the balance after it add up to.
    for k in range(1, 13):
        row = s.installments[k - 1]
        assert abs(payoff_amount(s, k - 1, 30) - (row.payment + row.balance)) <= 1
    assert payoff_amount(s, 12) == 0
    with pytest.raises(ValueError):
        payoff_amount(s, 13)
    with pytest.raises(ValueError):
        payoff_amount(s, 1, 31)


def test_late_charge_fee_after_grace_and_interest_from_day_one():
    row = Installment(period=4, payment=8885, interest=700, principal=8185, balance=60_000)
    on_time = late_charge(row, 0, "0.12")
    assert on_time.total == 0
    within_grace = late_charge(row, 10, "0.12")
    assert within_grace.fee == 0
    assert within_grace.interest == round_half_up(Fraction(8185 * 12 * 10, 100 * 360))  # 27 cents
    late = late_charge(row, 16, "0.12")
    assert late.fee == 444  # 5 % of 88.85, half up
    assert late.total == late.fee + late.interest
    capped = late_charge(row, 40, "0.12", LatePolicy(grace_days=10, fee_bps=500, fee_min=1_000, fee_max=2_500))
    assert capped.fee == 1_000  # the minimum beats 5 %
    assert late_charge(row, 40, "0.12", LatePolicy(fee_bps=5_000, fee_max=2_500)).fee == 2_500
    with pytest.raises(ValueError):
        late_charge(row, -1, "0.12")


# Rates 0 % to 36 % in steps of a hundredth of a percent, 0 % drawn often.
rates = st.one_of(st.just(0), st.integers(0, 3600)).map(lambda bp: Decimal(bp).scaleb(-4))


@st.composite
def loans(draw: st.DrawFn) -> tuple[int, Decimal, int, int]:
    principal = draw(st.one_of(st.integers(1, 10_000), st.integers(1, 1_000_000_000)))
    months = draw(st.one_of(st.integers(1, 24), st.integers(1, 480)))
    fees = draw(st.one_of(st.just(0), st.integers(0, max(0, principal // 10)), st.integers(0, principal - 1)))
    return principal, draw(rates), months, fees


@settings(max_examples=120, deadline=None)
@given(loans())
def test_schedule_properties(loan):
    principal, rate, months, fees = loan
    s = amortization_schedule(principal, rate, months, fees)

    assert len(s.installments) == months
    assert sum(r.principal for r in s.installments) == principal
    assert s.installments[-1].balance == 0
    for row in s.installments:
        assert type(row.payment) is int and type(row.interest) is int and type(row.principal) is int
        assert row.payment >= 0 and row.interest >= 0 and row.principal >= 0 and row.balance >= 0
        assert row.payment == row.interest + row.principal
    for row in s.installments[:-1]:
        # Every payment but the last is the level one, unless the loan was already paid off
        # or the level payment rounded below the interest (loans of a few cents).
        assert (
            row.payment == s.level_payment
            or (row.payment < s.level_payment and row.balance == 0)
            or (row.payment > s.level_payment and row.principal == 0)
        )
    assert abs(s.installments[-1].payment - s.level_payment) <= rounding_bound(s)
    assert abs(s.level_payment - level_payment(principal, rate, months)) <= Fraction(1, 2)


@settings(max_examples=60, deadline=None)
@given(loans())
@example((1_000_000_000, Decimal(0), 1, 999_999_999))  # 1 cent financed, 10 million paid: a rate of 1e9 a month
@example((1_000_000_000, Decimal("0.36"), 480, 999_999_999))
def test_apr_reproduces_the_payments(loan):
    principal, rate, months, fees = loan
    s = amortization_schedule(principal, rate, months, fees)
    apr = schedule_apr(s)

    assert isinstance(apr, Decimal)
    pv = present_value(s.payments, Fraction(apr) / 12)
    assert abs(pv - s.amount_financed) < 1  # within a cent
    if fees > 0:
        assert apr >= rate
