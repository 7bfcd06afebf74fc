"""The room page on LiveKit, in Chromium: a CONTRACT test against a stand-in.

No LiveKit server can run here (no registry ships one), so the server runs with
``SFU=livekit`` against ``tests/livekit_signal_standin.py``: LiveKit's Twirp API
(RoomService, with its grant checks and ``revoke_token_ts``) and the client
signalling endpoint ``/rtc`` that livekit-client talks to, with the real
livekit-protocol messages, token checks as LiveKit makes them, and an aiortc peer
that answers each page's publisher connection and counts the RTP bytes it receives.

What it proves: the pages fetch livekit-client only once a LiveKit grant arrives (not
in the peer-to-peer call before); the server's CSP lets them reach LiveKit's origin;
each page joins with a token that verifies for its identity and the consultation's
room, with the role's rights; it publishes its own camera and microphone (audio and
video RTP bytes keep arriving); a removal by the doctor reaches LiveKit as
RemoveParticipant with ``revoke_token_ts``, the removed page shows it, and its old
token is then refused (401); LiveKit's own ``leave`` (reason PARTICIPANT_REMOVED) is
enough for a page to show that it was removed.

LiveKit's DeleteRoom under a call ends it on every page: the doctor's page shows the
ended state (and the note), room.html its own.

What it does not prove: that a real LiveKit server behaves like the stand-in beyond
the protocol's messages, nor anything about forwarding: the stand-in is not an SFU, so
nobody receives anyone's media here (the Janus test, test_sfu_call.py, covers that). So
no tile appears on these pages: a tile is made when a participant's track is subscribed,
which the stand-in never offers. Which tile a LiveKit participant's track goes to (its
identity, our user id, to the roster's peer) is checked under Node
(test_room_logic_node.py); the tiles themselves with media, on Janus.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import aiohttp
import jwt
import pytest
import pytest_asyncio
from aiohttp import web
from livekit import api
from livekit.protocol import models as models_pb
from livekit.protocol import room as room_pb
from playwright.async_api import Page, expect

from teleconsult.rtc.livekit_state import room_name
from tests.browser.conftest import Clinic, NewPage, Shot
from tests.browser.roomkit import call_of_two, invite_third, livekit_loaded
from tests.livekit_signal_standin import LiveKitSignalStandIn
from tests.servers import free_port

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

PORT = free_port()
KEY = "APIbrowserroom"
SECRET = "browser-room-secret-" + "s" * 32
SERVER_ENV = {
    "JOIN_BEFORE_MINUTES": "120",
    "SFU": "livekit",
    "LIVEKIT_URL": f"ws://127.0.0.1:{PORT}",
    "LIVEKIT_API_KEY": KEY,
    "LIVEKIT_API_SECRET": SECRET,
}

# From a page: join LiveKit with a token through the vendored client, as the page does;
# answers what the client says of the refusal.
CONNECT_WITH = """async ([url, token]) => {
    const { Room } = await import('/static/vendor/livekit-client.js');
    const room = new Room({ singlePeerConnection: false });
    try {
        await room.connect(url, token, { maxRetries: 0 });
        await room.disconnect();
        return { ok: true };
    } catch (err) {
        return { ok: false, reason: err.reason, status: err.status, message: String(err.message) };
    }
}"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def livekit() -> AsyncIterator[LiveKitSignalStandIn]:
    """The stand-in on the port LIVEKIT_URL names (Twirp and /rtc on one origin)."""
    standin = LiveKitSignalStandIn(KEY, SECRET)
    runner = web.AppRunner(standin.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", PORT).start()
    try:
        yield standin
    finally:
        await runner.cleanup()


def holder(page: Page) -> str:
    return "teleconsultDoctor" if "/doctor.html" in page.url else "teleconsultRoom"


async def on_livekit(page: Page) -> None:
    """Until the page's call runs a LiveKit session that is connected."""
    await page.wait_for_function(
        f"""() => {{
            const sfu = window.{holder(page)}.call?.sfu;
            return !!sfu && !!sfu.room && sfu.room.state === 'connected';
        }}""",
        timeout=30_000,
    )


async def wait_published(standin: LiveKitSignalStandIn, identity: str) -> dict[str, int]:
    """Until the stand-in has received more audio AND video bytes from ``identity``
    twice in a row (polled every 0.5 s, at most 90 times); the last count."""
    seen: list[dict[str, int]] = []
    for _ in range(90):
        now = dict(standin.received.get(identity, {}))
        seen = [*seen[-2:], now]
        if len(seen) == 3 and all(
            b.get("audio", 0) > a.get("audio", 0) and b.get("video", 0) > a.get("video", 0)
            for a, b in zip(seen, seen[1:], strict=False)
        ):
            return now
        await asyncio.sleep(0.5)
    raise AssertionError(f"the stand-in did not receive {identity}'s media: {seen}")


async def remove_from_livekit(room: str, identity: str) -> None:
    """RemoveParticipant as LiveKit's own admin API takes it (not through /signal)."""
    async with aiohttp.ClientSession() as http:
        lk = api.LiveKitAPI(f"http://127.0.0.1:{PORT}", KEY, SECRET, session=http)
        await lk.room.remove_participant(
            room_pb.RoomParticipantIdentity(room=room, identity=identity)
        )


async def delete_livekit_room(room: str) -> None:
    """DeleteRoom as LiveKit's own admin API takes it (not through /signal)."""
    async with aiohttp.ClientSession() as http:
        lk = api.LiveKitAPI(f"http://127.0.0.1:{PORT}", KEY, SECRET, session=http)
        await lk.room.delete_room(room_pb.DeleteRoomRequest(room=room))


async def test_three_people_join_livekit_from_their_pages_and_a_removal_sticks(
    clinic: Clinic, new_page: NewPage, shot: Shot, livekit: LiveKitSignalStandIn
) -> None:
    patient, doctor, interpreter = clinic["patient"], clinic["doctor"], clinic["patient2"]
    appointment, doc, pat = await call_of_two(clinic, new_page)
    room = room_name(UUID(appointment["id"]))
    # Peer to peer: nobody has fetched the LiveKit client.
    assert not await livekit_loaded(pat) and not await livekit_loaded(doc)
    # The pages may connect to LiveKit's origin (ws and http, for /rtc and /rtc/validate).
    policy = (await pat.context.request.get("/room.html")).headers["content-security-policy"]
    assert f"ws://127.0.0.1:{PORT}" in policy and f"http://127.0.0.1:{PORT}" in policy, policy

    # The interpreter (invited by the doctor) is the third person: the room moves to LiveKit.
    itp = await invite_third(clinic, new_page, doc, "patient2")

    for page in (itp, pat, doc):
        await on_livekit(page)
        assert await livekit_loaded(page), page.url
        # The peer-to-peer connections are closed.
        assert await page.evaluate(f"() => window.{holder(page)}.call.peers.size") == 0
    assert "CreateRoom" in livekit.calls
    # Each page joined with a token LiveKit's checks accept, for its own identity and
    # this consultation's room, with the right to publish (doctor, patient, guest).
    joined = {who: (where, pub, sub) for who, where, pub, sub in livekit.connected}
    for person in (doctor, patient, interpreter):
        assert joined[str(person.user_id)] == (room, True, True), joined
    # And each page publishes its own camera and microphone.
    for person in (interpreter, patient, doctor):
        await wait_published(livekit, str(person.user_id))
    await shot(itp, "01-interpreter-on-livekit")

    # The doctor removes the interpreter: LiveKit revokes their tokens and drops them.
    grant: dict[str, Any] = await itp.evaluate("() => window.teleconsultRoom.link.state.sfu")
    assert grant["backend"] == "livekit" and grant["relay"] is False, grant
    nbf = jwt.decode(grant["token"], options={"verify_signature": False})["nbf"]
    card = doc.locator(f'#call-people li[data-user="{interpreter.user_id}"]')
    await card.get_by_role("button", name="Remove").click()
    await expect(itp.locator("#waiting-outcome")).to_have_text(
        "The doctor ended your part of the call."
    )
    for _ in range(60):
        if "RemoveParticipant" in livekit.calls:
            break
        await asyncio.sleep(0.25)
    revoked = livekit.revocations.get((room, str(interpreter.user_id)))
    assert revoked is not None and revoked > nbf, (revoked, nbf, livekit.calls)
    assert str(interpreter.user_id) not in livekit.participants[room]
    assert (room, str(interpreter.user_id)) not in livekit.sessions
    # Their old token, presented again by the vendored client: refused (401, revoked).
    again = await itp.evaluate(CONNECT_WITH, [grant["url"], grant["token"]])
    assert again["ok"] is False and again["status"] == 401, again
    assert (str(interpreter.user_id), "token revoked") in livekit.refusals
    await shot(itp, "02-interpreter-removed")
    # The doctor and the patient are still on LiveKit, publishing.
    await expect(pat.locator("#call")).to_be_visible()
    await wait_published(livekit, str(patient.user_id))

    # LiveKit's own leave is enough: the patient removed through LiveKit's API (not
    # /signal, which says nothing) is told PARTICIPANT_REMOVED, and the page says so.
    patient_session = livekit.sessions[(room, str(patient.user_id))]
    await remove_from_livekit(room, str(patient.user_id))
    assert patient_session.left == models_pb.DisconnectReason.PARTICIPANT_REMOVED
    await expect(pat.locator("#waiting-outcome")).to_have_text(
        "The doctor ended your part of the call."
    )
    assert await pat.evaluate("() => window.teleconsultRoom.call") is None


async def test_the_pages_follow_a_livekit_room_deleted_under_the_call(
    clinic: Clinic, new_page: NewPage, shot: Shot, livekit: LiveKitSignalStandIn
) -> None:
    appointment, doc, pat = await call_of_two(clinic, new_page)
    room = room_name(UUID(appointment["id"]))
    itp = await invite_third(clinic, new_page, doc, "patient2")
    for page in (itp, pat, doc):
        await on_livekit(page)

    # LiveKit deletes the room (its admin API, not /signal): every page's call ends.
    await delete_livekit_room(room)
    await expect(doc.locator("#call-ended")).to_have_text("The consultation has ended.")
    await expect(doc.locator("#call")).to_be_hidden()
    await expect(doc.locator("#note")).to_be_visible()  # the note follows, as after End
    assert await doc.evaluate("() => window.teleconsultDoctor.call") is None
    for page in (pat, itp):
        await expect(page.locator("#ended")).to_be_visible()
        assert await page.evaluate("() => window.teleconsultRoom.call") is None
    await shot(doc, "03-doctor-after-room-deleted")
