"""The consultation's call forced through the real coturn relay.

Both pages run with ``iceTransportPolicy: "relay"`` (room.html/doctor.html ``?relay=1``)
and the TURN credentials the server puts in the join answer; coturn has the server's
secret. Media flows both ways and the selected candidate pair is relay on both sides."""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.browser.conftest import Clinic, NewPage, Shot
from tests.browser.roomkit import SELECTED_PAIR, SERVER_ENV, admit, book_now, wait_media_flowing
from tests.coturnkit import Coturn

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
__all__ = ["SERVER_ENV"]


async def test_the_call_goes_through_coturn_with_the_servers_credentials(
    clinic: Clinic, turn_relay: Coturn, new_page: NewPage, shot: Shot
) -> None:
    patient, doctor = clinic["patient"], clinic["doctor"]
    appointment = await book_now(clinic, patient, doctor)
    doc = await new_page("doctor")
    await doc.goto("/doctor.html?relay=1")
    await doc.wait_for_selector("body.ready")
    pat = await new_page("patient")
    await pat.goto(f"/room.html?appointment={appointment['id']}&relay=1")
    await pat.locator("#check-continue").click()
    await admit(doc, patient)

    servers = await pat.evaluate("() => window.teleconsultRoom.link.state.ice_servers")
    assert servers and all(u.startswith("turn:") for s in servers for u in s["urls"]), servers
    assert servers[0]["username"] and servers[0]["credential"]

    for page in (pat, doc):
        await wait_media_flowing(page)
        holder = "teleconsultRoom" if page is pat else "teleconsultDoctor"
        pairs = await page.evaluate(SELECTED_PAIR, holder)
        assert pairs, pairs
        for pair in pairs:
            assert pair["local"] == "relay" and pair["remote"] == "relay", pairs
            assert pair["state"] == "succeeded", pairs
    await expect(pat.locator("#call")).to_be_visible()
    await shot(pat, "01-patient-relayed")
