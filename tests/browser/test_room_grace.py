"""Away longer than the grace period: the server lets the patient's place go, the page
says nothing strange and knocks again, and the doctor admits them a second time.

(Within the grace period the call resumes in place: test_journey.py.) The server runs
with a 2 s grace period and a 1 s sweep so the test need not wait half a minute."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.browser.conftest import Clinic, NewPage, Shot
from tests.browser.roomkit import book_now, wait_media_flowing

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
SERVER_ENV = {
    "JOIN_BEFORE_MINUTES": "120",
    "SIGNAL_GRACE_SECONDS": "2",
    "SIGNAL_HEARTBEAT_SECONDS": "1",
}


async def test_a_patient_back_after_the_grace_period_knocks_again_and_is_admitted_again(
    clinic: Clinic, new_page: NewPage, shot: Shot
) -> None:
    patient, doctor = clinic["patient"], clinic["doctor"]
    appointment = await book_now(clinic, patient, doctor)
    doc = await new_page("doctor")
    pat = await new_page("patient")
    await pat.goto(f"/room.html?appointment={appointment['id']}")
    await pat.locator("#check-continue").click()
    knock = doc.locator(f'.knock[data-user="{patient.user_id}"]')
    await knock.get_by_role("button", name="Admit").click()
    await wait_media_flowing(pat)
    old_peer = await pat.evaluate("() => window.teleconsultRoom.link.peerId")
    in_call = doc.locator(f'#call-people li[data-user="{patient.user_id}"]')
    await expect(in_call).to_be_visible()

    await pat.context.set_offline(True)
    await pat.evaluate(
        """() => { const s = window.teleconsultRoom;
                   s.link.socket.io.engine.close(); s.chat.socket.io.engine.close(); }"""
    )
    # The server drops the peer after the grace period: the doctor's call list empties.
    await expect(in_call).to_have_count(0, timeout=20_000)
    await pat.context.set_offline(False)

    await expect(pat.locator("#waiting")).to_be_visible(timeout=30_000)
    await expect(knock).to_be_visible(timeout=20_000)
    assert await pat.evaluate("() => window.teleconsultRoom.link.peerId") != old_peer
    await shot(doc, "01-doctor-sees-the-knock-again")
    await knock.get_by_role("button", name="Admit").click()
    await expect(pat.locator("#call")).to_be_visible()
    await wait_media_flowing(pat)
    await wait_media_flowing(doc)
