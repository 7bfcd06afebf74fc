"""The browser tests do not depend on the time of day.

The clinic's time zone is picked when the tests start so that it is morning there
(``conftest.pick_clinic_tz``); with the seeded opening hours (06:00-22:00 every day)
that leaves at least six hours of free slots on the clinic's current local day,
whatever the hour in UTC: the room tests book the doctor's next slots ("now"), the
doctor's page lists the local day's consultations, the front desk books tomorrow at
fixed local hours. Checked here for every five minutes of two whole days (across UTC
midnight and every local midnight), and each zone is one Chromium knows, at the offset
Python's tz database gives it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Browser

from tests.browser.conftest import HOME_TZ, ZONES_BY_OFFSET, pick_clinic_tz

OPEN, CLOSE = 6, 22  # conftest._open_hours
MARGIN = timedelta(hours=6)  # how long a test session may run after picking the zone
FIVE_SLOTS = timedelta(hours=3)  # test_knocks books five 30-minute slots in a row


def test_every_minute_of_the_day_has_a_morning_clinic_with_hours_of_slots_left() -> None:
    start = datetime(2026, 12, 6, tzinfo=UTC)
    used = set()
    for step in range(0, 2 * 24 * 60, 5):
        now = start + timedelta(minutes=step)
        name = pick_clinic_tz(now)
        used.add(name)
        local = now.astimezone(ZoneInfo(name))
        latest = (now + MARGIN + FIVE_SLOTS).astimezone(ZoneInfo(name))
        assert OPEN <= local.hour, (now, name, local)
        assert latest.date() == local.date(), (now, name, latest)  # the same local day
        assert latest.hour < CLOSE, (now, name, latest)  # inside the opening hours
    assert HOME_TZ in used
    assert len(used) > 12  # the hour decides the zone


def test_late_evening_utc_and_local_midnight_pick_another_zone() -> None:
    # 17:35 UTC (CI) is 20:35 in Nairobi: past the hours that leave room for five slots.
    ci = datetime(2026, 12, 6, 17, 35, tzinfo=UTC)
    assert pick_clinic_tz(ci) != HOME_TZ
    assert ci.astimezone(ZoneInfo(pick_clinic_tz(ci))).hour == 9
    # Nairobi's midnight, and UTC's.
    for moment in (datetime(2026, 12, 6, 21, 0, tzinfo=UTC), datetime(2026, 12, 7, tzinfo=UTC)):
        assert moment.astimezone(ZoneInfo(pick_clinic_tz(moment))).hour == 9


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.slow
async def test_chromium_knows_every_zone_at_the_offset_python_gives_it(browser: Browser) -> None:
    now = datetime.now(UTC)
    for offset, name in ZONES_BY_OFFSET.items():
        assert now.astimezone(ZoneInfo(name)).utcoffset() == timedelta(hours=offset), name
        context = await browser.new_context(timezone_id=name)
        try:
            page = await context.new_page()
            minutes = await page.evaluate("() => new Date().getTimezoneOffset()")
            assert minutes == -offset * 60, (name, minutes)
        finally:
            await context.close()
