"""Accessibility and phones: axe-core in Chromium finds no serious or critical violation
on each page (the summary is printed); a patient books with the keyboard alone (Tab and
Enter); each page fits a 360 px screen without sideways scrolling."""

from __future__ import annotations

import pytest
from playwright.async_api import Page

from tests.browser.conftest import Axe, Clinic, NewContext, NewPage, Shot, summarise_axe

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

BLOCKING = {"serious", "critical"}


async def _check(page: Page, axe: Axe, name: str) -> None:
    violations = await axe(page)
    print("\n" + summarise_axe(name, violations))
    blocking = [v for v in violations if v["impact"] in BLOCKING]
    assert blocking == [], summarise_axe(name, blocking)


async def test_axe_sign_in_and_register(new_context: NewContext, axe: Axe) -> None:
    page = await (await new_context(phone=True)).new_page()
    await page.goto("/")
    await page.wait_for_selector("body.ready")
    await _check(page, axe, "sign-in")
    await page.locator("#show-register").click()
    await _check(page, axe, "register")
    french = await (await new_context(phone=True, lang="fr")).new_page()
    await french.goto("/")
    await french.wait_for_selector("body.ready")
    await _check(french, axe, "sign-in (fr)")


async def test_axe_patient_pages(new_page: NewPage, axe: Axe) -> None:
    page = await new_page("patient")
    await page.locator("#doctor-list .card").first.wait_for()
    await _check(page, axe, "patient")
    await page.locator("#doctor-list .card button").first.click()
    await page.locator("#slot-days button.slot").first.click()
    await page.locator("#confirm-form").wait_for(state="visible")
    await _check(page, axe, "patient (slots and confirmation)")
    await page.goto("/account.html")
    await page.wait_for_selector("body.ready")
    await _check(page, axe, "account")


async def test_axe_front_desk(new_page: NewPage, axe: Axe) -> None:
    page = await new_page("admin")
    await page.locator("#feeds .card").first.wait_for()
    await _check(page, axe, "front desk")
    await page.locator("#patient-q").fill("Grace")
    await page.locator("#patient-search button[type=submit]").click()
    await page.get_by_role("button", name="Grace Mwangi").first.click()
    await _check(page, axe, "front desk (booking)")


async def _tab_until(page: Page, label: str, *, limit: int = 80) -> None:
    """Press Tab until the focused element's accessible label starts with ``label``."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(
            "() => { const e = document.activeElement;"
            " return (e.getAttribute('aria-label') || e.textContent || '').trim(); }"
        )
        if focused.startswith(label):
            return
    raise AssertionError(f"{label!r} not reached with Tab")


async def test_a_patient_books_with_the_keyboard_alone(
    clinic: Clinic, new_page: NewPage, shot: Shot
) -> None:
    page = await new_page("patient")
    await page.locator("#doctor-list .card").first.wait_for()
    await _tab_until(page, "Free times of Dr Jean Okafor, audio")
    await page.keyboard.press("Enter")
    await page.locator("#slot-days button.slot").first.wait_for()
    await _tab_until(page, "Choose ")
    await page.keyboard.press("Enter")
    # Focus went to Confirm.
    assert await page.evaluate("() => document.activeElement.id") == "confirm-book"
    await shot(page, "keyboard-confirm")
    async with page.expect_response("**/api/v1/appointments") as answer:
        await page.keyboard.press("Enter")
    booked = await (await answer.value).json()
    assert booked["doctor_id"] == str(clinic["doctor2"].user_id) and booked["service"] == "audio"
    # Focus lands on the new appointment, which the list shows.
    card = page.locator(f'[data-appointment="{booked["id"]}"]')
    await card.wait_for()
    await page.wait_for_function(
        "id => document.activeElement.closest('[data-appointment]')?.dataset.appointment === id",
        arg=booked["id"],
    )
    await shot(page, "keyboard-booked")


async def test_focus_is_visible(new_page: NewPage) -> None:
    page = await new_page("patient")
    await page.locator("#doctor-list .card").first.wait_for()
    await _tab_until(page, "Free times of")
    outline = await page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, parseFloat(s.outlineWidth)]; }"
    )
    assert outline[0] != "none" and outline[1] >= 2


@pytest.mark.parametrize("who", ["patient", "receptionist"])
async def test_pages_fit_a_360_px_screen(new_page: NewPage, shot: Shot, who: str) -> None:
    page = await new_page(who, phone=True)
    await page.wait_for_load_state("networkidle")
    width = await page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 360, f"{who}'s page scrolls sideways ({width} px)"
    await shot(page, f"360px-{who}")
