"""/signal with ``SFU=livekit``, end to end through a real server process (issue 13).

A CONTRACT test: no LiveKit server can run here, so the server process talks to
``tests/livekit_standin.py`` on a real loopback port (LiveKit's Twirp API with the
real livekit-protocol messages, its grant checks, ``join`` with ``revoke_token_ts``,
webhooks signed like LiveKit's and posted to the server's
``/api/v1/webhooks/livekit``). Doctor, patient and an invited interpreter use
/signal with the Python Socket.IO client: the third admission moves the room to
LiveKit with a token per role, the doctor is never locked out, a removal revokes,
a consented recording is sealed and played back, a lost ``egress_ended`` still
ends, and the room is deleted when everyone has left.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import jwt
import pytest
from livekit import api

from teleconsult.client.signal import SignalClient, SignalError
from teleconsult.core.db import create_pool
from teleconsult.core.identity import Role
from teleconsult.rtc import livekit_store
from teleconsult.rtc.livekit_state import room_name
from tests.januskit import wait_for
from tests.livekit_standin import JoinRefused, LiveKitStandIn
from tests.recordingkit import MEDIA_MAGIC
from tests.servers import ServerProcess
from tests.signalkit import open_room
from tests.test_sfu_multiprocess import _signal, _tenant
from tests.world import Account, Tenant

KEY = "APIsignal"
SECRET = "signal-secret-" + "s" * 32
TTL_MINUTES = 5
WEBHOOK_PATH = "/api/v1/webhooks/livekit"
# role: (can_publish, can_subscribe, room_admin, room_record)
RIGHTS = {
    "doctor": (True, True, True, True),
    "patient": (True, True, False, False),
    "guest": (True, True, False, False),
}
Grant = dict[str, Any]


@dataclass
class World:
    """A server process with SFU=livekit, the stand-in it calls, a clinic and an open room."""

    standin: LiveKitStandIn
    server: ServerProcess
    livekit_url: str
    pool: asyncpg.Pool
    people: Tenant
    room: str
    appointment: UUID
    http: aiohttp.ClientSession
    egress_dir: Path
    recordings_dir: Path

    @property
    def lk_room(self) -> str:
        return room_name(self.appointment)

    def signal(self, *roles: Role) -> contextlib.AbstractAsyncContextManager[list[SignalClient]]:
        """/signal clients of these people, connected (closed at the end)."""
        return _signal(*((self.server, self.people[role].access_token) for role in roles))

    async def deliver(self) -> None:
        """LiveKit's webhooks so far, posted to the server; each taken in."""
        statuses = await self.standin.deliver(self.http)
        assert set(statuses) <= {200}, statuses

    async def consent(self) -> None:
        async with self.http.post(
            f"{self.server.base_url}/api/v1/appointments/{self.appointment}/recording-consent",
            headers=self.people[Role.PATIENT].headers,
        ) as resp:
            assert resp.status == 200, await resp.text()

    async def recordings(self) -> list[asyncpg.Record]:
        return list(
            await self.pool.fetch(
                "SELECT id, state, backend_recording_id, content_type, object_name "
                "FROM recordings WHERE appointment_id = $1 ORDER BY created_at",
                self.appointment,
            )
        )

    async def recording_in(self, egress_id: str, state: str) -> asyncpg.Record:
        """The recording of ``egress_id``, once it reaches ``state``."""

        async def reached() -> bool:
            return any(
                r["backend_recording_id"] == egress_id and r["state"] == state
                for r in await self.recordings()
            )

        await wait_for(reached, within=30)
        return next(r for r in await self.recordings() if r["backend_recording_id"] == egress_id)


@contextlib.asynccontextmanager
async def _world(fresh_db: str, tmp_path: Path, **extra: str) -> AsyncIterator[World]:
    standin = LiveKitStandIn(KEY, SECRET)
    egress_dir, recordings_dir = tmp_path / "egress", tmp_path / "sealed"
    async with (
        standin.serving() as url,
        aiohttp.ClientSession() as http,
    ):
        server = ServerProcess(
            fresh_db,
            tmp_path,
            SFU="livekit",
            LIVEKIT_URL=url,
            LIVEKIT_API_KEY=KEY,
            LIVEKIT_API_SECRET=SECRET,
            LIVEKIT_EGRESS_DIR=str(egress_dir),
            LIVEKIT_TOKEN_TTL_MINUTES=str(TTL_MINUTES),
            RECORDING_DIR=str(recordings_dir),
            **extra,
        )
        standin.webhook_url = server.base_url + WEBHOOK_PATH
        pool = await create_pool(fresh_db, min_size=1, max_size=2)
        try:
            await server.start()
            people = await _tenant(pool, server)
            room = await open_room(pool, people)
            appointment = await pool.fetchval(
                "SELECT appointment_id FROM consultations WHERE room_id = $1", room
            )
            yield World(
                standin, server, url, pool, people, room, appointment, http, egress_dir,
                recordings_dir,
            )  # fmt: skip
        finally:
            await server.stop()
            await pool.close()


@pytest.fixture
async def world(fresh_db: str, tmp_path: Path) -> AsyncIterator[World]:
    async with _world(fresh_db, tmp_path) as found:
        yield found


async def _two_in(world: World, doctor: SignalClient, patient: SignalClient) -> None:
    """The doctor, then the patient admitted: peer to peer, no grant."""
    first = await doctor.join(world.room)
    assert (first["mode"], first["backend"]) == ("p2p", "livekit") and "sfu" not in first
    await patient.join(world.room)
    await doctor.call("admit", {"peer_id": patient.peer_id})
    two = await patient.next_event("admitted")
    assert two["mode"] == "p2p" and "sfu" not in two


@contextlib.asynccontextmanager
async def _three_in(
    world: World,
) -> AsyncIterator[tuple[list[SignalClient], tuple[Grant, Grant, Grant]]]:
    """Doctor, patient, then the invited interpreter admitted over /signal; their grants."""
    people = world.people
    async with world.signal(Role.DOCTOR, Role.PATIENT, Role.NURSE) as clients:
        doctor, patient, interpreter = clients
        await _two_in(world, doctor, patient)
        assert "CreateRoom" not in world.standin.calls  # peer to peer: LiveKit not asked
        await doctor.call("invite", {"user_id": str(people[Role.NURSE].user_id)})
        await interpreter.join(world.room)
        await doctor.call("admit", {"peer_id": interpreter.peer_id})
        third = await interpreter.next_event("admitted")
        assert third["mode"] == "sfu"
        told = [await c.next_event("mode") for c in (doctor, patient)]
        assert all(t["mode"] == "sfu" for t in told)
        yield clients, (told[0]["sfu"], told[1]["sfu"], third["sfu"])


def _is_file(path: Path) -> bool:
    return path.is_file()


def _check_grant(world: World, grant: Grant, account: Account, role: str) -> str:
    """A grant as LiveKit would take it: the URL, and a token for this room and identity
    with the role's VideoGrants, minutes long. Answers the token."""
    identity = str(account.user_id)
    keys = {"backend", "identity", "role", "expires_at", "relay", "url", "room", "token"}
    assert set(grant) == keys  # and never a secret
    assert (grant["backend"], grant["relay"], grant["url"]) == ("livekit", False, world.livekit_url)
    assert (grant["role"], grant["identity"], grant["room"]) == (role, identity, world.lk_room)
    claims = api.TokenVerifier(KEY, SECRET).verify(grant["token"])
    video = claims.video
    assert video is not None and claims.identity == identity
    assert (video.room_join, video.room) == (True, world.lk_room)
    got = (video.can_publish, video.can_subscribe, bool(video.room_admin), bool(video.room_record))
    assert got == RIGHTS[role], role
    assert not video.room_create and not video.room_list
    raw = jwt.decode(grant["token"], options={"verify_signature": False})
    assert raw["exp"] - raw["nbf"] - TTL_MINUTES * 60 in (0, 1)  # two clock reads
    assert abs(datetime.fromisoformat(grant["expires_at"]).timestamp() - raw["exp"]) <= 1
    return str(grant["token"])


# --- the move to LiveKit ------------------------------------------------------------------


async def test_the_third_admission_moves_everyone_to_livekit_with_a_token_per_role(
    world: World,
) -> None:
    async with _three_in(world) as (_, (d, p, i)):
        people = world.people
        tokens = [
            _check_grant(world, d, people[Role.DOCTOR], "doctor"),
            _check_grant(world, p, people[Role.PATIENT], "patient"),
            _check_grant(world, i, people[Role.NURSE], "guest"),
        ]
        assert world.standin.calls.count("CreateRoom") == 1
        assert world.lk_room in world.standin.rooms
        for token in tokens:  # each joins LiveKit with its own token
            world.standin.join(token)
        assert set(world.standin.participants[world.lk_room]) == {
            str(people[r].user_id) for r in (Role.DOCTOR, Role.PATIENT, Role.NURSE)
        }
        await world.deliver()  # room_started and the joins, taken in by the server
        async with world.pool.acquire() as conn:
            state = await livekit_store.load_room(conn, world.lk_room)
        assert state is not None and len(state.present()) == 3


async def test_the_doctor_who_comes_back_on_a_new_socket_gets_a_fresh_valid_grant(
    world: World,
) -> None:
    async with _three_in(world) as ((doctor, _, _), (d, _, _)):
        world.standin.join(d["token"])
        await doctor.call("leave")
        async with world.signal(Role.DOCTOR) as (again,):
            back = await again.join(world.room)
            assert back["status"] == "admitted" and back["mode"] == "sfu"
            token = _check_grant(world, back["sfu"], world.people[Role.DOCTOR], "doctor")
            assert back["sfu"]["expires_at"] >= d["expires_at"]
            world.standin.join(token)  # LiveKit takes it (the old connection is replaced)
            doctor_id = str(world.people[Role.DOCTOR].user_id)
            assert doctor_id in world.standin.participants[world.lk_room]
            await world.deliver()


async def test_a_removed_interpreter_is_revoked_at_livekit_and_gets_no_new_grant(
    world: World,
) -> None:
    async with _three_in(world) as ((doctor, _, interpreter), (_, _, i)):
        old = i["token"]
        world.standin.join(old)
        await doctor.call("remove", {"peer_id": interpreter.peer_id})
        assert await interpreter.next_event("removed") == {"by": doctor.peer_id}
        who = str(world.people[Role.NURSE].user_id)
        assert "RemoveParticipant" in world.standin.calls
        nbf = jwt.decode(old, options={"verify_signature": False})["nbf"]
        assert world.standin.revocations[(world.lk_room, who)] > nbf
        assert who not in world.standin.participants[world.lk_room]  # disconnected
        with pytest.raises(JoinRefused, match="revoked"):
            world.standin.join(old)
        await world.deliver()
        # /signal gives it nothing: out of the room, and back only as a waiting guest.
        with pytest.raises(SignalError) as out:
            await interpreter.call("sfu", {"kind": "publish", "sdp": "v=0"})
        assert out.value.code == "not_in_room"
        again = await interpreter.join(world.room)
        assert again["status"] == "waiting" and "sfu" not in again
        assert (await doctor.next_event("waiting"))["peer_id"] == interpreter.peer_id
        with pytest.raises(SignalError) as waiting:
            await interpreter.call("sfu", {"kind": "publish", "sdp": "v=0"})
        assert waiting.value.code == "not_admitted"
        with pytest.raises(JoinRefused, match="revoked"):
            world.standin.join(old)


# --- recordings --------------------------------------------------------------------------


async def test_a_consented_recording_is_sealed_after_egress_ended_and_the_doctor_plays_it(
    world: World,
) -> None:
    await world.consent()
    server = world.server
    async with world.signal(Role.DOCTOR, Role.PATIENT) as (doctor, patient):
        await _two_in(world, doctor, patient)
        started = await doctor.call("record", {"on": True})
        assert started["recording"] is True and started["mode"] == "sfu"
        _check_grant(world, started["sfu"], world.people[Role.DOCTOR], "doctor")
        assert (await patient.next_event("mode"))["mode"] == "sfu"
        assert "StartRoomCompositeEgress" in world.standin.calls
        (egress_id,) = world.standin.egress
        egress = world.standin.egress[egress_id]
        assert egress.room_name == world.lk_room
        for side in (doctor, patient):
            told = await side.next_event("recording")
            while not told["recording"]:  # the consent's own change may come first
                told = await side.next_event("recording")
            assert told == {"consent": True, "recording": True}
        assert (await doctor.call("record", {"on": False}))["recording"] is False
        plain = Path(egress.file_results[0].filename)
        assert _is_file(plain) and plain.parent == world.egress_dir.resolve()
        await world.deliver()  # egress_ended, signed, to the webhook
        ready = await world.recording_in(egress_id, "ready")
    assert ready["content_type"] == "video/mp4"
    assert not _is_file(plain), "the egress file must be gone once sealed"
    media = world.standin.written[egress_id]
    at_rest = (world.recordings_dir / ready["object_name"]).read_bytes()
    for what, magic in MEDIA_MAGIC.items():
        assert magic not in at_rest, f"{what} found in the sealed file"
    assert all(media[i : i + 16] not in at_rest for i in range(0, len(media) - 16, 997))
    url = f"{server.base_url}/api/v1/recordings/{ready['id']}/media"
    headers = world.people[Role.DOCTOR].headers
    async with world.http.get(url, headers=headers) as resp:
        assert resp.status == 200 and resp.content_type == "video/mp4"
        assert await resp.read() == media
    start = len(media) // 2 + 123
    ranged = {**headers, "Range": f"bytes={start}-{start + 999}"}
    async with world.http.get(url, headers=ranged) as resp:
        assert resp.status == 206
        assert await resp.read() == media[start : start + 1000]


async def test_without_consent_record_is_refused_and_livekit_records_nothing(
    world: World,
) -> None:
    async with world.signal(Role.DOCTOR, Role.PATIENT) as (doctor, patient):
        await _two_in(world, doctor, patient)
        with pytest.raises(SignalError) as refused:
            await doctor.call("record", {"on": True})
        assert refused.value.code == "recording_consent_required"
        # Refused before anything moved: no LiveKit room, no egress, no file, no row.
        assert world.standin.calls == []
        assert world.standin.egress == {} and not world.egress_dir.exists()
        assert await world.recordings() == []
        with pytest.raises(SignalError) as not_doctor:
            await patient.call("record", {"on": True})
        assert not_doctor.value.code == "forbidden"
        # The room is still peer to peer: the doctor coming back is told so.
        await doctor.call("leave")
        async with world.signal(Role.DOCTOR) as (again,):
            back = await again.join(world.room)
            assert back["mode"] == "p2p" and "sfu" not in back
        assert world.standin.calls == []


async def test_a_recording_whose_egress_ended_is_lost_still_ends_through_list_egress(
    fresh_db: str, tmp_path: Path
) -> None:
    """The server's own reconciler (every LIVEKIT_EGRESS_CHECK_SECONDS) asks ListEgress
    for a recording with no news: the one LiveKit finished is sealed; the one LiveKit
    forgot ends as failed past LIVEKIT_EGRESS_DEADLINE_SECONDS."""
    short = {"LIVEKIT_EGRESS_CHECK_SECONDS": "1", "LIVEKIT_EGRESS_DEADLINE_SECONDS": "3"}
    async with _world(fresh_db, tmp_path, **short) as world:
        world.standin.withhold = {"egress_ended"}
        await world.consent()
        async with world.signal(Role.DOCTOR, Role.PATIENT) as (doctor, patient):
            await _two_in(world, doctor, patient)
            assert (await doctor.call("record", {"on": True}))["recording"] is True
            (finished,) = world.standin.egress
            assert (await doctor.call("record", {"on": False}))["recording"] is False
            await world.deliver()  # all but egress_ended
            ready = await world.recording_in(finished, "ready")
            assert "ListEgress" in world.standin.calls
            assert ready["content_type"] == "video/mp4"

            assert (await doctor.call("record", {"on": True}))["recording"] is True
            (forgotten,) = set(world.standin.egress) - {finished}
            await world.deliver()  # its start is known...
            del world.standin.egress[forgotten]  # ...then LiveKit forgets it altogether
            assert (await doctor.call("record", {"on": False}))["recording"] is False
            failed = await world.recording_in(forgotten, "failed")
            assert failed["object_name"] is None
        async with world.pool.acquire() as conn:
            assert world.lk_room not in await livekit_store.rooms_with_open_egress(conn)


# --- the end of the room ------------------------------------------------------------------


async def test_the_livekit_room_is_deleted_when_everyone_has_left(world: World) -> None:
    async with _three_in(world) as ((doctor, patient, interpreter), grants):
        for grant in grants:
            world.standin.join(grant["token"])
        for c in (interpreter, patient):
            await c.call("leave")
        assert "DeleteRoom" not in world.standin.calls  # the doctor is still there
        assert world.lk_room in world.standin.rooms
        await doctor.call("leave")
        assert world.standin.calls.count("DeleteRoom") == 1
        assert world.lk_room not in world.standin.rooms
        await world.deliver()  # everyone's participant_left and room_finished
    async with world.pool.acquire() as conn:
        state = await livekit_store.load_room(conn, world.lk_room)
    assert state is not None and state.closed and state.present() == frozenset()


async def test_a_recording_running_when_everyone_leaves_ends_with_the_room_and_is_sealed(
    world: World,
) -> None:
    await world.consent()
    async with world.signal(Role.DOCTOR, Role.PATIENT) as (doctor, patient):
        await _two_in(world, doctor, patient)
        assert (await doctor.call("record", {"on": True}))["recording"] is True
        (egress_id,) = world.standin.egress
        await patient.call("leave")
        await doctor.call("leave")
    # Nobody stopped it: the room's deletion did (LiveKit ends a room's egress with it).
    assert "StopEgress" not in world.standin.calls
    assert world.standin.calls.count("DeleteRoom") == 1
    await world.deliver()
    ready = await world.recording_in(egress_id, "ready")
    url = f"{world.server.base_url}/api/v1/recordings/{ready['id']}/media"
    async with world.http.get(url, headers=world.people[Role.DOCTOR].headers) as resp:
        assert resp.status == 200
        assert await resp.read() == world.standin.written[egress_id]
