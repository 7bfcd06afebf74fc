"""Free-slot computation: rules, breaks, exceptions, buffers, DST (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teleconsult.scheduling.slots import (
    Busy,
    DatedException,
    ExceptionKind,
    Slot,
    SlotPolicy,
    WeeklyBreak,
    WeeklyRule,
    fits_availability,
    free_slots,
    merge_intervals,
    subtract_intervals,
    wall_clock_to_utc,
    working_intervals,
)

UTC_ZONE = ZoneInfo("UTC")
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
MONDAY, SATURDAY, SUNDAY = 0, 5, 6
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
LONG_AGO = datetime(2025, 1, 1, tzinfo=UTC)
# 2026-06-01 is a Monday, 2026-06-06 a Saturday.
MONDAY_JUNE = date(2026, 6, 1)
WEEK_START = datetime(2026, 6, 1, tzinfo=UTC)
WEEK_END = WEEK_START + 7 * DAY
MORNING = WeeklyRule(MONDAY, time(9), time(12))


def at(day: int, hour: int, minute: int = 0, month: int = 6) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def starts(slots: Iterable[Slot]) -> list[datetime]:
    return [slot.starts_at for slot in slots]


def slots_for(
    rules: Iterable[WeeklyRule] = (MORNING,),
    *,
    policy: SlotPolicy | None = None,
    tz: ZoneInfo = UTC_ZONE,
    window_start: datetime = WEEK_START,
    window_end: datetime = WEEK_END,
    now: datetime = LONG_AGO,
    **extra: Any,
) -> list[Slot]:
    return free_slots(
        tz=tz,
        rules=rules,
        policy=policy or SlotPolicy(duration=30 * MINUTE),
        window_start=window_start,
        window_end=window_end,
        now=now,
        **extra,
    )


# --- Rules, breaks, buffers, exceptions -------------------------------------------------


def test_weekday_rule_yields_back_to_back_slots_on_that_weekday_only() -> None:
    expected = [at(1, 9), at(1, 9, 30), at(1, 10), at(1, 10, 30), at(1, 11), at(1, 11, 30)]
    assert starts(slots_for()) == expected


def test_slot_ends_after_its_duration() -> None:
    assert slots_for()[0] == Slot(at(1, 9), at(1, 9, 30))


def test_rule_applies_only_between_its_inclusive_validity_dates() -> None:
    rule = replace(MORNING, valid_from=date(2026, 6, 8), valid_until=date(2026, 6, 8))
    slots = slots_for([rule], window_end=WEEK_START + 21 * DAY)
    assert {slot.starts_at.date() for slot in slots} == {date(2026, 6, 8)}


def test_break_removes_the_slots_it_overlaps() -> None:
    rule = WeeklyRule(MONDAY, time(9), time(13))
    lunch = WeeklyBreak(MONDAY, time(11), time(11, 30))
    slots = slots_for([rule], breaks=[lunch], policy=SlotPolicy(duration=HOUR))
    assert starts(slots) == [at(1, 9), at(1, 10), at(1, 11, 30)]


def test_buffer_widens_the_default_step() -> None:
    policy = SlotPolicy(duration=30 * MINUTE, buffer=10 * MINUTE)
    rule = WeeklyRule(MONDAY, time(9), time(11))
    assert starts(slots_for([rule], policy=policy)) == [at(1, 9), at(1, 9, 40), at(1, 10, 20)]


BUFFERED = SlotPolicy(duration=30 * MINUTE, buffer=10 * MINUTE, step=5 * MINUTE)
BOOKING = Busy(at(1, 10), at(1, 10, 30))


def test_slot_must_end_a_buffer_before_a_booking() -> None:
    free = starts(slots_for(policy=BUFFERED, busy=[BOOKING]))
    assert at(1, 9, 20) in free
    assert at(1, 9, 25) not in free


def test_slot_must_start_a_buffer_after_a_booking() -> None:
    free = starts(slots_for(policy=BUFFERED, busy=[BOOKING]))
    assert at(1, 10, 35) not in free
    assert at(1, 10, 40) in free


def test_booking_keeps_the_buffer_it_was_made_with() -> None:
    older = replace(BOOKING, buffer=20 * MINUTE)
    free = starts(slots_for(policy=BUFFERED, busy=[older]))
    assert at(1, 10, 45) not in free
    assert at(1, 10, 50) in free


def test_unavailable_exception_empties_a_leave_day() -> None:
    leave = DatedException(at(1, 0), at(2, 0), "unavailable")
    assert slots_for(exceptions=[leave]) == []


def test_extra_exception_adds_hours_on_a_saturday() -> None:
    extra = DatedException(at(6, 10), at(6, 12), "extra")
    slots = slots_for(exceptions=[extra], policy=SlotPolicy(duration=HOUR))
    assert starts(slots) == [at(1, 9), at(1, 10), at(1, 11), at(6, 10), at(6, 11)]


def test_extra_hours_override_a_break() -> None:
    lunch = WeeklyBreak(MONDAY, time(10), time(11))
    extra = DatedException(at(1, 10), at(1, 11), "extra")
    slots = slots_for(breaks=[lunch], exceptions=[extra], policy=SlotPolicy(duration=HOUR))
    assert starts(slots) == [at(1, 9), at(1, 10), at(1, 11)]


def test_unavailable_exception_overrides_extra_hours() -> None:
    extra = DatedException(at(6, 10), at(6, 12), "extra")
    leave = DatedException(at(6, 0), at(7, 0), "unavailable")
    assert starts(slots_for([], exceptions=[extra, leave])) == []


def test_extra_hours_adjoining_a_rule_merge_into_one_interval() -> None:
    extra = DatedException(at(1, 12), at(1, 13), "extra")
    slots = slots_for(exceptions=[extra], policy=SlotPolicy(duration=90 * MINUTE))
    assert starts(slots) == [at(1, 9), at(1, 10, 30)]


def test_lead_time_drops_slots_starting_too_soon_without_moving_the_grid() -> None:
    policy = SlotPolicy(duration=30 * MINUTE, lead_time=HOUR)
    slots = slots_for(policy=policy, now=at(1, 9, 10))
    assert starts(slots) == [at(1, 10, 30), at(1, 11), at(1, 11, 30)]


def test_horizon_drops_slots_starting_too_late() -> None:
    policy = SlotPolicy(duration=30 * MINUTE, horizon=HOUR)
    assert starts(slots_for(policy=policy, now=at(1, 9))) == [at(1, 9), at(1, 9, 30), at(1, 10)]


def test_slots_crossing_the_window_edges_are_omitted() -> None:
    slots = slots_for(window_start=at(1, 9, 15), window_end=at(1, 11, 15))
    assert starts(slots) == [at(1, 9, 30), at(1, 10), at(1, 10, 30)]


def test_fits_availability_accepts_a_booking_inside_working_time() -> None:
    assert fits_availability(at(1, 9, 10), at(1, 11, 50), tz=UTC_ZONE, rules=[MORNING])


def test_fits_availability_refuses_a_booking_running_past_closing() -> None:
    assert not fits_availability(at(1, 11, 30), at(1, 12, 30), tz=UTC_ZONE, rules=[MORNING])


def test_fits_availability_refuses_a_booking_over_a_break() -> None:
    lunch = WeeklyBreak(MONDAY, time(10), time(10, 30))
    args: dict[str, Any] = {"tz": UTC_ZONE, "rules": [MORNING], "breaks": [lunch]}
    assert not fits_availability(at(1, 9, 45), at(1, 10, 15), **args)


def test_merge_intervals_joins_touching_and_overlapping_intervals() -> None:
    merged = merge_intervals(
        [(at(1, 11), at(1, 12)), (at(1, 9), at(1, 10)), (at(1, 10), at(1, 11))]
    )
    assert merged == [(at(1, 9), at(1, 12))]


def test_subtract_intervals_splits_around_a_hole() -> None:
    left = subtract_intervals([(at(1, 9), at(1, 12))], [(at(1, 10), at(1, 11))])
    assert left == [(at(1, 9), at(1, 10)), (at(1, 11), at(1, 12))]


# --- Validation -------------------------------------------------------------------------

NAIVE = datetime(2026, 6, 1, 9)


@pytest.mark.parametrize("argument", ["window_start", "window_end", "now"])
def test_free_slots_refuses_naive_datetimes_naming_the_argument(argument: str) -> None:
    arguments: dict[str, Any] = {"window_start": WEEK_START, "window_end": WEEK_END}
    arguments["now"] = LONG_AGO
    arguments[argument] = NAIVE
    with pytest.raises(ValueError, match=argument):
        slots_for(**arguments)


def test_free_slots_refuses_a_window_ending_before_it_starts() -> None:
    with pytest.raises(ValueError, match="window_end"):
        slots_for(window_start=WEEK_END, window_end=WEEK_START)


@pytest.mark.parametrize(
    ("build", "name"),
    [
        (lambda: SlotPolicy(duration=timedelta(0)), "duration"),
        (lambda: SlotPolicy(duration=HOUR, buffer=-MINUTE), "buffer"),
        (lambda: SlotPolicy(duration=HOUR, step=timedelta(0)), "step"),
        (lambda: WeeklyRule(7, time(9), time(12)), "weekday"),
        (lambda: WeeklyRule(MONDAY, time(12), time(9)), "end"),
        (lambda: WeeklyBreak(MONDAY, time(9), time(9)), "end"),
        (lambda: WeeklyRule(MONDAY, time(9, tzinfo=UTC), time(12)), "start"),
        (lambda: DatedException(NAIVE, at(1, 10), "extra"), "starts_at"),
        (lambda: DatedException(at(1, 10), at(1, 9), "extra"), "ends_at"),
        (lambda: Busy(at(1, 9), NAIVE), "ends_at"),
        (lambda: Busy(at(1, 9), at(1, 10), -MINUTE), "buffer"),
    ],
)
def test_values_refuse_invalid_fields_naming_them(build: Any, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        build()


def test_fits_availability_refuses_an_empty_booking() -> None:
    with pytest.raises(ValueError, match="slot_end"):
        fits_availability(at(1, 10), at(1, 10), tz=UTC_ZONE, rules=[MORNING])


# --- Daylight-saving time ---------------------------------------------------------------

SUNDAY_MORNING = WeeklyRule(SUNDAY, time(9), time(12))
HOURLY = SlotPolicy(duration=HOUR)


def london_sundays(first: date, last: date) -> list[Slot]:
    return slots_for(
        [SUNDAY_MORNING],
        tz=LONDON,
        policy=HOURLY,
        window_start=datetime.combine(first, time(0), tzinfo=UTC),
        window_end=datetime.combine(last, time(0), tzinfo=UTC),
    )


def test_london_sunday_slots_move_an_hour_earlier_in_utc_from_spring_forward() -> None:
    slots = london_sundays(date(2026, 3, 22), date(2026, 4, 6))
    assert starts(slots) == [
        at(22, 9, month=3), at(22, 10, month=3), at(22, 11, month=3),
        at(29, 8, month=3), at(29, 9, month=3), at(29, 10, month=3),
        at(5, 8, month=4), at(5, 9, month=4), at(5, 10, month=4),
    ]  # fmt: skip


def test_london_sunday_slots_move_back_in_utc_from_fall_back() -> None:
    slots = london_sundays(date(2026, 10, 18), date(2026, 10, 26))
    assert starts(slots) == [
        at(18, 8, month=10), at(18, 9, month=10), at(18, 10, month=10),
        at(25, 9, month=10), at(25, 10, month=10), at(25, 11, month=10),
    ]  # fmt: skip


def test_london_sunday_slots_keep_their_local_times_across_both_changes() -> None:
    slots = london_sundays(date(2026, 3, 22), date(2026, 11, 2))
    local_times = {slot.starts_at.astimezone(LONDON).time() for slot in slots}
    assert local_times == {time(9), time(10), time(11)}
    assert len(slots) == 3 * 33  # Sundays 2026-03-22 to 2026-11-01


def test_new_york_sunday_slots_move_an_hour_earlier_in_utc_from_spring_forward() -> None:
    slots = slots_for(
        [SUNDAY_MORNING],
        tz=NEW_YORK,
        policy=HOURLY,
        window_start=at(1, 0, month=3),
        window_end=at(9, 0, month=3),
    )
    assert starts(slots) == [
        at(1, 14, month=3), at(1, 15, month=3), at(1, 16, month=3),
        at(8, 13, month=3), at(8, 14, month=3), at(8, 15, month=3),
    ]  # fmt: skip


def hours_on(tz: ZoneInfo, day: date, start: time, end: time) -> list[tuple[datetime, datetime]]:
    rule = WeeklyRule(day.weekday(), start, end)
    midnight = datetime.combine(day, time(0), tzinfo=UTC)
    intervals = working_intervals(tz=tz, rules=[rule], span_start=midnight, span_end=midnight + DAY)
    return intervals


def test_rule_across_the_london_spring_gap_lasts_one_real_hour() -> None:
    hours = hours_on(LONDON, date(2026, 3, 29), time(1), time(3))
    assert hours == [(at(29, 1, month=3), at(29, 2, month=3))]


def test_rule_01_to_04_on_the_london_spring_forward_day_lasts_two_real_hours() -> None:
    hours = hours_on(LONDON, date(2026, 3, 29), time(1), time(4))
    assert hours == [(at(29, 1, month=3), at(29, 3, month=3))]


def test_rule_01_to_04_on_the_london_fall_back_day_lasts_four_real_hours() -> None:
    hours = hours_on(LONDON, date(2026, 10, 25), time(1), time(4))
    assert hours == [(at(25, 0, month=10), at(25, 4, month=10))]


def test_rule_starting_in_the_repeated_hour_starts_at_its_first_occurrence() -> None:
    hours = hours_on(LONDON, date(2026, 10, 25), time(1, 30), time(2, 30))
    assert hours == [(at(25, 0, 30, month=10), at(25, 2, 30, month=10))]


def test_rule_starting_in_the_new_york_gap_starts_when_the_clock_jumps() -> None:
    hours = hours_on(NEW_YORK, date(2026, 3, 8), time(2, 30), time(3, 30))
    assert hours == [(at(8, 7, month=3), at(8, 7, 30, month=3))]


def test_rule_entirely_inside_the_spring_gap_gives_no_time() -> None:
    assert hours_on(NEW_YORK, date(2026, 3, 8), time(2), time(2, 30)) == []


def test_slots_across_the_london_spring_gap_are_real_half_hours() -> None:
    slots = slots_for(
        [WeeklyRule(SUNDAY, time(1), time(3))],
        tz=LONDON,
        window_start=at(29, 0, month=3),
        window_end=at(30, 0, month=3),
    )
    assert starts(slots) == [at(29, 1, month=3), at(29, 1, 30, month=3)]


# --- Properties -------------------------------------------------------------------------

ZONES = [ZoneInfo(name) for name in ("Europe/London", "America/New_York", "Australia/Sydney")]
FIXED_ZONES = [ZoneInfo("Africa/Nairobi"), UTC_ZONE]
# Clock changes of 2026 in the DST zones above (London, New York, Sydney).
ANCHORS = [
    datetime(2026, month, day, tzinfo=UTC)
    for month, day in ((3, 8), (3, 29), (4, 5), (6, 1), (10, 4), (10, 25), (11, 1))
]
KINDS: tuple[ExceptionKind, ...] = ("unavailable", "extra")
FIVE = 5 * MINUTE
PROPERTY_SETTINGS = settings(max_examples=200, deadline=None)


def minutes(low: int, high: int, unit: int = 5) -> st.SearchStrategy[timedelta]:
    return st.integers(low // unit, high // unit).map(lambda n: n * unit * MINUTE)


# Strategies are built once: constructing them inside the composite dominated run time.
QUARTER_HOURS = st.sets(st.integers(0, 95), min_size=2, max_size=2).map(sorted)
VALID_FROM = st.none() | st.dates(date(2026, 2, 20), date(2026, 11, 10))
WEEKDAYS = st.integers(0, 6)
MAYBE = st.booleans()
# Where a booking or exception starts: a point of the window (in thousandths of its
# length), moved back by up to a day so that some start before the window.
OFFSETS = st.tuples(st.integers(0, 1000), minutes(0, 1440))
BOOKING_LENGTHS = minutes(5, 180)
EXCEPTION_LENGTHS = minutes(60, 2 * 1440)
WINDOW_SHIFTS = minutes(-3 * 1440, 3 * 1440)
WINDOW_LENGTHS = st.sampled_from([DAY, 2 * DAY, 7 * DAY]) | minutes(60, 8 * 1440)
NOW_SHIFTS = minutes(-2 * 1440, 1440)
DURATIONS = minutes(5, 120)
BUFFERS = minutes(0, 30)
STEPS = st.none() | minutes(5, 120)
LEAD_TIMES = minutes(0, 180)
HORIZONS = st.none() | minutes(0, 10 * 1440, unit=60)


@st.composite
def wall_periods(draw: st.DrawFn) -> tuple[int, time, time, date | None, date | None]:
    quarter_start, quarter_end = draw(QUARTER_HOURS)
    valid_from = draw(VALID_FROM)
    return (
        draw(WEEKDAYS),
        time(quarter_start // 4, quarter_start % 4 * 15),
        time(quarter_end // 4, quarter_end % 4 * 15),
        valid_from,
        valid_from + 10 * DAY if valid_from is not None and draw(MAYBE) else None,
    )


WALL_PERIODS = wall_periods()
BOOKING_SPANS = st.tuples(OFFSETS, BOOKING_LENGTHS, st.none() | BUFFERS)
EXCEPTION_SPANS = st.tuples(OFFSETS, EXCEPTION_LENGTHS, st.sampled_from(KINDS))


@dataclass(frozen=True)
class Scenario:
    tz: ZoneInfo
    rules: list[WeeklyRule]
    breaks: list[WeeklyBreak]
    exceptions: list[DatedException]
    busy: list[Busy]
    policy: SlotPolicy
    window_start: datetime
    window_end: datetime
    now: datetime
    another_booking: Busy = field(compare=False)

    def slots(self, busy: list[Busy] | None = None) -> list[Slot]:
        return free_slots(
            tz=self.tz,
            rules=self.rules,
            breaks=self.breaks,
            exceptions=self.exceptions,
            busy=self.busy if busy is None else busy,
            policy=self.policy,
            window_start=self.window_start,
            window_end=self.window_end,
            now=self.now,
        )

    def working(self) -> list[tuple[datetime, datetime]]:
        return working_intervals(
            tz=self.tz,
            rules=self.rules,
            breaks=self.breaks,
            exceptions=self.exceptions,
            span_start=self.window_start,
            span_end=self.window_end,
        )

    def conflicts(self, slot: Slot, booking: Busy) -> bool:
        # The database's rule: [start, end + buffer) ranges of two bookings must not overlap.
        buffer = self.policy.buffer
        own_buffer = buffer if booking.buffer is None else booking.buffer
        return slot.starts_at < booking.ends_at + own_buffer and booking.starts_at < (
            slot.ends_at + buffer
        )


@st.composite
def scenarios(draw: st.DrawFn, zones: list[ZoneInfo] = ZONES + FIXED_ZONES) -> Scenario:
    anchor = draw(st.sampled_from(ANCHORS)) + draw(WINDOW_SHIFTS)
    window_length = draw(WINDOW_LENGTHS)

    def start(offset: tuple[int, timedelta]) -> datetime:
        thousandths, back = offset
        return anchor + (window_length * thousandths / 1000) // FIVE * FIVE - back

    periods = draw(st.lists(WALL_PERIODS, min_size=1, max_size=5))
    pauses = draw(st.lists(WALL_PERIODS, max_size=2))
    dated = draw(st.lists(EXCEPTION_SPANS, max_size=3))
    booked = draw(st.lists(BOOKING_SPANS, max_size=6))
    another_offset, another_length, another_buffer = draw(BOOKING_SPANS)
    policy = SlotPolicy(
        duration=draw(DURATIONS),
        buffer=draw(BUFFERS),
        step=draw(STEPS),
        lead_time=draw(LEAD_TIMES),
        horizon=draw(HORIZONS),
    )
    return Scenario(
        tz=draw(st.sampled_from(zones)),
        rules=[WeeklyRule(*period) for period in periods],
        breaks=[WeeklyBreak(*period) for period in pauses],
        exceptions=[
            DatedException(start(offset), start(offset) + length, kind)
            for offset, length, kind in dated
        ],
        busy=[
            Busy(start(offset), start(offset) + length, buffer) for offset, length, buffer in booked
        ],
        policy=policy,
        window_start=anchor,
        window_end=anchor + window_length,
        now=anchor + draw(NOW_SHIFTS),
        another_booking=Busy(
            start(another_offset), start(another_offset) + another_length, another_buffer
        ),
    )


@PROPERTY_SETTINGS
@given(scenarios())
def test_every_slot_lies_inside_working_time_and_the_window(scenario: Scenario) -> None:
    working = scenario.working()
    for slot in scenario.slots():
        assert scenario.window_start <= slot.starts_at < slot.ends_at <= scenario.window_end
        assert any(a <= slot.starts_at and slot.ends_at <= b for a, b in working)


@PROPERTY_SETTINGS
@given(scenarios())
def test_every_slot_starts_on_the_step_grid_of_its_working_interval(scenario: Scenario) -> None:
    working = scenario.working()
    for slot in scenario.slots():
        begin = max(a for a, b in working if a <= slot.starts_at < b)
        assert (slot.starts_at - begin) % scenario.policy.effective_step == timedelta(0)


@PROPERTY_SETTINGS
@given(scenarios())
def test_no_slot_comes_within_a_buffer_of_a_booking(scenario: Scenario) -> None:
    for slot in scenario.slots():
        assert not any(scenario.conflicts(slot, booking) for booking in scenario.busy)


@PROPERTY_SETTINGS
@given(scenarios())
def test_bookings_remove_exactly_the_conflicting_slots(scenario: Scenario) -> None:
    unbooked = scenario.slots(busy=[])
    expected = [s for s in unbooked if not any(scenario.conflicts(s, b) for b in scenario.busy)]
    assert scenario.slots() == expected


@PROPERTY_SETTINGS
@given(scenarios(), st.integers(0, 10_000))
def test_booking_a_free_slot_removes_exactly_it_and_its_conflicts(
    scenario: Scenario, pick: int
) -> None:
    slots = scenario.slots()
    if not slots:
        return
    chosen = slots[pick % len(slots)]
    booking = Busy(chosen.starts_at, chosen.ends_at)
    after = scenario.slots(busy=[*scenario.busy, booking])
    assert chosen not in after
    assert after == [slot for slot in slots if not scenario.conflicts(slot, booking)]


@PROPERTY_SETTINGS
@given(scenarios())
def test_slots_are_sorted_and_disjoint_when_the_step_covers_the_duration(
    scenario: Scenario,
) -> None:
    slots = scenario.slots()
    assert slots == sorted(slots)
    if scenario.policy.effective_step >= scenario.policy.duration:
        assert all(a.ends_at <= b.starts_at for a, b in zip(slots, slots[1:], strict=False))


@PROPERTY_SETTINGS
@given(scenarios())
def test_another_booking_never_adds_slots(scenario: Scenario) -> None:
    more_busy = scenario.slots(busy=[*scenario.busy, scenario.another_booking])
    assert set(more_busy) <= set(scenario.slots())


@PROPERTY_SETTINGS
@given(scenarios())
def test_removing_all_bookings_gives_a_superset(scenario: Scenario) -> None:
    assert set(scenario.slots()) <= set(scenario.slots(busy=[]))


@PROPERTY_SETTINGS
@given(scenarios())
def test_every_slot_fits_availability(scenario: Scenario) -> None:
    for slot in scenario.slots():
        assert fits_availability(
            slot.starts_at,
            slot.ends_at,
            tz=scenario.tz,
            rules=scenario.rules,
            breaks=scenario.breaks,
            exceptions=scenario.exceptions,
        )


@PROPERTY_SETTINGS
@given(scenarios())
def test_every_slot_respects_lead_time_and_horizon(scenario: Scenario) -> None:
    policy = scenario.policy
    for slot in scenario.slots():
        assert slot.starts_at >= scenario.now + policy.lead_time
        assert policy.horizon is None or slot.starts_at <= scenario.now + policy.horizon


@PROPERTY_SETTINGS
@given(scenarios(zones=FIXED_ZONES))
def test_in_zones_without_dst_slots_follow_local_wall_clock_rules(scenario: Scenario) -> None:
    # Independent oracle: every 5-minute mark of a slot is, on the local clock, inside a
    # rule and outside every break of that date (exceptions left out).
    plain = replace(scenario, exceptions=[])
    for slot in plain.slots():
        mark = slot.starts_at
        while mark < slot.ends_at:
            local = mark.astimezone(plain.tz)
            day, wall = local.date(), local.time().replace(tzinfo=None)
            assert any(r.applies_on(day) and r.start <= wall < r.end for r in plain.rules)
            assert not any(b.applies_on(day) and b.start <= wall < b.end for b in plain.breaks)
            mark += FIVE


DAYS_AND_ZONES = (
    st.sampled_from(ZONES + FIXED_ZONES),
    st.sampled_from(ANCHORS).map(lambda anchor: anchor.date()),
)


@PROPERTY_SETTINGS
@given(*DAYS_AND_ZONES, st.times())
def test_wall_clock_boundary_is_the_first_instant_showing_that_time(
    tz: ZoneInfo, day: date, wall: time
) -> None:
    instant = wall_clock_to_utc(day, wall, tz)
    wanted = datetime.combine(day, wall)
    assert instant.astimezone(tz).replace(tzinfo=None) >= wanted
    just_before = instant - timedelta(microseconds=1)
    assert just_before.astimezone(tz).replace(tzinfo=None) < wanted


@PROPERTY_SETTINGS
@given(*DAYS_AND_ZONES, st.times(), st.times())
def test_wall_clock_boundaries_keep_the_order_of_wall_times(
    tz: ZoneInfo, day: date, wall: time, other: time
) -> None:
    earlier, later = sorted((wall, other))
    assert wall_clock_to_utc(day, earlier, tz) <= wall_clock_to_utc(day, later, tz)
