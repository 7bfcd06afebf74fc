"""SFU rooms across two server processes (issue 13): two real servers sharing
PostgreSQL, Redis and ONE real Janus (loopback), with the same JANUS_ROOM_KEY.

The doctor's socket is on process A; the patient's and the guest's on B. The third
admission (handled on A) moves the room to the SFU; everyone gets a grant, and
media flows through Janus between aiortc peers, each relayed by the process that
holds its socket. The doctor on A removes the guest whose socket is on B: the
guest's old token is refused by Janus (433), a rejoin is not granted, and a new
admission gets a new token. A recording started on A is stopped from B.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg
import pytest

from teleconsult.accounts import store as accounts
from teleconsult.client.signal import SignalClient, SignalError
from teleconsult.core.errors import Forbidden
from teleconsult.core.identity import Role
from teleconsult.rtc.janus import UNAUTHORIZED, JanusError, JanusSession
from teleconsult.rtc.janus_process import JanusProcess
from teleconsult.rtc.janus_sfu import JanusSfu
from teleconsult.rtc.janus_state import RedisJanusState
from teleconsult.rtc.sfu import SfuEvent, SfuEventKind, SfuRole
from tests.dbutil import REDIS_URL
from tests.januskit import (
    ICE_INTERFACES,
    SfuPeer,
    assert_streams_are_whose,
    require_janus,
    wait_for,
)
from tests.servers import ServerProcess
from tests.signalkit import open_room
from tests.world import PASSWORD, Tenant, make_user

pytestmark = pytest.mark.slow


@contextlib.asynccontextmanager
async def _janus(workdir: Path) -> AsyncIterator[JanusProcess]:
    binary, _ = require_janus()
    process = JanusProcess(binary, workdir, ice_enforce_list=ICE_INTERFACES)
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


@contextlib.asynccontextmanager
async def _two_servers(
    dsn: str, root: Path, janus: JanusProcess
) -> AsyncIterator[tuple[ServerProcess, ServerProcess]]:
    shared = {
        "REDIS_URL": REDIS_URL,
        "SFU": "janus",
        "JANUS_URL": janus.url,
        "JANUS_ROOM_KEY": os.urandom(32).hex(),
        "JANUS_RECORDINGS_DIR": str(janus.recordings),
    }
    if janus.admin_key:
        shared["JANUS_ADMIN_KEY"] = janus.admin_key
    one = ServerProcess(dsn, root, name="a", **shared)
    two = ServerProcess(dsn, root, name="b", **shared)
    try:
        await asyncio.gather(one.start(), two.start())
        yield one, two
    finally:
        await asyncio.gather(one.stop(), two.stop())


async def _tenant(pool: asyncpg.Pool, a: ServerProcess) -> Tenant:
    clinic = await accounts.insert_clinic(pool, name="Two processes", timezone="UTC")
    tenant = Tenant(clinic_id=clinic.id)
    async with aiohttp.ClientSession() as http:
        for role in (Role.DOCTOR, Role.PATIENT, Role.NURSE):
            account = await make_user(pool, clinic.id, role)
            async with http.post(
                a.base_url + "/api/v1/auth/login",
                json={"email": account.email, "password": PASSWORD},
            ) as resp:
                assert resp.status == 200, await resp.text()
                account.access_token = (await resp.json())["access_token"]
            tenant.users[role] = account
    return tenant


@contextlib.asynccontextmanager
async def _signal(*who: tuple[ServerProcess, str]) -> AsyncIterator[list[SignalClient]]:
    clients = [SignalClient(server.base_url, token) for server, token in who]
    try:
        for c in clients:
            await c.connect()
        yield clients
    finally:
        for c in clients:
            await c.close()


async def _receiving(peer: SfuPeer, n: int) -> bool:
    counts = await peer.inbound_packets()
    return len(counts) >= n and all(c > 0 for c in counts.values())


async def _grew(peer: SfuPeer, before: dict[str, int]) -> bool:
    now = await peer.inbound_packets()
    return all(now.get(k, 0) > v for k, v in before.items())


async def _join_with(janus: JanusSession, grant: dict[str, Any]) -> None:
    handle = await janus.attach()
    await janus.request(
        handle,
        {
            "request": "join",
            "ptype": "publisher",
            "room": grant["room"],
            "id": grant["feed"],
            "display": grant["identity"],
            "token": grant["token"],
        },
    )


async def test_an_sfu_room_is_served_by_both_processes(fresh_db: str, tmp_path: Path) -> None:
    async with (
        _janus(tmp_path / "janus") as janus,
        _two_servers(fresh_db, tmp_path, janus) as (a, b),
    ):
        pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2)
        try:
            people = await _tenant(pool, a)
            room = await open_room(pool, people)
        finally:
            await pool.close()
        doctor_token = people[Role.DOCTOR].access_token
        patient_token = people[Role.PATIENT].access_token
        guest_token = people[Role.NURSE].access_token
        async with (
            _signal((a, doctor_token), (b, patient_token), (b, guest_token)) as clients,
            aiohttp.ClientSession() as http,
        ):
            doctor, patient, guest = clients
            assert (await doctor.join(room))["mode"] == "p2p"
            await patient.join(room)
            await doctor.call("admit", {"peer_id": patient.peer_id})
            assert (await patient.next_event("admitted"))["mode"] == "p2p"
            await doctor.call("invite", {"user_id": str(people[Role.NURSE].user_id)})
            await guest.join(room)
            await doctor.call("admit", {"peer_id": guest.peer_id})
            third = await guest.next_event("admitted")  # decided on A, told on B
            assert third["mode"] == "sfu"
            told = [await c.next_event("mode") for c in (doctor, patient)]
            grants = [told[0]["sfu"], told[1]["sfu"], third["sfu"]]
            assert len({g["room"] for g in grants}) == 1
            assert len({g["token"] for g in grants}) == 3
            assert [g["role"] for g in grants] == ["doctor", "patient", "guest"]

            # Media through Janus, each peer relayed by the process holding its socket.
            media = [SfuPeer(str(i), video=False) for i in range(3)]
            try:
                for c, m in zip(clients, media, strict=True):
                    answer = await c.call("sfu", {"kind": "publish", "sdp": await m.offer()})
                    await m.published(answer["sdp"])
                for c, m in zip(clients, media, strict=True):
                    others = [o.peer_id for o in clients if o is not c]
                    heard = {(await c.next_event("sfu_published", within=30))["peer_id"]}
                    heard.add((await c.next_event("sfu_published", within=30))["peer_id"])
                    assert heard == set(others)
                    offer = await c.call("sfu", {"kind": "subscribe", "peers": others})
                    assert_streams_are_whose(offer, others, per_peer=1)  # audio only
                    await c.call("sfu", {"kind": "answer", "sdp": await m.answer(offer["sdp"])})
                for m in media:
                    await wait_for(lambda m=m: _receiving(m, 2))
                    before = await m.inbound_packets()
                    await wait_for(lambda m=m, before=before: _grew(m, before))
            finally:
                await asyncio.gather(*(m.close() for m in media))

            # The doctor on A removes the guest whose socket (and relay) is on B.
            old = grants[2]
            await doctor.call("remove", {"peer_id": guest.peer_id})
            assert await guest.next_event("removed") == {"by": doctor.peer_id}
            janus_session = await JanusSession.create(http, janus.url)
            try:
                with pytest.raises(JanusError) as refused:
                    await _join_with(janus_session, old)
                assert refused.value.code == UNAUTHORIZED
                # Its old relay on B is gone with its place in the room.
                with pytest.raises(SignalError):
                    await guest.call("sfu", {"kind": "publish", "sdp": "v=0"})
                # A rejoin on B waits for the doctor: no grant.
                again = await guest.join(room)
                assert again["status"] == "waiting" and "sfu" not in again
                waiting = await doctor.next_event("waiting")
                assert waiting["peer_id"] == guest.peer_id
                # Admitted anew (on A), the guest gets a new token; the old one stays out.
                await doctor.call("admit", {"peer_id": guest.peer_id})
                back = await guest.next_event("admitted")
                assert back["mode"] == "sfu" and back["sfu"]["token"] != old["token"]
                with pytest.raises(JanusError) as still:
                    await _join_with(janus_session, old)
                assert still.value.code == UNAUTHORIZED
            finally:
                await janus_session.destroy()


async def test_a_recording_started_on_one_process_is_stopped_from_the_other(
    fresh_db: str, tmp_path: Path
) -> None:
    async with (
        _janus(tmp_path / "janus") as janus,
        _two_servers(fresh_db, tmp_path, janus) as (a, b),
    ):
        pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2)
        try:
            people = await _tenant(pool, a)
            room = await open_room(pool, people)
            appointment = await pool.fetchval(
                "SELECT appointment_id FROM consultations WHERE room_id = $1", room
            )
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"{b.base_url}/api/v1/appointments/{appointment}/recording-consent",
                    headers=people[Role.PATIENT].headers,
                ) as resp:
                    assert resp.status in (200, 201), await resp.text()
            doctor_token = people[Role.DOCTOR].access_token
            patient_token = people[Role.PATIENT].access_token
            async with _signal((a, doctor_token), (b, patient_token)) as (doctor, patient):
                await doctor.join(room)
                await patient.join(room)
                await doctor.call("admit", {"peer_id": patient.peer_id})
                await patient.next_event("admitted")
                started = await doctor.call("record", {"on": True})  # on A
                assert started["recording"] is True and started["mode"] == "sfu"
                states = "SELECT state FROM recordings WHERE appointment_id = $1"
                assert [r["state"] for r in await pool.fetch(states, appointment)] == ["recording"]
                # The doctor moves to B and stops it there.
                await doctor.call("leave")
                async with _signal((b, doctor_token)) as (moved,):
                    back = await moved.join(room)
                    assert back["status"] == "admitted" and back["mode"] == "sfu"
                    assert (await moved.call("record", {"on": False}))["recording"] is False

                    async def stopped() -> bool:
                        found = [r["state"] for r in await pool.fetch(states, appointment)]
                        return found != ["recording"] and found != ["sealing"]

                    await wait_for(stopped, within=60)
                    # Nobody published: nothing to seal, so the recording failed, and
                    # is not left running. Started again, it is a new recording.
                    assert (await moved.call("record", {"on": True}))["recording"] is True
                    found = [r["state"] for r in await pool.fetch(states, appointment)]
                    assert sorted(found)[-1] == "recording" and len(found) == 2
        finally:
            await pool.close()


async def test_two_janus_backends_sharing_redis_grant_relay_remove_and_record_each_others(
    tmp_path: Path,
) -> None:
    """The backends of two processes, in one test process: what A grants B relays, what
    A removes B drops (its own relay session too), what A records B stops."""
    _, pp_rec = require_janus()
    key = os.urandom(32)
    async with _janus(tmp_path / "janus") as janus:
        a, b = (
            JanusSfu(
                url=janus.url,
                admin_key=janus.admin_key,
                room_key=key,
                recordings=janus.recordings,
                pp_rec=pp_rec,
                state=RedisJanusState(REDIS_URL),
            )
            for _ in range(2)
        )
        heard: list[SfuEvent] = []

        async def on_b(event: SfuEvent) -> None:
            heard.append(event)

        b.on_event(on_b)
        await a.start()
        await b.start()
        peer = SfuPeer("guest-1", video=False)
        try:
            consultation = uuid4()
            grant = await a.grant(consultation, "guest-1", SfuRole.GUEST)
            await peer.published(await b.publish(consultation, "guest-1", await peer.offer()))
            assert await b.wait_live(consultation, "guest-1")
            same = await b.grant(consultation, "guest-1", SfuRole.GUEST)
            assert same.details == grant.details  # derived alike on both

            recording = await a.start_recording(consultation)
            assert await b.start_recording(consultation) == recording  # one recording
            await b.stop_recording(consultation, recording)
            await a.stop_recording(consultation, recording)  # already stopped: nothing
            await b.wait_recordings()
            ends = [e for e in heard if e.recording_id == recording]
            assert [e.kind for e in ends] in (
                [SfuEventKind.RECORDING_FINISHED],
                [SfuEventKind.RECORDING_FAILED],
            )

            await a.remove(consultation, "guest-1")

            async def left() -> bool:
                return any(e.kind is SfuEventKind.LEFT and e.identity == "guest-1" for e in heard)

            await wait_for(left)  # B heard the kick and dropped the guest's session
            with pytest.raises(Forbidden):
                await b.publish(consultation, "guest-1", "v=0")
            anew = await b.grant(consultation, "guest-1", SfuRole.GUEST)
            assert anew.details["token"] != grant.details["token"]
            await a.close_room(consultation)
        finally:
            await peer.close()
            await b.close()
            await a.close()
