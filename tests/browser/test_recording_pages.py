"""Recording in the pages (issue 13), through the server's own Janus, in the browser.

The patient allows recording from the room page; the doctor's Record button, disabled
with the reason until then, becomes usable; the doctor records (the peer-to-peer call
moves to Janus) and BOTH pages show "● Recording" (a live region, words not colour);
a reload of the patient's page still shows it (read from the API). The doctor stops;
after the call the recording reaches ``ready`` and plays in the doctor's page through a
playback ticket (``<video src>`` cannot send a bearer token); the patient of another
consultation gets not-found for it. axe-core finds no serious or critical violation on
the room with the banner."""

from __future__ import annotations

import re

import aiohttp
import pytest
from playwright.async_api import expect

from tests.browser.conftest import Axe, Clinic, NewPage, Shot, summarise_axe
from tests.browser.roomkit import admit, book_now, token_of, wait_media_flowing
from tests.januskit import require_janus

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
SERVER_ENV = {"JOIN_BEFORE_MINUTES": "120", "SFU": "janus"}

PLAYED = """(video) => new Promise((resolve) => {
    const done = () => resolve({readyState: video.readyState, currentTime: video.currentTime});
    video.muted = true;
    video.play().catch(() => {});
    const deadline = Date.now() + 15000;
    const look = () => {
        if (video.readyState >= 2 && video.currentTime > 0) return done();
        if (video.error || Date.now() > deadline) return done();
        setTimeout(look, 200);
    };
    look();
})"""


async def test_consent_record_indicator_both_sides_then_play_it_back(
    clinic: Clinic, new_page: NewPage, shot: Shot, axe: Axe
) -> None:
    require_janus()
    patient, doctor = clinic["patient"], clinic["doctor"]
    appointment = await book_now(clinic, patient, doctor)
    doc = await new_page("doctor")
    pat = await new_page("patient")
    await pat.goto(f"/room.html?appointment={appointment['id']}")
    consent = pat.locator("#rec-consent")
    await expect(consent).to_be_visible()
    await expect(pat.locator("#rec-consent-state")).to_have_text(
        "You have not allowed this consultation to be recorded."
    )
    await pat.locator("#check-continue").click()
    await admit(doc, patient)
    await wait_media_flowing(pat)

    # No consent yet: the doctor cannot start, and the page says why.
    record = doc.locator("#rec-toggle")
    await expect(record).to_be_visible()
    await expect(record).to_be_disabled()
    await expect(doc.locator("#rec-why")).to_have_text(
        "Recording is possible once the patient allows it from their page."
    )
    # Asked anyway (as a stale page would), the server refuses in words the page shows.
    refused = await doc.evaluate(
        "() => window.teleconsultDoctor.desk.link.request('record', {on: true})"
    )
    assert refused["ok"] is False
    assert refused["error"]["code"] == "recording_consent_required", refused
    await shot(doc, "01-doctor-waits-for-consent")

    # The patient allows it, in the call; the doctor's button comes alive (/signal event).
    await pat.get_by_role("button", name="Allow this consultation to be recorded").click()
    await expect(pat.locator("#rec-consent-state")).to_have_text(
        "You allow this consultation to be recorded."
    )
    await expect(record).to_be_enabled()
    await expect(doc.locator("#rec-why")).to_have_text("The patient allows recording.")
    await expect(pat.locator("#rec-indicator")).to_be_hidden()

    await record.click()
    for page in (doc, pat):
        await expect(page.locator("#rec-indicator")).to_be_visible(timeout=20_000)
        await expect(page.locator("#rec-indicator")).to_have_text("● Recording")
        await expect(page.locator("#rec-live")).to_have_text("Recording has started.")
    await expect(record).to_have_text("Stop recording")
    for page, holder in ((pat, "teleconsultRoom"), (doc, "teleconsultDoctor")):
        await page.wait_for_function(
            f"() => window.{holder}.call && window.{holder}.call.sfu !== null", timeout=20_000
        )
    await wait_media_flowing(pat, attempts=90)
    await wait_media_flowing(doc, attempts=90)
    await shot(pat, "02-patient-sees-recording")
    await shot(doc, "03-doctor-recording")
    violations = [v for v in await axe(pat) if v["impact"] in ("serious", "critical")]
    assert violations == [], summarise_axe("room.html while recording", violations)

    # A reload shows the state the server has (the API, before any /signal event).
    await pat.reload()
    await pat.wait_for_selector("body.ready")
    await expect(pat.locator("#rec-indicator")).to_be_visible()
    await expect(pat.locator("#rec-consent-state")).to_have_text(
        "You allow this consultation to be recorded."
    )
    await pat.locator("#check-continue").click()  # back into the call: knock, admitted
    await admit(doc, patient)
    await expect(pat.locator("#call")).to_be_visible(timeout=20_000)
    await expect(pat.locator("#rec-indicator")).to_be_visible()
    await wait_media_flowing(doc, attempts=90)  # some more media to record

    await record.click()
    for page in (doc, pat):
        await expect(page.locator("#rec-indicator")).to_be_hidden(timeout=20_000)
    await expect(pat.locator("#rec-live")).to_have_text("Recording has stopped.")
    await expect(record).to_have_text("Record")

    # After the call: the recording is sealed, then plays in the doctor's page.
    await doc.locator("#ctl-end").click()
    item = doc.locator("#recording-list .rec-item")
    await expect(item).to_have_count(1, timeout=30_000)
    await expect(item).to_have_attribute("data-state", "ready", timeout=90_000)
    video = item.locator("video")
    await expect(video).to_have_attribute("src", _ticket_url_pattern())
    played = await video.evaluate(PLAYED)
    assert played["readyState"] >= 2 or played["currentTime"] > 0, played
    await shot(doc, "04-doctor-plays-recording")

    # The patient of another consultation: not found, with or without the doctor's URL.
    recording_id = await item.get_attribute("data-recording")
    src = await video.get_attribute("src")
    assert recording_id and src
    other = await token_of(clinic, clinic["patient2"])
    async with aiohttp.ClientSession(clinic.base_url) as http:
        auth = {"Authorization": f"Bearer {other}"}
        async with http.get(f"/api/v1/recordings/{recording_id}/media", headers=auth) as resp:
            assert resp.status == 404, await resp.text()
        async with http.post(
            f"/api/v1/recordings/{recording_id}/playback-ticket", headers=auth
        ) as resp:
            assert resp.status == 404, await resp.text()
        # The doctor's ticket works only for the doctor's recording: not for the list of
        # another consultation, and it carries no bearer rights (the API still wants one).
        async with http.get(
            f"/api/v1/appointments/{appointment['id']}/recordings", headers=auth
        ) as resp:
            assert resp.status == 404, await resp.text()
        async with http.get(src, headers={"Range": "bytes=0-15"}) as resp:
            assert resp.status == 206, await resp.text()
            assert resp.content_type.split("/")[0] in ("video", "audio"), resp.content_type
            assert len(await resp.read()) == 16


def _ticket_url_pattern() -> re.Pattern[str]:
    return re.compile(r"^/api/v1/recordings/[0-9a-f-]{36}/playback\?ticket=v1\.")
