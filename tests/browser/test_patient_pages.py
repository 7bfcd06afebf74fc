"""The patient's pages in Chromium on a 360 px phone: find a doctor, search slots, book,
see, move and cancel an appointment, the join link, "my devices"; no patient data in
any URL the page requests."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey
from playwright.async_api import Page

from tests.browser.conftest import Clinic, NewPage, Person, Shot
from tests.world import PASSWORD

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def _api_token(clinic: Clinic, person: Person) -> str:
    async with aiohttp.ClientSession(clinic.base_url) as http:
        login = {"email": person.email, "password": PASSWORD}
        async with http.post("/api/v1/auth/login", json=login) as resp:
            assert resp.status == 200
            token: str = (await resp.json())["access_token"]
            return token


def _watch_urls(page: Page) -> list[str]:
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    return urls


def _assert_no_patient_data(urls: list[str], person: Person) -> None:
    secrets = [person.email, person.full_name, person.full_name.split()[0], str(person.user_id)]
    if person.phone:
        secrets += [person.phone, person.phone.lstrip("+")]
    for url in urls:
        for secret in secrets:
            assert secret.lower() not in url.lower() and secret.replace(" ", "%20") not in url, url


async def _book_first_slot(page: Page, doctor: str, service: str = "video") -> dict[str, Any]:
    await page.locator("#doctor-filter").fill(doctor.split()[-1])
    card = page.locator("#doctor-list .card", has_text=doctor)
    await card.get_by_role("button", name=f"Free times of {doctor}, {service}").click()
    first = page.locator("#slot-days button.slot").first
    await first.wait_for()
    await first.click()
    await page.locator("#confirm-form").wait_for(state="visible")
    async with page.expect_response("**/api/v1/appointments") as answer:
        await page.locator("#confirm-book").click()
    resp = await answer.value
    assert resp.status == 201, await resp.text()
    booked: dict[str, Any] = await resp.json()
    return booked


async def test_book_move_and_cancel(clinic: Clinic, new_page: NewPage, shot: Shot) -> None:
    page = await new_page("patient")
    urls = _watch_urls(page)
    assert page.viewport_size == {"width": 360, "height": 740}
    await shot(page, "1-home")
    doctor = clinic["doctor"].full_name

    booked = await _book_first_slot(page, doctor)
    assert booked["doctor_id"] == str(clinic["doctor"].user_id)
    assert booked["service"] == "video"
    card = page.locator(f'#appointment-list [data-appointment="{booked["id"]}"]')
    await card.wait_for()
    assert doctor in (await card.text_content() or "")
    await page.locator(".toast-ok").first.wait_for()
    await shot(page, "2-booked")

    # The join link is the room page with the appointment's opaque id only.
    join = card.get_by_role("link", name="Join the consultation")
    assert await join.get_attribute("href") == f"/room.html?appointment={booked['id']}"

    # Move it: the slot picker opens for the same doctor; pick another time.
    await card.get_by_role("button", name="Move").click()
    await page.locator("#book-mode").wait_for(state="visible")
    slots = page.locator("#slot-days button.slot")
    await slots.first.wait_for()
    await slots.nth(1).click()
    async with page.expect_response(f"**/appointments/{booked['id']}/reschedule") as answer:
        await page.locator("#confirm-book").click()
    moved = await (await answer.value).json()
    assert moved["id"] == booked["id"] and moved["starts_at"] != booked["starts_at"]
    assert moved["version"] == booked["version"] + 1
    await page.locator("#book-mode").wait_for(state="hidden")
    await shot(page, "3-moved")

    # Cancel it, with a reason.
    card = page.locator(f'#appointment-list [data-appointment="{booked["id"]}"]')
    await card.get_by_role("button", name="Cancel").click()
    await card.locator("input[name=reason]").fill("Travelling")
    await shot(page, "4-cancel")
    async with page.expect_response(f"**/appointments/{booked['id']}/cancel") as answer:
        await card.get_by_role("button", name="Cancel the appointment", exact=True).click()
    assert (await answer.value).status == 200
    await card.wait_for(state="detached")
    _assert_no_patient_data(urls, clinic["patient"])


async def test_a_failed_booking_keeps_the_choice_and_can_be_sent_again(
    clinic: Clinic, new_page: NewPage, shot: Shot
) -> None:
    page = await new_page("patient")
    doctor = clinic["doctor2"].full_name
    await page.locator("#doctor-filter").fill("Okafor")
    await page.get_by_role("button", name=f"Free times of {doctor}, audio").click()
    await page.locator("#slot-days button.slot").first.click()
    text = await page.locator("#confirm-text").text_content()
    await page.context.set_offline(True)
    await page.locator("#confirm-book").click()
    await page.locator("#confirm-form.unsent").wait_for()
    error = await page.locator("#confirm-form .form-error").text_content()
    assert "No connection" in (error or "")
    assert await page.locator("#confirm-text").text_content() == text  # still there
    await shot(page, "5-unsent")
    await page.context.set_offline(False)
    async with page.expect_response("**/api/v1/appointments") as answer:
        await page.locator("#confirm-book").click()
    assert (await answer.value).status == 201
    await page.locator("#confirm-form").wait_for(state="hidden")


async def test_my_devices_lists_and_revokes(clinic: Clinic, new_page: NewPage, shot: Shot) -> None:
    token = await _api_token(clinic, clinic["patient"])
    device = {
        "x25519_public": _b64(bytes(PrivateKey.generate().public_key)),
        "ed25519_public": _b64(bytes(SigningKey.generate().verify_key)),
        "label": "Old phone",
    }
    async with (
        aiohttp.ClientSession(clinic.base_url) as http,
        http.post(
            "/api/v1/devices", json=device, headers={"Authorization": f"Bearer {token}"}
        ) as resp,
    ):
        assert resp.status == 201
        device_id = (await resp.json())["id"]

    page = await new_page("patient")
    item = page.locator(f'#device-list [data-device="{device_id}"]')
    await item.wait_for()
    assert "Old phone" in (await item.text_content() or "")
    await shot(page, "6-devices")
    async with page.expect_response(f"**/api/v1/devices/{device_id}") as answer:
        await item.get_by_role("button", name="Remove the device Old phone").click()
    assert (await answer.value).status == 204
    await item.wait_for(state="detached")
    async with (
        aiohttp.ClientSession(clinic.base_url) as http,
        http.get("/api/v1/devices", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        assert device_id not in [d["id"] for d in (await resp.json())["items"]]
