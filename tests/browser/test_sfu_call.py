"""A third person moves the call to the SFU (Janus, run by the server), in the browser.

The doctor and the patient are in a peer-to-peer call; the doctor invites a family member
(another patient of the clinic), who knocks through ``room.html?room=<room id>`` and is
admitted: the room moves to Janus (docs/signaling.md, "SFU rooms"), every page publishes
once and subscribes to the others over /signal's relay, and all three receive audio and
video (inbound-rtp bytes growing). Each page shows one tile per other person, labelled
with their name, playing their video with their audio in it (the subscribe answer says
whose each stream is); the pages with tiles pass axe-core. The doctor removes the family
member, the others' pages drop to one tile, and the family member's old
credentials then fail both ways: the page's own /signal session asking the relay to
publish again (out of the room; back with the old peer id: waiting, no grant,
``not_admitted``), and the Janus grant the page was given (room, feed,
token) presented to the server's Janus itself (VideoRoom error 433, unauthorized)."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page, expect

from teleconsult.rtc.janus import UNAUTHORIZED, JanusError, JanusSession
from tests.browser.conftest import Axe, Clinic, NewPage, Shot, summarise_axe
from tests.browser.roomkit import (
    call_of_two,
    invite_third,
    livekit_loaded,
    remote_tiles,
    wait_media_flowing,
    wait_tiles_playing,
)
from tests.januskit import require_janus

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
SERVER_ENV = {"JOIN_BEFORE_MINUTES": "120", "SFU": "janus"}

# The server starts its own Janus on loopback (teleconsult/rtc/janus_process.py logs it).
JANUS_STARTED = re.compile(r"janus started on (127\.0\.0\.1:\d+)")

# From the page, on its own /signal socket: ask the relay to publish a fresh offer.
PUBLISH_AGAIN = """async () => {
    const pc = new RTCPeerConnection();
    pc.addTransceiver('audio', {direction: 'sendonly'});
    const offer = await pc.createOffer();
    pc.close();
    return await window.teleconsultRoom.link.request('sfu', {kind: 'publish', sdp: offer.sdp});
}"""


def janus_url(clinic: Clinic) -> str:
    found = JANUS_STARTED.findall(clinic.server.log_text())
    assert found, "the server's log does not say where its Janus listens:\n" + (
        clinic.server.log_tail()
    )
    return f"http://{found[-1]}/janus"


async def sfu_grant(page: Page) -> dict[str, Any]:
    """The Janus grant the page was given when admitted to the room on the SFU."""
    state: dict[str, Any] = await page.evaluate("() => window.teleconsultRoom.link.state")
    assert state["mode"] == "sfu", state
    grant: dict[str, Any] = state["sfu"]
    assert grant["backend"] == "janus" and grant["relay"] is True, grant
    return grant


async def join_janus_with(url: str, grant: dict[str, Any]) -> None:
    """Join the VideoRoom as the grant's publisher, straight at Janus (no secret)."""
    async with aiohttp.ClientSession() as http:
        session = await JanusSession.create(http, url)
        try:
            handle = await session.attach()
            body = {
                "request": "join",
                "ptype": "publisher",
                "room": grant["room"],
                "id": grant["feed"],
                "token": grant["token"],
                "display": "rejoining",
            }
            await session.request(handle, body)
        finally:
            await session.destroy()


async def test_a_third_person_moves_the_call_to_janus_and_everyone_sees_everyone(
    clinic: Clinic, new_page: NewPage, shot: Shot, axe: Axe
) -> None:
    require_janus()
    doctor, patient, family = clinic["doctor"], clinic["patient"], clinic["patient2"]
    _, doc, pat = await call_of_two(clinic, new_page)
    fam = await invite_third(clinic, new_page, doc, "patient2")
    room_id = await doc.evaluate("() => window.teleconsultDoctor.desk.link.roomId")

    for page, holder in (
        (pat, "teleconsultRoom"),
        (doc, "teleconsultDoctor"),
        (fam, "teleconsultRoom"),
    ):
        await page.wait_for_function(
            f"() => window.{holder}.call && window.{holder}.call.sfu !== null", timeout=20_000
        )
    for page in (fam, pat, doc):
        await wait_media_flowing(page, attempts=90)
    for page in (fam, pat, doc):
        assert (
            await page.evaluate(
                "(h) => window[h].call.peers.size",
                "teleconsultDoctor" if page is doc else "teleconsultRoom",
            )
            == 0
        )  # the peer-to-peer connections are closed
        assert not await livekit_loaded(page)  # fetched for LiveKit grants only
    # Everyone sees and hears both others, each on a tile with their name.
    others = {
        fam: {doctor.full_name, patient.full_name},
        pat: {doctor.full_name, family.full_name},
        doc: {patient.full_name, family.full_name},
    }
    for page, names in others.items():
        await wait_tiles_playing(page, names)
    await shot(fam, "01-family-on-sfu")
    await shot(doc, "02-doctor-on-sfu")
    for page, name in ((fam, "room (group call)"), (doc, "doctor (group call)")):
        violations = await axe(page)
        print("\n" + summarise_axe(name, violations))
        blocking = [v for v in violations if v["impact"] in ("serious", "critical")]
        assert blocking == [], summarise_axe(name, blocking)

    grant = await sfu_grant(fam)
    peer_id = await fam.evaluate("() => window.teleconsultRoom.link.peerId")
    url = janus_url(clinic)

    # The doctor removes the family member: their page says so, the others stay on.
    card = doc.locator(f'#call-people li[data-user="{family.user_id}"]')
    await card.get_by_role("button", name="Remove").click()
    await expect(fam.locator("#waiting-outcome")).to_have_text(
        "The doctor ended your part of the call."
    )
    await expect(doc.locator(f'#call-people li[data-user="{family.user_id}"]')).to_have_count(0)
    await expect(pat.locator("#call")).to_be_visible()
    # The two left see one tile each: the other one.
    for page, name in ((pat, doctor.full_name), (doc, patient.full_name)):
        await expect(page.locator("#remote-tiles .tile")).to_have_count(1)
        assert [t["name"] for t in await remote_tiles(page)] == [name]

    # Their old credentials no longer work. Through the relay, on the same signed-in
    # socket: the removal took them out of the room.
    answer = await fam.evaluate(PUBLISH_AGAIN)
    assert answer["ok"] is False and answer["error"]["code"] == "not_in_room", answer
    # Coming back with their old peer id only puts them in the waiting room again, with
    # no grant; the relay still refuses them until the doctor admits them anew.
    again = await fam.evaluate(
        "(args) => window.teleconsultRoom.link.request('join', args)",
        {"room_id": room_id, "peer_id": peer_id},
    )
    assert again["ok"] is True and again["status"] == "waiting", again
    assert "sfu" not in again, again
    answer = await fam.evaluate(PUBLISH_AGAIN)
    assert answer["ok"] is False and answer["error"]["code"] == "not_admitted", answer
    # The Janus grant their page held, presented to Janus directly: the token was
    # withdrawn from the room's allowed list.
    with pytest.raises(JanusError) as refused:
        await join_janus_with(url, grant)
    assert refused.value.code == UNAUTHORIZED, refused.value
    # (433 is VideoRoom's "unauthorized": the room exists, the token is not allowed; a
    # wrong room would be 426.) The doctor and the patient are still in the call.
    await expect(pat.locator("#call")).to_be_visible()
    await wait_media_flowing(pat)
    await wait_media_flowing(doc)
