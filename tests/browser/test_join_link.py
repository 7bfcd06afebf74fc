"""Join links: the scheduling API's ``join_url`` (``{PUBLIC_URL}/join/<room id>``) opens
the consultation in the browser.

A visitor who is not signed in gets the sign-in page, and after signing in lands in the
room of that appointment (``room.html?appointment=<id>``, the device check). The
appointment's doctor lands there too. Another patient of the clinic, and a user of
another clinic, read "not found" and nothing of the appointment. A malformed id is a 404.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest
from playwright.async_api import expect

from teleconsult.accounts import store
from teleconsult.core.identity import Role
from tests.auditkit import chained
from tests.browser.conftest import (
    CLINIC_TZ,
    Clinic,
    NewContext,
    NewPage,
    Person,
    Shot,
    sign_in,
)
from tests.browser.roomkit import SERVER_ENV, book_now
from tests.world import PASSWORD, password_hash, unique_email

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
__all__ = ["SERVER_ENV"]  # read by the clinic fixture: the join window is open for "now"

NOT_FOUND = "This consultation link is not one of yours, or it no longer exists."


async def outsider(database_url: str) -> Person:
    """A patient of another clinic."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        clinic = await store.insert_clinic(
            pool, name=f"Autre clinique {secrets.token_hex(2)}", timezone=CLINIC_TZ
        )
        email = unique_email("outsider")
        user = await store.insert_user(
            pool,
            clinic_id=clinic.id,
            email=email,
            password_hash=password_hash(),
            role=Role.PATIENT,
            full_name="Awa Outsider",
            phone=None,
        )
        assert user is not None
        return Person(user.id, email, "Awa Outsider", Role.PATIENT)
    finally:
        await pool.close()


async def test_a_join_link_signs_the_visitor_in_and_opens_their_room(
    clinic: Clinic, database_url: str, new_context: NewContext, new_page: NewPage, shot: Shot
) -> None:
    patient = clinic["patient"]
    appointment = await book_now(clinic, patient, clinic["doctor"])
    link = urlsplit(appointment["consultation"]["join_url"]).path
    assert link == f"/join/{appointment['consultation']['room_id']}"

    context = await new_context(phone=True)
    page = await context.new_page()
    await page.goto(link)
    await page.wait_for_url("**/?next=*")
    await expect(page.locator("#signin-form")).to_be_visible()
    await shot(page, "01-visitor-signs-in")
    await page.locator("#signin-email").fill(patient.email)
    await page.locator("#signin-password").fill(PASSWORD)
    await page.locator("#signin-form button[type=submit]").click()
    await page.wait_for_url(f"**/room.html?appointment={appointment['id']}")
    await expect(page.locator("#check")).to_be_visible()
    await shot(page, "02-patient-in-the-room")

    # Already signed in (the doctor): straight to the room.
    doc = await new_page("doctor")
    await doc.goto(link)
    await doc.wait_for_url(f"**/room.html?appointment={appointment['id']}")

    # Each resolution is audited as a read of the appointment, by whom, via the link.
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        await chained(pool)
        readers = await pool.fetch(
            "SELECT actor_id FROM audit_log WHERE action = 'appointment.read'"
            " AND object_id = $1 AND detail->>'via' = 'join_link' AND outcome = 'success'",
            appointment["id"],
        )
    finally:
        await pool.close()
    assert {r["actor_id"] for r in readers} == {patient.user_id, clinic["doctor"].user_id}


async def test_someone_else_reads_not_found_and_nothing_of_the_appointment(
    clinic: Clinic, database_url: str, new_context: NewContext, new_page: NewPage, shot: Shot
) -> None:
    appointment = await book_now(clinic, clinic["patient"], clinic["doctor"])
    link = urlsplit(appointment["consultation"]["join_url"]).path

    stranger = await outsider(database_url)
    context = await new_context(phone=True)
    page = await context.new_page()
    await sign_in(page, stranger)
    await page.wait_for_selector("body.ready")
    async with page.expect_response("**/api/v1/rooms/*") as answer:
        await page.goto(link)
    assert (await answer.value).status == 404
    await expect(page.locator("#join-error")).to_contain_text(NOT_FOUND)
    assert page.url.endswith(link)  # not sent on to the room
    body = await page.locator("body").inner_text()
    assert clinic["doctor"].full_name not in body and appointment["id"] not in body
    await shot(page, "03-other-clinic-not-found")

    # Another patient of the same clinic: the same answer.
    other = await new_page("patient2")
    await other.goto(link)
    await expect(other.locator("#join-error")).to_contain_text(NOT_FOUND)
    assert other.url.endswith(link)

    # A room that does not exist reads the same; a malformed id is not a page at all.
    await other.goto("/join/" + secrets.token_urlsafe(24))
    await expect(other.locator("#join-error")).to_contain_text(NOT_FOUND)
    async with aiohttp.ClientSession(clinic.base_url) as http:
        async with http.get("/join/not..a room") as resp:
            assert resp.status == 404
        async with http.get(link) as resp:  # the page itself carries nothing of the room
            assert resp.status == 200
            html = await resp.text()
            assert appointment["id"] not in html and "Content-Security-Policy" in resp.headers
