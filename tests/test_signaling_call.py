"""A real call: two aiortc peers through /signal, forced through coturn's relay.

The patient waits, the doctor admits, audio and a data channel flow both ways
over relay candidates only (relay-only ICE policy, TURN credentials from the
join answer, coturn with ``use-auth-secret``). Then the patient's signaling
socket is cut; it rejoins with the same peer id, an ICE restart follows, and
data flows again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient

from teleconsult.client.signal import SignalClient
from teleconsult.core.identity import Role
from teleconsult.core.settings import load_settings
from teleconsult.server.app import create_app
from teleconsult.turn.credentials import coturn_auth_config
from tests.conftest import settings_env
from tests.coturnkit import Coturn
from tests.rtckit import CallPeer
from tests.signalkit import open_room
from tests.world import make_tenant

SECRET = "call-test-turn-secret-0123456789"
REALM = "teleconsult.test"


async def test_a_relayed_call_survives_a_cut_signaling_socket(
    aiohttp_client: Any, coturn: Coturn, database_url: str, tmp_path: Path
) -> None:
    await coturn.start(coturn_auth_config([SECRET], REALM))
    env = settings_env(
        database_url,
        tmp_path,
        TURN_SECRETS=SECRET,
        TURN_URIS=f"turn:127.0.0.1:{coturn.port}?transport=udp",
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(load_settings(env)))
    base = str(client.make_url("")).rstrip("/")
    from teleconsult.server.app import POOL

    pool: asyncpg.Pool = client.app[POOL]
    tenant = await make_tenant(pool, client, name="Call")
    room = await open_room(pool, tenant)
    doctor = CallPeer(SignalClient(base, tenant[Role.DOCTOR].access_token))
    patient = CallPeer(SignalClient(base, tenant[Role.PATIENT].access_token))
    rejoined: SignalClient | None = None
    try:
        async with asyncio.timeout(120):
            await doctor.signal.connect()
            await patient.signal.connect()
            d_answer = await doctor.signal.join(room)
            waiting = await patient.signal.join(room)
            assert waiting["status"] == "waiting"
            assert d_answer["ice_servers"][0]["urls"] == [
                f"turn:127.0.0.1:{coturn.port}?transport=udp"
            ]
            doctor.ice_servers = d_answer["ice_servers"]
            await doctor.signal.next_event("waiting")
            await doctor.signal.call("admit", {"peer_id": patient.signal.peer_id})
            admitted = await patient.signal.next_event("admitted")
            patient.ice_servers = admitted["ice_servers"]
            assert doctor.signal.peer_id is not None

            # The newcomer offers; the doctor answers.
            answering = asyncio.create_task(doctor.answer_next_offer())
            await patient.offer_to(doctor.signal.peer_id)
            await answering
            for sdp in (patient.local_sdp, doctor.local_sdp):
                assert "typ relay" in sdp and "typ host" not in sdp
            await patient.exchange("hello doctor")
            await doctor.exchange("hello patient")
            assert await asyncio.wait_for(doctor.received.get(), 30) == "hello doctor"
            assert await asyncio.wait_for(patient.received.get(), 30) == "hello patient"
            assert (await doctor.media_frame()).samples > 0
            assert (await patient.media_frame()).samples > 0

            # The patient's signaling socket dies; the media path is not trusted after it.
            old_peer = patient.signal.peer_id
            assert old_peer is not None
            await patient.signal.cut()
            assert await doctor.signal.next_event("peer_disconnected") == {"peer_id": old_peer}
            rejoined = SignalClient(base, tenant[Role.PATIENT].access_token)
            await rejoined.connect()
            back = await rejoined.join(room, peer_id=old_peer)
            assert back["peer_id"] == old_peer and back["status"] == "admitted"
            assert await doctor.signal.next_event("peer_reconnected") == {"peer_id": old_peer}
            patient.signal = rejoined
            patient.ice_servers = back["ice_servers"]
            answering = asyncio.create_task(doctor.answer_next_offer())
            await patient.offer_to(doctor.signal.peer_id, restart=True)
            restart_offer = await answering
            assert restart_offer["restart"] is True
            await patient.exchange("still there?")
            assert await asyncio.wait_for(doctor.received.get(), 30) == "still there?"
            await doctor.exchange("yes")
            assert await asyncio.wait_for(patient.received.get(), 30) == "yes"
    finally:
        for side in (doctor, patient):
            await side.hang_up()
            await side.signal.close()
        if rejoined is not None:
            await rejoined.close()
    kinds = [
        r["kind"]
        for r in await pool.fetch(
            "SELECT e.kind FROM consultation_events e JOIN consultations c "
            "ON c.id = e.consultation_id WHERE c.room_id = $1 ORDER BY e.id",
            room,
        )
    ]
    assert kinds[:4] == ["joined", "waiting", "admitted", "started"]
    assert "disconnected" in kinds and "reconnected" in kinds
