"""The front desk in Chromium: the day's agenda by doctor, booking for a patient found by
name or phone, move, cancel, check-in and no-show, the join link, calendar feeds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest
from playwright.async_api import Page

from tests.browser.conftest import CLINIC_TZ, Axe, Clinic, NewPage, Shot, summarise_axe
from tests.world import PASSWORD

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


async def _token(http: aiohttp.ClientSession, email: str) -> dict[str, str]:
    async with http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD}) as r:
        assert r.status == 200
        return {"Authorization": f"Bearer {(await r.json())['access_token']}"}


async def _book_tomorrow(clinic: Clinic, patient: str, doctor: str, hour: int) -> dict[str, Any]:
    """An appointment tomorrow (clinic time) at ``hour``, booked by the patient via the API."""
    tomorrow = datetime.now(ZoneInfo(CLINIC_TZ)).date() + timedelta(days=1)
    start = datetime(tomorrow.year, tomorrow.month, tomorrow.day, hour, tzinfo=ZoneInfo(CLINIC_TZ))
    body = {
        "doctor_id": str(clinic[doctor].user_id),
        "service": "video",
        "starts_at": start.astimezone(UTC).isoformat(),
    }
    async with aiohttp.ClientSession(clinic.base_url) as http:
        auth = await _token(http, clinic[patient].email)
        async with http.post("/api/v1/appointments", json=body, headers=auth) as resp:
            assert resp.status == 201, await resp.text()
            booked: dict[str, Any] = await resp.json()
            return booked


async def _show_tomorrow(page: Page) -> None:
    async with page.expect_response("**/api/v1/agenda?*"):
        await page.locator("#day-next").click()


async def test_agenda_by_day_and_doctor(
    clinic: Clinic, new_page: NewPage, shot: Shot, axe: Axe
) -> None:
    a = await _book_tomorrow(clinic, "patient", "doctor", 9)
    b = await _book_tomorrow(clinic, "patient2", "doctor2", 10)
    page = await new_page("receptionist")
    await _show_tomorrow(page)
    first = page.locator(f'[data-appointment="{a["id"]}"]')
    second = page.locator(f'[data-appointment="{b["id"]}"]')
    await first.wait_for()
    assert "Grace Mwangi" in (await first.text_content() or "")
    assert "Moussa Traoré" in (await second.text_content() or "")
    groups = page.locator("#agenda-body section.doctor-day h2")
    names = await groups.all_text_contents()
    assert "Dr Amina Diallo" in names and "Dr Jean Okafor" in names
    await shot(page, "1-agenda-all")
    violations = await axe(page)
    print("\n" + summarise_axe("front desk (agenda with appointments)", violations))
    assert [v for v in violations if v["impact"] in ("serious", "critical")] == []
    async with page.expect_response("**/api/v1/agenda?*doctor=*"):
        await page.locator("#agenda-doctor").select_option(label="Dr Jean Okafor")
    await second.wait_for()
    assert await first.count() == 0
    await shot(page, "2-agenda-one-doctor")


async def _started_minutes_ago(appointment_id: str, database_url: str) -> str:
    """Time passes: the appointment began 10 minutes ago (the API books no past time).
    Returns its new start as the agenda shows it (clinic time)."""
    conn = await asyncpg.connect(database_url)
    try:
        start = await conn.fetchval(
            "UPDATE appointments SET starts_at = date_trunc('minute', now()) - interval '10 min',"
            " ends_at = date_trunc('minute', now()) + interval '20 min'"
            " WHERE id = $1 RETURNING starts_at",
            UUID(appointment_id),
        )
    finally:
        await conn.close()
    return str(start.astimezone(ZoneInfo(CLINIC_TZ)).strftime("%H:%M"))


async def test_check_in_no_show_and_join_link(
    clinic: Clinic, new_page: NewPage, shot: Shot, database_url: str
) -> None:
    a = await _book_tomorrow(clinic, "patient", "doctor", 11)
    b = await _book_tomorrow(clinic, "patient2", "doctor2", 13)
    page = await new_page("receptionist")
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await _show_tomorrow(page)
    row = page.locator(f'[data-appointment="{a["id"]}"]')
    check_in = row.get_by_role("button", name="Check in 11:00 Grace Mwangi")
    await check_in.wait_for()
    # Not begun yet: no "no-show" button.
    assert await row.get_by_role("button", name="No-show: 11:00 Grace Mwangi").count() == 0
    async with page.expect_response(f"**/appointments/{a['id']}/check-in") as answer:
        await check_in.click()
    assert (await answer.value).status == 200
    await page.locator(f'[data-appointment="{a["id"]}"]', has_text="checked in").wait_for()

    began = await _started_minutes_ago(b["id"], database_url)
    async with page.expect_response("**/api/v1/agenda?*"):
        await page.locator("#day-today").click()
    other = page.locator(f'[data-appointment="{b["id"]}"]')
    async with page.expect_response(f"**/appointments/{b['id']}/no-show") as answer:
        await other.get_by_role("button", name=f"No-show: {began} Moussa Traoré").click()
    assert (await answer.value).status == 200
    await page.locator(f'[data-appointment="{b["id"]}"]', has_text="did not come").wait_for()
    await _show_tomorrow(page)

    await (
        page.locator(f'[data-appointment="{a["id"]}"]')
        .get_by_role("button", name="Copy join link: 11:00 Grace Mwangi")
        .click()
    )
    await page.locator(".toast-ok", has_text="Link copied").wait_for()
    copied = await page.evaluate("() => navigator.clipboard.readText()")
    assert copied == f"{clinic.base_url}/room.html?appointment={a['id']}"
    await shot(page, "3-checked-in")


async def test_book_move_and_cancel_for_a_patient(
    clinic: Clinic, new_page: NewPage, shot: Shot
) -> None:
    page = await new_page("receptionist")
    # Found by phone number.
    await page.locator("#patient-q").fill("770000002")
    await page.locator("#patient-search button[type=submit]").click()
    await page.get_by_role("button", name="Moussa Traoré").click()
    await page.locator("#desk-doctor").select_option(label="Dr Jean Okafor")
    await page.locator("#desk-service").select_option("audio")
    await page.locator("#desk-slots-search").click()
    await page.locator("#desk-slots button.slot").first.click()
    await shot(page, "4-book-for-patient")
    async with page.expect_response("**/api/v1/appointments") as answer:
        await page.locator("#desk-confirm button[type=submit]").click()
    booked = await (await answer.value).json()
    assert booked["patient_id"] == str(clinic["patient2"].user_id)
    assert booked["doctor_id"] == str(clinic["doctor2"].user_id)
    assert booked["service"] == "audio"

    # Show its day, move it, then cancel it.
    day = datetime.fromisoformat(booked["starts_at"]).astimezone(ZoneInfo(CLINIC_TZ)).date()
    async with page.expect_response("**/api/v1/agenda?*"):
        await page.locator("#agenda-day").fill(day.isoformat())
    row = page.locator(f'[data-appointment="{booked["id"]}"]')
    await row.get_by_role("button", name="Move").click()
    await page.locator("#desk-move").wait_for(state="visible")
    slots = page.locator("#desk-slots button.slot")
    await slots.nth(1).click()
    async with page.expect_response(f"**/appointments/{booked['id']}/reschedule") as answer:
        await page.locator("#desk-confirm button[type=submit]").click()
    moved = await (await answer.value).json()
    assert moved["starts_at"] != booked["starts_at"]

    async with page.expect_response("**/api/v1/agenda?*"):
        await page.locator("#agenda-day").fill(
            datetime.fromisoformat(moved["starts_at"])
            .astimezone(ZoneInfo(CLINIC_TZ))
            .date()
            .isoformat()
        )
    row = page.locator(f'[data-appointment="{booked["id"]}"]')
    await row.get_by_role("button", name="Cancel").click()
    await row.locator("input[name=reason]").fill("Patient called")
    async with page.expect_response(f"**/appointments/{booked['id']}/cancel") as answer:
        await row.get_by_role("button", name="Cancel the appointment", exact=True).click()
    assert (await answer.value).json is not None and (await answer.value).status == 200
    await page.locator(f'[data-appointment="{booked["id"]}"].status-cancelled').wait_for()
    await shot(page, "5-cancelled")


async def test_admin_makes_a_calendar_feed_link(
    clinic: Clinic, new_page: NewPage, shot: Shot
) -> None:
    page = await new_page("admin")
    feeds = page.locator("#feeds")
    await feeds.wait_for(state="visible")
    card = feeds.locator(f'[data-doctor="{clinic["doctor"].user_id}"]')
    async with page.expect_response(
        lambda r: r.url.endswith("/calendar-feeds") and r.request.method == "POST"
    ) as answer:
        await card.get_by_role("button", name="New feed link for Dr Amina Diallo").click()
    assert (await answer.value).status == 201
    url = await card.locator("input.feed-url").input_value()
    assert url.startswith(f"{clinic.base_url}/api/v1/calendar/")
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert "BEGIN:VCALENDAR" in await resp.text()
    await shot(page, "6-feed")


async def test_the_receptionist_sees_no_feed_section(new_page: NewPage) -> None:
    page = await new_page("receptionist")
    assert await page.locator("#feeds").is_hidden()
