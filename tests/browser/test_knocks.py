"""Five patients knocking at once are all visible to the doctor, each with their own card
(and the badge counts them); a patient declined with a message reads it on the page.

Also axe-core on the room's waiting view and on doctor.html with knocks showing."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from playwright.async_api import Page, expect

from teleconsult.accounts import store
from teleconsult.core.identity import Role
from tests.browser.conftest import (
    Axe,
    Clinic,
    NewContext,
    NewPage,
    Person,
    Shot,
    sign_in,
    summarise_axe,
)
from tests.browser.roomkit import book_now
from tests.world import password_hash, unique_email

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
# Five appointments of the next slots: the join window must be open for all of them.
SERVER_ENV = {"JOIN_BEFORE_MINUTES": "240"}
SERIOUS = {"serious", "critical"}


async def more_patients(database_url: str, clinic: Clinic, count: int) -> list[Person]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        people = []
        for i in range(count):
            name, email = f"Patient Knock {i + 1}", unique_email(f"knock{i}")
            user = await store.insert_user(
                pool,
                clinic_id=clinic.clinic_id,
                email=email,
                password_hash=password_hash(),
                role=Role.PATIENT,
                full_name=name,
                phone=None,
            )
            assert user is not None
            people.append(Person(user.id, email, name, Role.PATIENT))
        return people
    finally:
        await pool.close()


async def knock(new_context: NewContext, person: Person, appointment_id: str) -> Page:
    """Sign in, open the room, skip the check, knock."""
    context = await new_context(phone=True)
    page = await context.new_page()
    await sign_in(page, person)
    # Its landing page has renewed the session (the refresh cookie rotates) before we move on.
    await page.wait_for_selector("body.ready")
    await page.goto(f"/room.html?appointment={appointment_id}")
    await page.locator("#check-continue").click()
    await expect(page.locator("#waiting")).to_be_visible()
    return page


async def test_five_knocks_at_once_are_all_visible_and_a_declined_patient_reads_why(
    clinic: Clinic,
    database_url: str,
    new_page: NewPage,
    new_context: NewContext,
    shot: Shot,
    axe: Axe,
) -> None:
    doctor = clinic["doctor2"]
    patients = await more_patients(database_url, clinic, 5)
    appointments = [await book_now(clinic, p, doctor, service="video") for p in patients]
    doc = await new_page("doctor2")
    pages = await asyncio.gather(
        *(knock(new_context, p, a["id"]) for p, a in zip(patients, appointments, strict=True))
    )
    for p in patients:
        card = doc.locator(f'.knock[data-user="{p.user_id}"]')
        await expect(card).to_be_visible(timeout=20_000)
        await expect(card).to_contain_text(p.full_name)
    await expect(doc.locator(".knock")).to_have_count(5)
    await expect(doc.locator("#knock-badge")).to_have_text("5 waiting")
    assert (await doc.title()).startswith("(5) ")
    await shot(doc, "01-doctor-five-knocks")
    await shot(pages[0], "02-patient-waiting")

    violations = await axe(doc)
    print(summarise_axe("doctor.html (five knocks)", violations))
    assert not [v for v in violations if v["impact"] in SERIOUS], violations
    violations = await axe(pages[0])
    print(summarise_axe("room.html (waiting room, 360 px)", violations))
    assert not [v for v in violations if v["impact"] in SERIOUS], violations

    # Declined with a message: the message comes through the appointment's chat, end to end
    # encrypted, and the page says the doctor cannot see them now.
    declined, page = patients[2], pages[2]
    card = doc.locator(f'.knock[data-user="{declined.user_id}"]')
    await card.locator("summary").click()
    await card.locator("textarea").fill("Please come back tomorrow at 9, I am called away.")
    await card.get_by_role("button", name="Decline").click()
    outcome = page.locator("#waiting-outcome")
    await expect(outcome).to_be_visible(timeout=2_000)
    await expect(page.locator("#chat .chat-history")).to_contain_text(
        "come back tomorrow at 9", timeout=2_000
    )
    await expect(doc.locator(".knock")).to_have_count(4)
    await expect(doc.locator("#knock-badge")).to_have_text("4 waiting")
    await shot(page, "03-patient-declined")
    for other in pages:
        if other is not page:
            await expect(other.locator("#waiting-outcome")).to_be_hidden()


async def test_the_doctor_admits_with_the_keyboard_alone_a_patient_whose_page_is_in_french(
    clinic: Clinic, database_url: str, new_page: NewPage, new_context: NewContext, shot: Shot
) -> None:
    doctor = clinic["doctor"]
    (patient,) = await more_patients(database_url, clinic, 1)
    appointment = await book_now(clinic, patient, doctor, service="video")
    doc = await new_page("doctor")
    context = await new_context(phone=True, lang="fr")
    page = await context.new_page()
    await sign_in(page, patient)
    await page.wait_for_selector("body.ready")
    await page.goto(f"/room.html?appointment={appointment['id']}")
    await expect(page.locator("#check-title")).to_have_text(
        "Avant l'appel : vérifiez votre caméra, votre micro et votre connexion"
    )
    # Keyboard only on the patient's side too: Tab to "Aller en salle d'attente", Enter.
    # The button must be there (shown and usable) before tabbing starts, else the Tabs run
    # past it: the check section stays hidden until the camera answers, while its texts
    # are already translated (a loaded machine showed that race).
    await expect(page.locator("#check-continue")).to_be_visible()
    await expect(page.locator("#check-continue")).to_be_enabled()
    for _ in range(40):
        await page.keyboard.press("Tab")
        if await page.evaluate("() => document.activeElement.id") == "check-continue":
            break
    else:
        raise AssertionError("the waiting-room button cannot be reached with Tab")
    await page.keyboard.press("Enter")
    await expect(page.locator("#waiting-title")).to_have_text("Salle d'attente")

    admit = doc.locator(f'.knock[data-user="{patient.user_id}"] button.primary')
    await expect(admit).to_be_visible()
    await doc.locator("body").focus()
    for _ in range(60):
        await doc.keyboard.press("Tab")
        if await admit.evaluate("(b) => b === document.activeElement"):
            break
    else:
        raise AssertionError("the Admit button cannot be reached with Tab")
    await doc.keyboard.press("Enter")
    await expect(page.locator("#ctl-mute")).to_have_text("Couper le micro")
    await expect(doc.locator("#call")).to_be_visible()
    await shot(page, "04-patient-call-in-french")
