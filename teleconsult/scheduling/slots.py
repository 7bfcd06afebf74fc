"""Free-slot computation: weekly rules, breaks, dated exceptions, buffers (pure, no I/O).

Semantics
---------
**Local wall-clock boundaries.** Weekly rules and breaks are wall-clock times in
the clinic's zone ``tz``. A boundary ``t`` on local date ``d`` becomes the *first
instant at which the clinic's clock shows ``t`` or later on ``d``*
(:func:`wall_clock_to_utc`):

* an ordinary time maps to its only instant;
* an ambiguous time (the repeated hour after a fall-back) maps to its first
  occurrence (``fold=0``, PEP 495);
* a nonexistent time (the spring-forward gap) maps to the instant the clock
  jumps, i.e. to the end of the gap.

So a shift runs from the moment the clock first shows its start until the moment
the clock first shows its end. In Europe/London a rule 01:00-04:00 lasts 2 real
hours on the spring-forward day (2026-03-29: 01:00Z-03:00Z) and 4 real hours on
the fall-back day (2026-10-25: 00:00Z-04:00Z, the repeated hour is worked once
on each pass). Rules and breaks with ``valid_from``/``valid_until`` apply on the
local dates between them, both inclusive.

**Working time** (:func:`working_intervals`) for every local date touched by the
requested span (plus one day either side) is::

    ((rules - breaks) | extra exceptions) - unavailable exceptions

merged into sorted, disjoint UTC intervals (touching ones join, so a 09-10 rule
and a 10-11 rule make one 09-11 interval): extra hours override a break, leave
overrides everything. Intervals are half-open ``[start, end)``.

**Candidate slots.** Inside each working interval ``[a, b)`` slots start at
``a, a + step, a + 2*step, ...`` (``step`` defaults to ``duration + buffer``) and
fit if ``[start, start + duration)`` lies inside ``[a, b)``.

**Busy time and buffers.** A booking ``[s, e)`` occupies ``[s, e + buffer)``,
the same range the database exclusion constraint uses, so two bookings are at
least ``buffer`` apart. A slot conflicts with a booking iff
``start < e + booking_buffer and s < start + duration + buffer``, where
``buffer`` is the policy's and ``booking_buffer`` is ``Busy.buffer`` (the buffer
stored with the booking) or, when that is ``None``, the policy's too.

**Filters.** A slot is returned iff it lies inside ``[window_start, window_end)``,
starts at or after ``now + lead_time`` and, when ``horizon`` is set, at or
before ``now + horizon``. All returned datetimes are in UTC, sorted by start.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal, TypeVar
from zoneinfo import ZoneInfo

Interval = tuple[datetime, datetime]
ExceptionKind = Literal["unavailable", "extra"]

_Ordered = TypeVar("_Ordered", datetime, time)

_ONE_DAY = timedelta(days=1)
_ZERO = timedelta(0)


def _require_aware(name: str, value: datetime) -> datetime:
    """Return ``value`` in UTC; naive datetimes are refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value!r}")
    return value.astimezone(UTC)


def _require_order(start_name: str, start: _Ordered, end_name: str, end: _Ordered) -> None:
    if not start < end:
        raise ValueError(f"{end_name} must be after {start_name} ({start!r} >= {end!r})")


@dataclass(frozen=True)
class _WallClockPeriod:
    weekday: int
    start: time
    end: time
    valid_from: date | None = None
    valid_until: date | None = None

    def __post_init__(self) -> None:
        kind = type(self).__name__
        if not 0 <= self.weekday <= 6:
            raise ValueError(f"{kind}.weekday must be 0 (Monday) to 6, got {self.weekday!r}")
        for name in ("start", "end"):
            if getattr(self, name).tzinfo is not None:
                raise ValueError(f"{kind}.{name} must be a naive wall-clock time")
        _require_order(f"{kind}.start", self.start, f"{kind}.end", self.end)
        if self.valid_from is not None and self.valid_until is not None:
            if self.valid_until < self.valid_from:
                raise ValueError(f"{kind}.valid_until must not be before {kind}.valid_from")

    def applies_on(self, day: date) -> bool:
        return (
            day.weekday() == self.weekday
            and (self.valid_from is None or self.valid_from <= day)
            and (self.valid_until is None or day <= self.valid_until)
        )


@dataclass(frozen=True)
class WeeklyRule(_WallClockPeriod):
    """Working hours every ``weekday`` (0 = Monday), local wall-clock ``[start, end)``."""


@dataclass(frozen=True)
class WeeklyBreak(_WallClockPeriod):
    """A recurring pause (lunch) removed from the rules of the same local date."""


@dataclass(frozen=True)
class DatedException:
    """A one-off change: ``unavailable`` (leave, sickness) or ``extra`` hours."""

    starts_at: datetime
    ends_at: datetime
    kind: ExceptionKind

    def __post_init__(self) -> None:
        if self.kind not in ("unavailable", "extra"):
            raise ValueError(f"DatedException.kind must be 'unavailable' or 'extra': {self.kind!r}")
        start = _require_aware("DatedException.starts_at", self.starts_at)
        end = _require_aware("DatedException.ends_at", self.ends_at)
        _require_order("DatedException.starts_at", start, "DatedException.ends_at", end)


@dataclass(frozen=True)
class Busy:
    """An existing active booking ``[starts_at, ends_at)`` and its own buffer, if known."""

    starts_at: datetime
    ends_at: datetime
    buffer: timedelta | None = None

    def __post_init__(self) -> None:
        if self.buffer is not None and self.buffer < _ZERO:
            raise ValueError(f"Busy.buffer must not be negative, got {self.buffer!r}")
        start = _require_aware("Busy.starts_at", self.starts_at)
        end = _require_aware("Busy.ends_at", self.ends_at)
        _require_order("Busy.starts_at", start, "Busy.ends_at", end)


@dataclass(frozen=True)
class SlotPolicy:
    """How slots are cut: length, gap to other bookings, grid step, booking horizon."""

    duration: timedelta
    buffer: timedelta = _ZERO
    step: timedelta | None = None
    lead_time: timedelta = _ZERO
    horizon: timedelta | None = None

    def __post_init__(self) -> None:
        if self.duration <= _ZERO:
            raise ValueError(f"SlotPolicy.duration must be positive, got {self.duration!r}")
        if self.buffer < _ZERO:
            raise ValueError(f"SlotPolicy.buffer must not be negative, got {self.buffer!r}")
        if self.step is not None and self.step <= _ZERO:
            raise ValueError(f"SlotPolicy.step must be positive, got {self.step!r}")
        if self.lead_time < _ZERO:
            raise ValueError(f"SlotPolicy.lead_time must not be negative, got {self.lead_time!r}")
        if self.horizon is not None and self.horizon < _ZERO:
            raise ValueError(f"SlotPolicy.horizon must not be negative, got {self.horizon!r}")

    @property
    def effective_step(self) -> timedelta:
        return self.step if self.step is not None else self.duration + self.buffer


@dataclass(frozen=True, order=True)
class Slot:
    """A bookable ``[starts_at, ends_at)`` in UTC."""

    starts_at: datetime
    ends_at: datetime


def merge_intervals(intervals: Iterable[Interval]) -> list[Interval]:
    """Sort and merge overlapping or touching half-open intervals; drop empty ones."""
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[0] < i[1]):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def subtract_intervals(base: Iterable[Interval], removed: Iterable[Interval]) -> list[Interval]:
    """``base`` minus ``removed`` as merged, sorted, disjoint intervals."""
    cuts = merge_intervals(removed)
    result: list[Interval] = []
    for start, end in merge_intervals(base):
        cursor = start
        for cut_start, cut_end in cuts:
            if cut_end <= cursor or cut_start >= end:
                continue
            if cut_start > cursor:
                result.append((cursor, cut_start))
            cursor = max(cursor, cut_end)
            if cursor >= end:
                break
        if cursor < end:
            result.append((cursor, end))
    return result


def wall_clock_to_utc(day: date, wall: time, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the clock in ``tz`` shows ``wall`` or later on ``day``."""
    # fold=0 (whatever `wall` carries) picks the first occurrence of an ambiguous time.
    local = datetime.combine(day, wall.replace(fold=0), tzinfo=tz)
    utc = local.astimezone(UTC)
    if utc.astimezone(tz).replace(tzinfo=None) == local.replace(tzinfo=None):
        return utc
    # In a gap fold=0 applies the offset before the jump and fold=1 the one after, so
    # the jump lies in (after, before]; bisect on whole seconds, as tzdata transitions are.
    offset_before = local.utcoffset()
    low = math.floor(local.replace(fold=1).astimezone(UTC).timestamp())
    high = math.ceil(utc.timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == offset_before:
            low = middle
        else:
            high = middle
    return datetime.fromtimestamp(high, UTC)


def _local_dates(tz: ZoneInfo, start: datetime, end: datetime) -> list[date]:
    # One day either side so that intervals merged across midnight are anchored the same
    # way whatever the window.
    first = start.astimezone(tz).date() - _ONE_DAY
    last = end.astimezone(tz).date() + _ONE_DAY
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def working_intervals(
    *,
    tz: ZoneInfo,
    rules: Iterable[WeeklyRule],
    breaks: Iterable[WeeklyBreak] = (),
    exceptions: Iterable[DatedException] = (),
    span_start: datetime,
    span_end: datetime,
) -> list[Interval]:
    """Working time (UTC, merged) for the local dates touched by ``[span_start, span_end)``.

    ``((rules - breaks) | extra) - unavailable``; see the module docstring.
    """
    start = _require_aware("span_start", span_start)
    end = _require_aware("span_end", span_end)
    _require_order("span_start", start, "span_end", end)
    rules, breaks, exceptions = tuple(rules), tuple(breaks), tuple(exceptions)
    worked: list[Interval] = []
    paused: list[Interval] = []
    for day in _local_dates(tz, start, end):
        for periods, into in ((rules, worked), (breaks, paused)):
            for period in periods:
                if period.applies_on(day):
                    begin = wall_clock_to_utc(day, period.start, tz)
                    into.append((begin, wall_clock_to_utc(day, period.end, tz)))

    def dated(kind: ExceptionKind) -> list[Interval]:
        return [
            (e.starts_at.astimezone(UTC), e.ends_at.astimezone(UTC))
            for e in exceptions
            if e.kind == kind
        ]

    available = subtract_intervals(worked, paused) + dated("extra")
    return subtract_intervals(available, dated("unavailable"))


def fits_availability(
    slot_start: datetime,
    slot_end: datetime,
    *,
    tz: ZoneInfo,
    rules: Iterable[WeeklyRule],
    breaks: Iterable[WeeklyBreak] = (),
    exceptions: Iterable[DatedException] = (),
) -> bool:
    """Whether ``[slot_start, slot_end)`` lies inside working time (bookings ignored)."""
    start = _require_aware("slot_start", slot_start)
    end = _require_aware("slot_end", slot_end)
    _require_order("slot_start", start, "slot_end", end)
    intervals = working_intervals(
        tz=tz, rules=rules, breaks=breaks, exceptions=exceptions, span_start=start, span_end=end
    )
    return any(a <= start and end <= b for a, b in intervals)


def free_slots(
    *,
    tz: ZoneInfo,
    rules: Iterable[WeeklyRule],
    breaks: Iterable[WeeklyBreak] = (),
    exceptions: Iterable[DatedException] = (),
    busy: Iterable[Busy] = (),
    policy: SlotPolicy,
    window_start: datetime,
    window_end: datetime,
    now: datetime,
) -> list[Slot]:
    """Free slots inside ``[window_start, window_end)``, sorted; see the module docstring."""
    lower = _require_aware("window_start", window_start)
    upper = _require_aware("window_end", window_end)
    _require_order("window_start", lower, "window_end", upper)
    current = _require_aware("now", now)
    earliest = max(lower, current + policy.lead_time)
    latest = None if policy.horizon is None else current + policy.horizon
    duration, buffer, step = policy.duration, policy.buffer, policy.effective_step
    # Widening every booking by the buffers on both sides turns the conflict test
    # (start < e + booking_buffer and s < start + duration + buffer) into plain overlap.
    blocked = merge_intervals(
        (
            b.starts_at.astimezone(UTC) - buffer,
            b.ends_at.astimezone(UTC) + (buffer if b.buffer is None else b.buffer),
        )
        for b in busy
    )
    blocked_ends = [end for _, end in blocked]

    def is_free(start: datetime) -> bool:
        index = bisect_right(blocked_ends, start)  # first blocked interval ending after start
        return index == len(blocked) or blocked[index][0] >= start + duration

    slots: list[Slot] = []
    intervals = working_intervals(
        tz=tz, rules=rules, breaks=breaks, exceptions=exceptions, span_start=lower, span_end=upper
    )
    for begin, end in intervals:
        last_end = min(end, upper)
        # Skip whole steps up to the first start at or after `earliest`.
        start = begin + max(0, -((begin - earliest) // step)) * step
        while start + duration <= last_end and (latest is None or start <= latest):
            if is_free(start):
                slots.append(Slot(start, start + duration))
            start += step
    return slots
