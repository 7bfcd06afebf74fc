"""The whole consultation in real browsers: receptionist, patient (a phone), doctor.

The receptionist books a video appointment on the front desk page; the patient runs the
device and network check and knocks; the doctor sees the knock with the check's figures
and admits; media flows both ways (inbound-rtp bytes of audio and video growing in
getStats()); each side sends a chat message the other decrypts; the audio-only banners
show on both sides; the patient's network is cut and comes back, and the call resumes
(an ICE restart) without the waiting room; the doctor ends the call and writes a note.
Each step is a screenshot under test-artifacts/screenshots/journey-NN-*.png.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, expect

from tests.browser.conftest import Clinic, NewPage, Shot
from tests.browser.roomkit import SERVER_ENV, inbound_bytes, token_of, wait_media_flowing

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
__all__ = ["SERVER_ENV"]  # read by the clinic fixture: the join window is open for "now"


def console_errors(page: Page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


async def notes_of(clinic: Clinic, patient_id: Any) -> list[dict[str, Any]]:
    token = await token_of(clinic, clinic["doctor"])
    async with aiohttp.ClientSession(clinic.base_url) as http:
        async with http.get(
            f"/api/v1/patients/{patient_id}/notes", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            items: list[dict[str, Any]] = (await resp.json())["items"]
            return items


async def test_a_whole_consultation_in_two_browsers(
    clinic: Clinic, new_page: NewPage, shot: Shot
) -> None:
    patient, doctor = clinic["patient"], clinic["doctor"]
    desk = await new_page("receptionist")
    await desk.locator("#patient-q").fill(str(patient.phone)[-9:])
    await desk.locator("#patient-search button[type=submit]").click()
    await desk.get_by_role("button", name=patient.full_name).click()
    await desk.locator("#desk-doctor").select_option(label=doctor.full_name)
    await desk.locator("#desk-service").select_option("video")
    await desk.locator("#desk-slots-search").click()
    await desk.locator("#desk-slots button.slot").first.click()
    await shot(desk, "00-receptionist-books")
    async with desk.expect_response("**/api/v1/appointments") as answer:
        await desk.locator("#desk-confirm button[type=submit]").click()
    appointment = await (await answer.value).json()
    assert appointment["patient_id"] == str(patient.user_id)
    assert appointment["service"] == "video"
    await desk.context.close()

    doc = await new_page("doctor")
    doc_errors = console_errors(doc)
    await expect(doc.locator(f'[data-appointment="{appointment["id"]}"]')).to_be_visible()
    await shot(doc, "01-doctor-day")

    pat = await new_page("patient")
    pat_errors = console_errors(pat)
    await pat.goto(f"/room.html?appointment={appointment['id']}")
    await expect(pat.locator("#check")).to_be_visible()
    await pat.locator("#check-start").click()
    await expect(pat.locator("#check")).to_have_attribute("data-done", "true", timeout=45_000)
    await expect(pat.locator("#check-net-result")).to_contain_text("ms")
    await expect(pat.locator("#check-camera")).to_have_text("Camera: working")
    await shot(pat, "02-patient-check")
    await pat.locator("#check-continue").click()
    await expect(pat.locator("#waiting")).to_be_visible()
    await expect(pat.locator("#waiting-doctor")).to_have_text("The doctor is online.")
    await shot(pat, "03-patient-waiting")

    knock = doc.locator(f'.knock[data-user="{patient.user_id}"]')
    await expect(knock).to_be_visible()
    await expect(knock.locator(".figures")).to_contain_text("ms")
    await expect(knock).to_contain_text(patient.full_name)
    await expect(doc.locator("#knock-badge")).to_have_text("1 waiting")
    await shot(doc, "04-doctor-knock")
    await knock.get_by_role("button", name="Admit").click()

    await expect(pat.locator("#call")).to_be_visible()
    await expect(doc.locator("#call")).to_be_visible()
    await wait_media_flowing(pat)
    await wait_media_flowing(doc)
    await shot(pat, "05-patient-call")
    await shot(doc, "06-doctor-call")

    await pat.locator("#chat textarea").fill("Bonjour docteur, la fièvre est tombée.")
    await pat.locator("#chat button[type=submit]").click()
    await expect(doc.locator("#chat .chat-history")).to_contain_text("la fièvre est tombée")
    await doc.locator("#chat textarea").fill("Very good. Keep drinking water.")
    await doc.locator("#chat button[type=submit]").click()
    await expect(pat.locator("#chat .chat-history")).to_contain_text("Keep drinking water")
    await shot(doc, "07-chat")

    # The audio-only fallback, shown on both sides: the patient's link decides its link is
    # too weak (the decider is forced here; tests/browser/test_room_logic_node.py checks
    # the thresholds), then that it is good again.
    force = (
        "(mode) => { for (const p of window.teleconsultRoom.call.peers.values())"
        " p.decide = () => mode; }"
    )
    await pat.evaluate(force, "audio")
    await expect(pat.locator("#call-audio-only")).to_contain_text("video paused, audio only")
    await expect(doc.locator("#call-audio-only")).to_contain_text("other person's video is paused")
    await shot(doc, "08-doctor-sees-audio-only")
    await pat.evaluate(force, "video")
    await expect(pat.locator("#call-audio-only")).to_be_hidden()
    await expect(doc.locator("#call-audio-only")).to_be_hidden()

    peer_id = await pat.evaluate("() => window.teleconsultRoom.link.peerId")
    # The network goes: nothing new connects (Chromium's offline emulation), and the open
    # connections drop, as they do when a phone changes network. (The emulation alone
    # leaves open WebSockets and WebRTC's UDP untouched, so the page's engine closes.)
    await pat.context.set_offline(True)
    await pat.evaluate(
        """() => { const s = window.teleconsultRoom;
                   s.link.socket.io.engine.close(); s.chat.socket.io.engine.close(); }"""
    )
    await expect(pat.locator("#call-reconnecting")).to_be_visible(timeout=30_000)
    await shot(pat, "09-patient-reconnecting")
    await pat.context.set_offline(False)
    await expect(pat.locator("#call-reconnecting")).to_be_hidden(timeout=45_000)
    restarts = await pat.evaluate(
        "() => [...window.teleconsultRoom.call.peers.values()].map((p) => p.restarts || 0)"
    )
    assert restarts and all(n >= 1 for n in restarts), restarts
    assert await pat.evaluate("() => window.teleconsultRoom.link.peerId") == peer_id
    await expect(pat.locator("#waiting")).to_be_hidden()
    before = await inbound_bytes(pat)
    after = await wait_media_flowing(pat)
    assert before is not None and after["video"] > before["video"]
    await wait_media_flowing(doc)
    await shot(pat, "10-patient-back")

    await doc.locator("#ctl-end").click()
    await expect(pat.locator("#ended")).to_be_visible()
    await expect(doc.locator("#note")).to_be_visible()
    await doc.locator("#note-body").fill("Fever resolved. Review in one week if it returns.")
    await doc.locator("#note-form button[type=submit]").click()
    await expect(doc.locator("#note")).to_be_hidden()
    await shot(doc, "11-doctor-note")
    notes = await notes_of(clinic, patient.user_id)
    assert any("Fever resolved" in n["body"] for n in notes), notes

    assert not pat_errors, pat_errors
    assert not doc_errors, doc_errors
