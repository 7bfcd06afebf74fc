"""/signal with an SFU (SFU=janus, our own Janus on loopback): the room leaves peer to
peer at the third admission, everyone is told with their own grant, the doctor is
never locked out, a removal goes through the SFU, and media is relayed over /signal."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from teleconsult.client.signal import SignalClient, SignalError
from teleconsult.core.errors import ConfigError
from teleconsult.core.identity import Principal, Role
from teleconsult.core.settings import load_settings
from teleconsult.recording.routes import RECORDINGS
from teleconsult.rtc.janus import UNAUTHORIZED, JanusError, JanusSession
from teleconsult.rtc.janus_sfu import JanusSfu
from teleconsult.server.app import POOL, SETTINGS, SFU_BACKEND
from teleconsult.signaling.sfu_bridge import ROLES
from tests.conftest import StartServer, settings_env
from tests.januskit import (
    ICE_INTERFACES,
    SfuPeer,
    assert_streams_are_whose,
    require_janus,
    wait_for,
)
from tests.signalkit import open_room
from tests.test_sfu_janus import _grew, _streams
from tests.test_signaling import _signal, _url
from tests.world import Account, Tenant, make_tenant

Client = TestClient[Any, Any]


@pytest.fixture
async def sfu_server(start_server: StartServer, tmp_path: Path) -> Client:
    require_janus()
    return await start_server(
        SFU="janus",
        JANUS_WORKDIR=str(tmp_path / "janus"),
        JANUS_ICE_ENFORCE_LIST=ICE_INTERFACES,
    )


@pytest.fixture
async def people(sfu_server: Client) -> Tenant:
    return await make_tenant(sfu_server.app[POOL], sfu_server, name="Sfu")


@contextlib.asynccontextmanager
async def _janus_session(client: Client) -> AsyncIterator[JanusSession]:
    """A Janus session of the test's own on the server's SFU, destroyed at the end."""
    sfu = client.app[SFU_BACKEND]
    assert isinstance(sfu, JanusSfu)
    async with aiohttp.ClientSession() as http:
        janus = await JanusSession.create(http, sfu.url)
        try:
            yield janus
        finally:
            await janus.destroy()


Grant = dict[str, Any]


@contextlib.asynccontextmanager
async def _three_in(
    client: Client, tenant: Tenant
) -> AsyncIterator[tuple[str, list[SignalClient], tuple[Grant, Grant, Grant]]]:
    """The room, with the doctor, the patient, then the invited nurse admitted over
    /signal (closed at the end); their three SFU grants."""
    room = await open_room(client.app[POOL], tenant)
    accounts = (tenant[Role.DOCTOR], tenant[Role.PATIENT], tenant[Role.NURSE])
    async with _signal(client, *accounts) as clients:
        doctor, patient, nurse = clients
        first = await doctor.join(room)
        assert (first["mode"], first["backend"]) == ("p2p", "janus") and "sfu" not in first
        await patient.join(room)
        await doctor.call("admit", {"peer_id": patient.peer_id})
        two = await patient.next_event("admitted")
        assert two["mode"] == "p2p" and "sfu" not in two  # two people: still peer to peer
        await doctor.call("invite", {"user_id": str(tenant[Role.NURSE].user_id)})
        await nurse.join(room)
        await doctor.call("admit", {"peer_id": nurse.peer_id})
        third = await nurse.next_event("admitted")
        assert third["mode"] == "sfu"
        told = [await c.next_event("mode") for c in (doctor, patient)]
        assert all(t["mode"] == "sfu" for t in told)
        yield room, clients, (told[0]["sfu"], told[1]["sfu"], third["sfu"])


async def test_the_third_admission_moves_everyone_to_the_sfu_with_own_grants(
    sfu_server: Client, people: Tenant
) -> None:
    async with _three_in(sfu_server, people) as (_, (doctor, patient, nurse), (d, p, n)):
        grants = {"doctor": d, "patient": p, "guest": n}
        for role, grant in grants.items():
            assert grant["backend"] == "janus" and grant["relay"] is True
            assert grant["role"] == role
            assert set(grant) == {
                "backend", "identity", "role", "expires_at", "relay", "room", "token", "feed"
            }  # fmt: skip
        assert len({g["room"] for g in grants.values()}) == 1
        assert len({g["token"] for g in grants.values()}) == 3  # each only its own
        assert d["identity"] == str(people[Role.DOCTOR].user_id)


async def test_the_doctor_who_drops_out_of_an_sfu_room_comes_back_with_a_grant(
    sfu_server: Client, people: Tenant
) -> None:
    async with _three_in(sfu_server, people) as (room, (doctor, patient, nurse), (d, _, _)):
        await doctor.call("leave")
        again = SignalClient(_url(sfu_server), people[Role.DOCTOR].access_token)
        try:
            await again.connect()
            back = await again.join(room)
            assert back["status"] == "admitted" and back["mode"] == "sfu"
            assert back["sfu"]["room"] == d["room"] and back["sfu"]["token"] == d["token"]
        finally:
            await again.close()


async def test_a_removed_guest_cannot_join_the_sfu_again_with_its_old_token(
    sfu_server: Client, people: Tenant
) -> None:
    async with (
        _three_in(sfu_server, people) as (_, (doctor, patient, nurse), (_, _, n)),
        _janus_session(sfu_server) as janus,
    ):
        handle = await janus.attach()
        join = {
            "request": "join",
            "ptype": "publisher",
            "room": n["room"],
            "id": n["feed"],
            "display": n["identity"],
            "token": n["token"],
        }
        await janus.request(handle, join)  # the grant works...
        await doctor.call("remove", {"peer_id": nurse.peer_id})
        assert await nurse.next_event("removed") == {"by": doctor.peer_id}
        handle = await janus.attach()
        with pytest.raises(JanusError) as refused:
            await janus.request(handle, join)  # ...and no more after the removal
        assert refused.value.code == UNAUTHORIZED


async def test_sfu_messages_need_an_sfu_room_and_a_wellformed_body(
    sfu_server: Client, people: Tenant
) -> None:
    room = await open_room(sfu_server.app[POOL], people)
    async with _signal(sfu_server, people[Role.DOCTOR]) as (doctor,):
        await doctor.join(room)
        with pytest.raises(SignalError) as p2p:
            await doctor.call("sfu", {"kind": "publish", "sdp": "v=0"})
        assert p2p.value.code == "conflict"
        for bad in ({"kind": "publish"}, {"kind": "subscribe"}, {"kind": "nope"}):
            with pytest.raises(SignalError) as refused:
                await doctor.call("sfu", bad)
            assert refused.value.code == "validation_failed"


async def test_without_an_sfu_the_answer_says_peer_to_peer(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    room = await open_room(app_pool, tenant)
    async with _signal(client, tenant[Role.DOCTOR]) as (doctor,):
        answer = await doctor.join(room)
        assert (answer["mode"], answer["backend"]) == ("p2p", "none")


@pytest.mark.slow
async def test_three_peers_exchange_media_through_janus_over_signal(
    sfu_server: Client, people: Tenant
) -> None:
    async with _three_in(sfu_server, people) as (_, clients, _):
        # Audio only: aiortc drops the second of two video streams in one subscription.
        media = [SfuPeer(str(i), video=False) for i in range(3)]
        try:
            for c, m in zip(clients, media, strict=True):
                answer = await c.call("sfu", {"kind": "publish", "sdp": await m.offer()})
                await m.published(answer["sdp"])
            for c, m in zip(clients, media, strict=True):
                others = [o.peer_id for o in clients if o is not c]
                # Each hears that the other two went live, then receives them.
                heard = {(await c.next_event("sfu_published", within=30))["peer_id"]}
                heard.add((await c.next_event("sfu_published", within=30))["peer_id"])
                assert heard == set(others)
                offer = await c.call("sfu", {"kind": "subscribe", "peers": others})
                assert_streams_are_whose(offer, others, per_peer=1)  # audio only
                await c.call("sfu", {"kind": "answer", "sdp": await m.answer(offer["sdp"])})
            for m in media:
                await wait_for(lambda m=m: _streams(m, 2))
                before = await m.inbound_packets()
                await wait_for(lambda m=m, before=before: _grew(m, before))
        finally:
            await asyncio.gather(*(m.close() for m in media))


async def _four_tracks_written(app: web.Application, sfu: JanusSfu, appointment: UUID) -> Path:
    """Janus's folder for the room's recording, once it holds the raw audio and video
    of two publishers (four .mjr files of some size)."""
    folder = (
        Path(app[SETTINGS].sfu.janus_workdir) / "recordings" / str(sfu.room_number(appointment))
    )

    async def written() -> bool:
        mjr = list(folder.glob("*.mjr"))
        return len(mjr) == 4 and all(p.stat().st_size > 20_000 for p in mjr)

    await wait_for(written, within=60)
    return folder


def _principal(account: Account) -> Principal:
    return Principal(account.user_id, account.clinic_id, account.role, account.user_id)


@pytest.mark.slow
async def test_a_janus_recording_is_sealed_by_the_recording_store_and_no_plaintext_stays(
    sfu_server: Client, people: Tenant
) -> None:
    app = sfu_server.app
    sfu, recordings = app[SFU_BACKEND], app[RECORDINGS]
    assert isinstance(sfu, JanusSfu)
    room = await open_room(app[POOL], people)
    appointment = await app[POOL].fetchval(
        "SELECT appointment_id FROM consultations WHERE room_id = $1", room
    )
    await recordings.give_consent(_principal(people[Role.PATIENT]), appointment)
    media = [SfuPeer("doctor"), SfuPeer("patient")]
    try:
        for role, m in zip((Role.DOCTOR, Role.PATIENT), media, strict=True):
            who = str(people[role].user_id)
            await sfu.grant(appointment, who, ROLES[role.value])
            await m.published(await sfu.publish(appointment, who, await m.offer()))
            assert await sfu.wait_live(appointment, who)
        backend_id = await sfu.start_recording(appointment)
        started = await recordings.begin(_principal(people[Role.DOCTOR]), appointment, backend_id)
        assert started.state == "recording"
        folder = await _four_tracks_written(app, sfu, appointment)
        await sfu.stop_recording(appointment, backend_id)
        await sfu.wait_recordings()
    finally:
        await asyncio.gather(*(m.close() for m in media))
    sealed = await recordings.find(appointment, backend_id)
    assert sealed is not None and sealed.state == "ready", sealed
    assert sealed.content_type == "video/webm" and (sealed.size or 0) > 0
    assert list(folder.iterdir()) == []  # no .mjr, no part, no plaintext WebM


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SFU": "livekit"}, "SFU"),
        ({"SFU": "mediasoup"}, "SFU"),
        ({"SFU": "janus", "JANUS_RTP_PORT_RANGE": "lots"}, "JANUS_RTP_PORT_RANGE"),
        ({"SFU": "janus", "JANUS_ICE_ENFORCE_LIST": 'lo"; rm'}, "JANUS_ICE_ENFORCE_LIST"),
        ({"SFU": "janus", "JANUS_URL": "ftp://janus"}, "JANUS_URL"),
    ],
)
def test_bad_sfu_settings_name_the_variable(
    database_url: str, tmp_path: Path, env: dict[str, str], variable: str
) -> None:

    with pytest.raises(ConfigError) as bad:
        load_settings(settings_env(database_url, tmp_path, **env))
    assert bad.value.variable == variable


def test_sfu_auto_is_janus_where_janus_is_and_none_elsewhere(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make run`` sets SFU=auto: group calls on Janus when it can run here."""
    env = settings_env(database_url, tmp_path, SFU="auto")
    assert shutil.which("janus"), "the tests need Debian's janus (.ci/run installs it)"
    assert load_settings(env).sfu.kind == "janus"
    given = load_settings(env | {"JANUS_URL": "http://127.0.0.1:8088/janus"}).sfu
    assert (given.kind, given.janus_url) == ("janus", "http://127.0.0.1:8088/janus")
    monkeypatch.setenv("PATH", str(tmp_path))  # no janus binary on this PATH
    assert load_settings(env).sfu.kind == "none"


@pytest.mark.slow
async def test_the_doctor_records_over_signal_only_with_consent_and_both_sides_are_told(
    sfu_server: Client, people: Tenant
) -> None:
    app = sfu_server.app
    room = await open_room(app[POOL], people)
    appointment = await app[POOL].fetchval(
        "SELECT appointment_id FROM consultations WHERE room_id = $1", room
    )
    async with _signal(sfu_server, people[Role.DOCTOR], people[Role.PATIENT]) as (doctor, patient):
        await doctor.join(room)
        await patient.join(room)
        await doctor.call("admit", {"peer_id": patient.peer_id})
        await patient.next_event("admitted")
        with pytest.raises(SignalError) as refused:
            await doctor.call("record", {"on": True})
        assert refused.value.code == "recording_consent_required"
        with pytest.raises(SignalError) as not_doctor:
            await patient.call("record", {"on": True})
        assert not_doctor.value.code == "forbidden"
        resp = await sfu_server.post(
            f"/api/v1/appointments/{appointment}/recording-consent",
            headers=people[Role.PATIENT].headers,
        )
        assert resp.status in (200, 201), await resp.text()
        # A peer-to-peer call moves to the SFU to be recorded.
        started = await doctor.call("record", {"on": True})
        assert started["recording"] is True and started["mode"] == "sfu"
        assert (await patient.next_event("mode"))["mode"] == "sfu"
        for side in (doctor, patient):
            told = await side.next_event("recording")
            while not told["recording"]:  # the consent's own change comes first
                told = await side.next_event("recording")
            assert told == {"consent": True, "recording": True}
        media = [SfuPeer("doctor"), SfuPeer("patient")]
        try:
            for c, m in zip((doctor, patient), media, strict=True):
                answer = await c.call("sfu", {"kind": "publish", "sdp": await m.offer()})
                await m.published(answer["sdp"])
            sfu = app[SFU_BACKEND]
            assert isinstance(sfu, JanusSfu)
            folder = await _four_tracks_written(app, sfu, appointment)
            assert (await doctor.call("record", {"on": False}))["recording"] is False
            await sfu.wait_recordings()
        finally:
            await asyncio.gather(*(m.close() for m in media))
        told = await patient.next_event("recording")
        while told["recording"]:
            told = await patient.next_event("recording")
        assert told == {"consent": True, "recording": False}
    state, found = await app[RECORDINGS].list_for(_principal(people[Role.DOCTOR]), appointment)
    assert not state.recording and [r.state for r in found] == ["ready"]
    assert list(folder.iterdir()) == []


async def test_the_sfu_room_is_destroyed_when_the_last_peer_leaves(
    sfu_server: Client, people: Tenant
) -> None:
    async with (
        _three_in(sfu_server, people) as (_, (doctor, patient, nurse), (d, _, _)),
        _janus_session(sfu_server) as janus,
    ):
        handle = await janus.attach()

        async def exists() -> bool:
            data, _ = await janus.request(handle, {"request": "exists", "room": d["room"]})
            return bool(data["exists"])

        assert await exists()
        for c in (nurse, patient):
            await c.call("leave")
        assert await exists()  # the doctor is still there
        await doctor.call("leave")
        assert not await exists()
