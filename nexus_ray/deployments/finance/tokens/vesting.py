"""Vesting arithmetic: a cliff, then linear releases per period, in whole base units.

A schedule grants ``total`` units over ``periods`` periods (days or calendar months) from
``start_at``. Nothing vests before the cliff; at the end of period ``k`` (``k >= cliff``)
``floor(total * k / periods)`` units have vested, so the release of period ``k`` is the
difference from period ``k - 1`` (at the cliff: everything vested so far) and the releases
sum to ``total`` exactly, the last period taking what the floors left.
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta


def vested(total: int, periods: int, cliff: int, k: int) -> int:
    """Units vested at the end of period ``k`` (0 before the cliff)."""
    if k < max(cliff, 1):
        return 0
    return total * min(k, periods) // periods


def release(total: int, periods: int, cliff: int, k: int) -> int:
    """Units released at the end of period ``k``: what vested then less what vested a period before."""
    return vested(total, periods, cliff, k) - vested(total, periods, cliff, k - 1)


def period_end(start: datetime, period: str, k: int) -> datetime:
    """When period ``k`` ends: ``k`` days, or ``k`` calendar months (clamped to the month's end), after ``start``."""
    if period == "day":
        return start + timedelta(days=k)
    y, m = divmod(start.month - 1 + k, 12)
    year, month = start.year + y, m + 1
    return start.replace(year=year, month=month, day=min(start.day, calendar.monthrange(year, month)[1]))


def periods_elapsed(start: datetime, period: str, periods: int, now: datetime) -> int:
    """How many whole periods have ended by ``now`` (at most ``periods``)."""
    if now < start:
        return 0
    if period == "day":
        return min(periods, (now - start) // timedelta(days=1))
    k = (now.year - start.year) * 12 + now.month - start.month
    while k > 0 and period_end(start, period, k) > now:
        k -= 1
    return min(periods, max(0, k))
