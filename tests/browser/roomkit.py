"""Helpers of the consultation-room browser tests: booking through the API, reading the
pages' live objects (``window.teleconsultRoom`` / ``window.teleconsultDoctor``), and
waiting for media to flow according to ``getStats()``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from playwright.async_api import Page, expect

from tests.browser.conftest import Clinic, NewPage, Person
from tests.world import PASSWORD

# Every room test books "now": the join window must already be open for the next slot.
SERVER_ENV = {"JOIN_BEFORE_MINUTES": "120"}


async def token_of(clinic: Clinic, person: Person) -> str:
    async with aiohttp.ClientSession(clinic.base_url) as http:
        async with http.post(
            "/api/v1/auth/login", json={"email": person.email, "password": PASSWORD}
        ) as resp:
            assert resp.status == 200, await resp.text()
            token: str = (await resp.json())["access_token"]
            return token


async def book_now(
    clinic: Clinic, patient: Person, doctor: Person, *, service: str = "video", skip: int = 0
) -> dict[str, Any]:
    """The receptionist books the doctor's next free slot (the ``skip``-th) for the patient."""
    token = await token_of(clinic, clinic["receptionist"])
    auth = {"Authorization": f"Bearer {token}"}
    now = datetime.now(UTC)
    query = {
        "from": now.isoformat(),
        "to": (now + timedelta(hours=6)).isoformat(),
        "doctor": str(doctor.user_id),
        "service": service,
    }
    async with aiohttp.ClientSession(clinic.base_url) as http:
        async with http.get("/api/v1/slots", params=query, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            slots = (await resp.json())["items"]
        assert len(slots) > skip, slots
        body = {
            "doctor_id": str(doctor.user_id),
            "patient_id": str(patient.user_id),
            "service": service,
            "starts_at": slots[skip]["starts_at"],
        }
        async with http.post("/api/v1/appointments", json=body, headers=auth) as resp:
            assert resp.status == 201, await resp.text()
            booked: dict[str, Any] = await resp.json()
            return booked


# Bytes received per kind over every inbound-rtp of every peer link of the page's call.
INBOUND_BYTES = """async (holder) => {
    const live = window[holder];
    if (!live || !live.call) return null;
    const all = await live.call.stats();
    const out = {audio: 0, video: 0};
    for (const report of Object.values(all)) {
        report.forEach((s) => {
            if (s.type === 'inbound-rtp') out[s.kind] += s.bytesReceived || 0;
        });
    }
    return out;
}"""

SELECTED_PAIR = """async (holder) => {
    const live = window[holder];
    const all = await live.call.stats();
    const pairs = [];
    for (const report of Object.values(all)) {
        let pair = null;
        report.forEach((s) => {
            if (s.type === 'transport' && s.selectedCandidatePairId) {
                pair = report.get(s.selectedCandidatePairId);
            }
        });
        if (!pair) continue;
        const local = report.get(pair.localCandidateId);
        const remote = report.get(pair.remoteCandidateId);
        pairs.push({local: local && local.candidateType, remote: remote && remote.candidateType,
                    state: pair.state});
    }
    return pairs;
}"""


async def admit(doc: Page, person: Person) -> None:
    """On doctor.html, admit ``person``'s knock."""
    knock = doc.locator(f'.knock[data-user="{person.user_id}"]')
    await knock.get_by_role("button", name="Admit").click()


def holder_of(page: Page) -> str:
    return "teleconsultDoctor" if "/doctor.html" in page.url else "teleconsultRoom"


async def inbound_bytes(page: Page) -> dict[str, int] | None:
    result: dict[str, int] | None = await page.evaluate(INBOUND_BYTES, holder_of(page))
    return result


async def wait_media_flowing(page: Page, *, attempts: int = 60) -> dict[str, int]:
    """Until inbound audio AND video bytes have grown twice in a row (polled every 0.5 s,
    at most ``attempts`` times); returns the last count."""
    seen: list[dict[str, int]] = []
    for _ in range(attempts):
        now = await inbound_bytes(page)
        if now is not None:
            seen = [*seen[-2:], now]
            if len(seen) == 3 and all(
                b["audio"] > a["audio"] and b["video"] > a["video"]
                for a, b in zip(seen, seen[1:], strict=False)
            ):
                return now
        await page.wait_for_timeout(500)
    raise AssertionError(f"media did not flow both ways on {page.url}: {seen}")


async def livekit_loaded(page: Page) -> bool:
    """Whether the page has fetched the vendored LiveKit client (a LiveKit call only)."""
    loaded: bool = await page.evaluate(
        """() => performance.getEntriesByType('resource')
            .some((e) => e.name.includes('/vendor/livekit-client.js'))"""
    )
    return loaded


async def call_of_two(clinic: Clinic, new_page: NewPage) -> tuple[dict[str, Any], Page, Page]:
    """The seeded patient booked with the doctor, both in a peer-to-peer call with media
    flowing: the appointment, the doctor's page and the patient's."""
    appointment = await book_now(clinic, clinic["patient"], clinic["doctor"])
    doc = await new_page("doctor")
    pat = await new_page("patient")
    await pat.goto(f"/room.html?appointment={appointment['id']}")
    await pat.locator("#check-continue").click()
    await admit(doc, clinic["patient"])
    await wait_media_flowing(pat)
    return appointment, doc, pat


async def invite_third(clinic: Clinic, new_page: NewPage, doc: Page, who: str) -> Page:
    """The doctor invites ``who`` (a seeded person), who knocks from room.html?room= and is
    admitted: the third person, so the room moves to the SFU. Their page."""
    person = clinic[who]
    await doc.locator("#invite-user").fill(str(person.user_id))
    await doc.get_by_role("button", name="Invite", exact=True).click()
    await expect(doc.locator("#status")).to_contain_text("Invited")
    room_id = await doc.evaluate("() => window.teleconsultDoctor.desk.link.roomId")
    page = await new_page(who)
    await page.goto(f"/room.html?room={room_id}")
    await expect(page.locator("#waiting")).to_be_visible()
    await admit(doc, person)
    return page


# What each remote tile of a page shows and plays (static/js/room/tiles.js).
TILES = """() => [...document.querySelectorAll('#remote-tiles .tile')].map((tile) => {
    const video = tile.querySelector('video');
    const tracks = video.srcObject ? video.srcObject.getTracks() : [];
    return {
        peer: tile.dataset.peer,
        name: tile.querySelector('.tile-name').textContent,
        label: video.getAttribute('aria-label'),
        width: video.videoWidth,
        time: video.currentTime,
        audio: tracks.some((t) => t.kind === 'audio' && t.readyState === 'live'),
        video: tracks.some((t) => t.kind === 'video' && t.readyState === 'live'),
    };
})"""


async def remote_tiles(page: Page) -> list[dict[str, Any]]:
    """The page's remote tiles: peer id, visible name, the video's aria-label, its
    videoWidth and currentTime, and whether its stream holds live audio and video."""
    tiles: list[dict[str, Any]] = await page.evaluate(TILES)
    return tiles


async def wait_tiles_playing(page: Page, names: set[str], *, attempts: int = 90) -> None:
    """Until the page shows exactly one tile per name in ``names``, each labelled with it,
    each video playing (a picture, videoWidth > 0, and currentTime moving on between two
    looks) with a live audio track in its stream. Polled every 0.5 s, at most
    ``attempts`` times; no timing is asserted."""
    seen: list[dict[str, Any]] = []
    before: dict[str, float] = {}
    for _ in range(attempts):
        seen = await remote_tiles(page)
        ready = (
            sorted(t["name"] for t in seen) == sorted(names)
            and all(t["label"].endswith(t["name"]) for t in seen)
            and all(t["width"] > 0 and t["audio"] and t["video"] for t in seen)
        )
        if ready and before and all(t["time"] > before.get(t["peer"], t["time"]) for t in seen):
            return
        before = {t["peer"]: t["time"] for t in seen} if ready else {}
        await page.wait_for_timeout(500)
    raise AssertionError(f"{page.url} does not play a tile for each of {sorted(names)}: {seen}")
