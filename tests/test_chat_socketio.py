"""Chat over Socket.IO (namespace /chat): live, ordered, acknowledged, resumable."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from tests.chatkit import connect, people, receive, socketio_transport
from tests.world import Tenant


def _url(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_websocket_and_polling_users_talk_both_ways(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    base = _url(client)
    async with people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient):
        thread = await doctor.rest.create_thread([patient.user_id])
        d = await connect(doctor, socketio_transport(base, doctor))
        p = await connect(patient, socketio_transport(base, patient, transports=("polling",), encoding="json"), encoding="json")
        d.follow(thread)
        p.follow(thread)
        sent = await d.send(thread, b"hello from the doctor")
        assert sent.seq == 1 and not sent.duplicate
        got = await receive(p, 1)
        assert got[0].plaintext == b"hello from the doctor" and got[0].seq == 1
        await p.send(thread, b"hello from the patient")
        mine_and_theirs = await receive(d, 2)
        assert [m.plaintext for m in mine_and_theirs] == [b"hello from the doctor", b"hello from the patient"]
