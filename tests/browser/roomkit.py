"""Helpers of the consultation-room browser tests: booking through the API, reading the
pages' live objects (``window.teleconsultRoom`` / ``window.teleconsultDoctor``), and
waiting for media to flow according to ``getStats()``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from playwright.async_api import Page

from tests.browser.conftest import Clinic, Person
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
