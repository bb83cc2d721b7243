"""Five-field cron expressions evaluated in a time zone (zoneinfo), with DST handled.

Fields: minute hour day-of-month month day-of-week, each ``*``, ``N``, ``A-B``, ``*/S``, ``A-B/S`` or a
comma list of those; month and day names (``JAN``, ``MON``) and the macros ``@hourly``, ``@daily``,
``@weekly``, ``@monthly``, ``@yearly`` are accepted. Day-of-week 0 and 7 are Sunday. As in Vixie cron,
when both day fields are restricted a day matches if either does.

A schedule names wall-clock times in its zone. Across a DST change:

* a time that does not exist (the hour skipped when clocks go forward, 02:30 in Europe/Paris on the
  last Sunday of March) fires at the instant the clocks jump to (03:00 local), once;
* a time that exists twice (the hour repeated when clocks go back) fires once, at its first occurrence.

So every matching local time fires exactly once and nothing fires twice in an hour that repeats.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
           "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}
_MONTHS = {n: i + 1 for i, n in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}
_DAYS = {n: i for i, n in enumerate("SUN MON TUE WED THU FRI SAT".split())}
# Far enough for "29 2 * * 1" (a Monday 29 February: up to 28 years apart).
_HORIZON_DAYS = 366 * 29


class CronError(ValueError):
    """A cron expression or time zone that cannot be used."""


def _field(text: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        rng, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"bad step in {part!r}")
            step = int(step_text)
        if rng == "*":
            a, b = low, high
        else:
            first, dash, last = rng.partition("-")
            a = _value(first, names)
            b = _value(last, names) if dash else (high if step_text else a)
        if not (low <= a <= high and low <= b <= high) or a > b:
            raise CronError(f"{part!r} is outside {low}-{high}")
        values.update(range(a, b + 1, step))
    return frozenset(values)


def _value(text: str, names: dict[str, int]) -> int:
    upper = text.upper()
    if upper in names:
        return names[upper]
    if not text.isdigit():
        raise CronError(f"not a number: {text!r}")
    return int(text)


@dataclass(frozen=True)
class Cron:
    """A parsed expression; :meth:`next_after` gives its next firing instant in UTC."""

    expression: str
    zone: ZoneInfo
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Monday (Python's weekday())
    any_day: bool
    any_weekday: bool

    def _day_matches(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom = d.day in self.days
        dow = d.weekday() in self.weekdays
        if self.any_day and self.any_weekday:
            return True
        if self.any_day:
            return dow
        if self.any_weekday:
            return dom
        return dom or dow

    def _exists(self, local: datetime) -> bool:
        aware = local.replace(tzinfo=self.zone, fold=0)
        return aware.astimezone(UTC).astimezone(self.zone).replace(tzinfo=None) == local

    def _instant(self, local: datetime) -> datetime:
        """The UTC instant of a naive local wall time (see the module docstring for gaps and folds)."""
        if self._exists(local):
            return local.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        # In a gap: find where it starts; read with the offset before the jump, that wall time is the jump.
        gap_start = local
        while not self._exists(gap_start - timedelta(minutes=1)):
            gap_start -= timedelta(minutes=1)
        return gap_start.replace(tzinfo=self.zone, fold=0).astimezone(UTC)

    def next_after(self, after: datetime) -> datetime:
        """The first firing instant strictly after ``after`` (an aware datetime), in UTC."""
        if after.tzinfo is None:
            raise ValueError("after must be timezone-aware")
        after = after.astimezone(UTC)
        # Start a little before, in local wall time: a gap's firing instant may come after its wall time.
        start_local = (after.astimezone(self.zone) - timedelta(hours=3)).replace(tzinfo=None, second=0, microsecond=0)
        day = start_local.date()
        hours = sorted(self.hours)
        minutes = sorted(self.minutes)
        for _ in range(_HORIZON_DAYS):
            if self._day_matches(day):
                for h in hours:
                    for m in minutes:
                        local = datetime.combine(day, time(h, m))
                        if local < start_local:
                            continue
                        instant = self._instant(local)
                        if instant > after:
                            return instant
            day += timedelta(days=1)
        raise CronError(f"{self.expression!r} never fires")

    def between(self, start: datetime, end: datetime, *, limit: int) -> list[datetime]:
        """Firing instants ``t`` with ``start <= t <= end``, the first ``limit`` of them."""
        out: list[datetime] = []
        t = self.next_after(start - timedelta(microseconds=1))
        while t <= end and len(out) < limit:
            out.append(t)
            t = self.next_after(t)
        return out


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown time zone {name!r}") from exc


def parse(expression: str, timezone: str = "UTC") -> Cron:
    """Parse ``expression`` for the IANA zone ``timezone``; :class:`CronError` says what is wrong."""
    text = _MACROS.get(expression.strip().lower(), expression.strip())
    parts = text.split()
    if len(parts) != 5:
        raise CronError("a cron expression has five fields: minute hour day-of-month month day-of-week")
    minute, hour, dom, month, dow = parts
    weekdays = {(d - 1) % 7 for d in _field(dow, 0, 7, _DAYS)}  # cron Sunday=0/7 -> Python Monday=0
    return Cron(expression=expression, zone=zone(timezone), minutes=_field(minute, 0, 59, {}),
                hours=_field(hour, 0, 23, {}), days=_field(dom, 1, 31, {}), months=_field(month, 1, 12, _MONTHS),
                weekdays=frozenset(weekdays), any_day=dom == "*", any_weekday=dow == "*")
