"""LiveKit backend CONTRACT tests (docs/rtc.md, "LiveKit").

A LiveKit server cannot run here, so these run the real backend and the real
webhook route against ``tests/livekit_standin.py``: LiveKit's Twirp API with the
real livekit-protocol messages, its grant checks, its join check with
``revoke_token_ts``, and webhooks signed the way LiveKit signs them. They prove
the contract as far as LiveKit's own libraries define it, not a live server.
"""

from __future__ import annotations

import base64
import hashlib
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit import api
from livekit.protocol import room as room_pb
from livekit.protocol.webhook import WebhookEvent

from teleconsult.core.errors import ConfigError, InfrastructureError
from teleconsult.core.settings import LiveKitSettings, load_settings
from teleconsult.rtc import livekit_store
from teleconsult.rtc.livekit import LiveKitSfu, join_token
from teleconsult.rtc.livekit_routes import LIVEKIT_INTAKE, LIVEKIT_SFU
from teleconsult.rtc.livekit_state import (
    Egress,
    EgressStatus,
    Listed,
    LkEvent,
    RoomState,
    doubtful,
    fold,
    from_json,
    merge_egress,
    reconcile_participants,
    room_name,
    summary,
    to_json,
)
from teleconsult.rtc.livekit_webhooks import LiveKitIntake, parse_event
from teleconsult.rtc.sfu import Sfu, SfuEvent, SfuEventKind, SfuRole
from teleconsult.server.app import AUDIT, POOL, SETTINGS
from tests.conftest import StartServer, settings_env
from tests.livekit_standin import JoinRefused, LiveKitStandIn, Webhook, post_webhook, sign_webhook

KEY = "APIcontract"
SECRET = "contract-secret-" + "s" * 32
WEBHOOK_PATH = "/api/v1/webhooks/livekit"


@dataclass
class Rig:
    standin: LiveKitStandIn
    client: TestClient[Any, Any]
    sfu: LiveKitSfu
    intake: LiveKitIntake
    pool: asyncpg.Pool
    settings: LiveKitSettings
    events: list[SfuEvent]
    # Also hand events to the app's own handler (the recording store's intake).
    forward: bool = False

    @property
    def webhook_url(self) -> str:
        return str(self.client.make_url(WEBHOOK_PATH))

    def intake_at(self, clock: float, *, to_sfu: bool = False) -> LiveKitIntake:
        """Another intake on the same database whose clock reads ``clock``; its events
        go to ``events`` or (``to_sfu``) to the handler registered with the app's Sfu."""

        async def collect(event: SfuEvent) -> None:
            self.events.append(event)

        return LiveKitIntake(
            self.pool,
            self.settings,
            audit=self.client.app[AUDIT],
            lookups=self.sfu,
            deliver=self.sfu.deliver if to_sfu else collect,
            clock=lambda: clock,
        )


@pytest.fixture
async def rig(start_server: StartServer, tmp_path: Path) -> AsyncIterator[Rig]:
    standin = LiveKitStandIn(KEY, SECRET)
    server = TestServer(standin.app(), host="127.0.0.1")
    await server.start_server()
    try:
        client = await start_server(
            LIVEKIT_URL=str(server.make_url("")).rstrip("/"),
            LIVEKIT_API_KEY=KEY,
            LIVEKIT_API_SECRET=SECRET,
            LIVEKIT_EGRESS_DIR=str(tmp_path / "egress"),
            LIVEKIT_TOKEN_TTL_MINUTES="5",
        )
        standin.webhook_url = str(client.make_url(WEBHOOK_PATH))
        sfu = client.app[LIVEKIT_SFU]
        app_handler = sfu.handler
        assert app_handler is not None, "the server hands LiveKit's events to nobody"
        rig = Rig(
            standin=standin,
            client=client,
            sfu=sfu,
            intake=client.app[LIVEKIT_INTAKE],
            pool=client.app[POOL],
            settings=client.app[SETTINGS].livekit,
            events=[],
        )

        async def collect(event: SfuEvent) -> None:
            rig.events.append(event)
            if rig.forward:
                await app_handler(event)

        sfu.on_event(collect)
        yield rig
    finally:
        await server.close()


# -- join tokens and removal --------------------------------------------------------------


def test_join_tokens_carry_each_roles_grants_bound_to_the_room_for_minutes() -> None:
    settings = LiveKitSettings(url="http://lk", api_key=KEY, api_secret=SECRET)
    room = room_name(uuid4())
    expected = {
        # role: (can_publish, can_subscribe, room_admin, room_record)
        SfuRole.DOCTOR: (True, True, True, True),
        SfuRole.PATIENT: (True, True, False, False),
        SfuRole.GUEST: (True, True, False, False),
        SfuRole.OBSERVER: (False, True, False, False),
    }
    for role, (publish, subscribe, admin, record) in expected.items():
        identity = str(uuid4())
        token, expires_at = join_token(settings, room, identity, role, datetime.now(UTC))
        claims = api.TokenVerifier(KEY, SECRET).verify(token)
        video = claims.video
        assert video is not None
        assert claims.identity == identity
        assert (video.room_join, video.room) == (True, room)
        assert (video.can_publish, video.can_subscribe) == (publish, subscribe), role
        assert (bool(video.room_admin), bool(video.room_record)) == (admin, record), role
        assert not video.room_create and not video.room_list
        raw = jwt.decode(token, options={"verify_signature": False})
        # livekit-api reads the clock twice (nbf, exp): a second may tick in between.
        assert raw["exp"] - raw["nbf"] - settings.token_ttl_minutes * 60 in (0, 1)
        assert settings.token_ttl_minutes * 60 <= 3600
        assert abs(expires_at.timestamp() - raw["exp"]) <= 1
    with pytest.raises(jwt.InvalidSignatureError):
        api.TokenVerifier(KEY, "another-secret-" + "x" * 32).verify(token)


async def test_removal_sets_revoke_token_ts_and_the_old_token_no_longer_joins(rig: Rig) -> None:
    consultation = uuid4()
    room = (await rig.sfu.create_room(consultation)).name
    doctor, guest = str(uuid4()), str(uuid4())
    rig.standin.join(
        str((await rig.sfu.grant(consultation, doctor, SfuRole.DOCTOR)).details["token"])
    )
    old = await rig.sfu.grant(consultation, guest, SfuRole.GUEST)
    assert old.details["room"] == room and "secret" not in str(old.details).lower()
    rig.standin.join(str(old.details["token"]))
    assert {p.identity for p in await rig.sfu.participants(consultation)} == {doctor, guest}

    await rig.sfu.remove(consultation, guest)

    nbf = jwt.decode(str(old.details["token"]), options={"verify_signature": False})["nbf"]
    assert rig.standin.revocations[(room, guest)] > nbf
    assert "RemoveParticipant" in rig.standin.calls
    with pytest.raises(JoinRefused, match="revoked"):
        rig.standin.join(str(old.details["token"]))
    assert {p.identity for p in await rig.sfu.participants(consultation)} == {doctor}
    # Removing someone who already left still revokes (LiveKit answers not_found).
    await rig.sfu.remove(consultation, guest)


async def test_room_service_refuses_calls_without_the_right_key_or_grant(rig: Rig) -> None:
    session = aiohttp.ClientSession()
    try:
        wrong = LiveKitSfu(
            LiveKitSettings(url=rig.sfu._url, api_key=KEY, api_secret="w" * 40), session=session
        )
        with pytest.raises(InfrastructureError, match="unauthenticated"):
            await wrong.create_room(uuid4())
        # The stand-in speaks JSON Twirp too, and checks the grant per method.
        consultation = uuid4()
        await rig.sfu.create_room(consultation)
        body = json_format.MessageToJson(
            room_pb.ListParticipantsRequest(room=room_name(consultation))
        )
        for grants, status in (
            (api.VideoGrants(room_admin=True, room=room_name(consultation)), 200),
            (api.VideoGrants(room_admin=True, room="tc-other"), 403),
            (api.VideoGrants(room_create=True), 403),
        ):
            token = api.AccessToken(KEY, SECRET).with_grants(grants).to_jwt()
            async with session.post(
                f"{rig.sfu._url}/twirp/livekit.RoomService/ListParticipants",
                data=body,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            ) as response:
                assert response.status == status, await response.text()
                if status == 200:
                    answer = json_format.Parse(
                        await response.text(), room_pb.ListParticipantsResponse()
                    )
                    assert list(answer.participants) == []
    finally:
        await session.close()


def test_settings_name_what_livekit_lacks(tmp_path: Path) -> None:
    base = settings_env("postgresql://127.0.0.1/x", tmp_path, LIVEKIT_URL="https://lk.example")
    with pytest.raises(ConfigError, match="LIVEKIT_API_KEY"):
        load_settings(base)
    with pytest.raises(ConfigError, match="LIVEKIT_API_SECRET"):
        load_settings({**base, "LIVEKIT_API_KEY": KEY, "LIVEKIT_API_SECRET": "short"})
    with pytest.raises(ConfigError, match="LIVEKIT_TOKEN_TTL_MINUTES"):
        load_settings(
            {
                **base,
                "LIVEKIT_API_KEY": KEY,
                "LIVEKIT_API_SECRET": SECRET,
                "LIVEKIT_TOKEN_TTL_MINUTES": "360",
            }
        )


# -- the pure state machine ---------------------------------------------------------------


def _participant(event: str, identity: str, sid: str, joined_ms: int, at: int) -> LkEvent:
    return LkEvent(f"EV_{event}_{sid}", event, "tc-x", at, identity, sid, joined_ms)


def test_a_left_older_than_the_newest_join_does_not_remove_the_participant() -> None:
    first_join = _participant("participant_joined", "pat", "PA_1", 1_000, 1)
    reconnect = _participant("participant_joined", "pat", "PA_2", 5_000, 5)
    old_left = _participant("participant_left", "pat", "PA_1", 1_000, 6)  # late, for the old sid
    for order in ([first_join, reconnect, old_left], [old_left, reconnect, first_join]):
        assert fold(order).present() == {"pat"}
    # A left that overtook its own joined still removes that connection.
    new_left = _participant("participant_left", "pat", "PA_2", 5_000, 9)
    assert fold([new_left, first_join, reconnect, old_left]).present() == frozenset()
    assert fold([new_left, reconnect]).present() == frozenset()


def test_a_final_recording_stays_final_and_keeps_its_file() -> None:
    started = Egress("EG_1", EgressStatus.ACTIVE, 10, None)
    ended = Egress("EG_1", EgressStatus.COMPLETE, 20, "/x.mp4")
    late_update = Egress("EG_1", EgressStatus.ENDING, 30, None)  # newer clock, not final
    for order in ([started, ended, late_update], [late_update, ended, started]):
        state = RoomState()
        for egress in order:
            state = merge_egress(state, egress)
        assert state.egress["EG_1"].status == EgressStatus.COMPLETE
        assert state.egress["EG_1"].file_path == "/x.mp4"
        assert from_json(to_json(state)) == state


_IDENTITIES = st.sampled_from(["doc", "pat", "guest"])
_SIDS = st.sampled_from(["PA_1", "PA_2", "PA_3"])


@st.composite
def _facts(draw: st.DrawFn) -> LkEvent:
    """Any participant or egress fact; what LiveKit says of one sid or egress is one story."""
    kind = draw(st.sampled_from(["participant_joined", "participant_left", "egress_updated"]))
    at = draw(st.integers(0, 50))
    if kind == "egress_updated":
        egress_id = draw(st.sampled_from(["EG_1", "EG_2"]))
        status = draw(st.sampled_from(list(EgressStatus)))
        file = f"/{egress_id}.mp4" if status == EgressStatus.COMPLETE else None
        egress = Egress(egress_id, status, at * 10 + int(status), file)
        return LkEvent(f"EV_{egress_id}_{at}_{status}", kind, "tc-x", at, egress=egress)
    sid = draw(_SIDS)
    # A sid belongs to one identity and joined once: both are the sid's.
    identity = {"PA_1": "doc", "PA_2": "pat", "PA_3": "pat"}[sid]
    joined_ms = {"PA_1": 1_000, "PA_2": 2_000, "PA_3": 3_000}[sid]
    return LkEvent(f"EV_{kind}_{sid}", kind, "tc-x", at, identity, sid, joined_ms)


@settings(max_examples=300, deadline=None)
@given(st.lists(_facts(), max_size=30), st.randoms(use_true_random=False))
def test_merge_is_commutative_and_idempotent_over_any_facts(
    facts: list[LkEvent], rng: random.Random
) -> None:
    shuffled = facts + facts[: len(facts) // 2]
    rng.shuffle(shuffled)
    assert fold(shuffled) == fold(facts)


def _conforms(sfu: LiveKitSfu) -> Sfu:
    return sfu  # mypy checks LiveKitSfu against the Sfu protocol


# -- a recorded trace ---------------------------------------------------------------------


async def record_trace(rig: Rig) -> tuple[UUID, list[Webhook]]:
    """A consultation with a reconnect, a removal, an observer and two recordings."""
    standin, sfu = rig.standin, rig.sfu
    consultation = uuid4()
    await sfu.create_room(consultation)
    doctor, patient, guest, observer = (str(uuid4()) for _ in range(4))

    async def join(identity: str, role: SfuRole) -> None:
        standin.join(str((await sfu.grant(consultation, identity, role)).details["token"]))

    await join(doctor, SfuRole.DOCTOR)
    await join(patient, SfuRole.PATIENT)
    await join(guest, SfuRole.GUEST)
    first = await sfu.start_recording(consultation)
    await join(patient, SfuRole.PATIENT)  # a reconnect: the old connection leaves
    await sfu.remove(consultation, guest)
    await join(observer, SfuRole.OBSERVER)
    await sfu.stop_recording(consultation, first)
    standin.leave(room_name(consultation), observer)
    second = await sfu.start_recording(consultation)
    await sfu.stop_recording(consultation, second)
    hooks = [
        h
        for h in standin.outbox
        if h.event.room.name == room_name(consultation)
        or h.event.egress_info.room_name == room_name(consultation)
    ]
    return consultation, hooks


def variant(rng: random.Random, hooks: Sequence[Webhook], *, drop: bool) -> list[Webhook]:
    """The trace reordered, with duplicates, and (``drop``) with some events lost."""
    out = [h for h in hooks if not (drop and rng.random() < 0.25)]
    out += [rng.choice(hooks) for _ in range(rng.randint(0, len(hooks)))]
    rng.shuffle(out)
    return out


async def truth_lists(rig: Rig, room: str) -> tuple[list[Listed], list[Egress]]:
    return await rig.sfu.list_participants(room), await rig.sfu.list_egress(room)


def reconciled(state: RoomState, listed: list[Listed], egresses: list[Egress]) -> RoomState:
    state = reconcile_participants(state, listed, int(time.time() * 1000))
    for egress in egresses:
        state = merge_egress(state, egress)
    return state


async def test_merge_survives_1000_permutations_duplications_and_drops(rig: Rig) -> None:
    consultation, hooks = await record_trace(rig)
    events: list[LkEvent] = [parse_event(h.event) for h in hooks]
    truth = fold(events)
    present, recordings = summary(truth)
    assert len(present) == 2 and len(recordings) == 2
    assert all(final and path for final, path in recordings.values())
    listed, egresses = await truth_lists(rig, room_name(consultation))
    assert summary(reconciled(truth, listed, egresses)) == summary(truth)

    rng = random.Random(13)
    by_id = {h.event.id: parse_event(h.event) for h in hooks}
    for round_ in range(1000):
        drop = round_ % 2 == 1
        shuffled = [by_id[h.event.id] for h in variant(rng, hooks, drop=drop)]
        state = fold(shuffled)
        if not drop:  # order and repetition alone change nothing, not even the details
            assert state == truth, round_
        assert summary(reconciled(state, listed, egresses)) == summary(truth), round_


async def test_webhook_intake_of_a_shuffled_trace_ends_like_the_true_trace(rig: Rig) -> None:
    consultation, hooks = await record_trace(rig)
    room = room_name(consultation)
    truth = fold(parse_event(h.event) for h in hooks)
    rng = random.Random(1313)
    shuffled = variant(rng, hooks, drop=True)
    # Make sure an egress_ended and the left of someone gone are among the lost.
    lost = {
        next(h.event.id for h in hooks if h.event.event == "egress_ended"),
        next(
            h.event.id
            for h in hooks
            if h.event.event == "participant_left"
            and h.event.participant.identity not in truth.present()
        ),
    }
    shuffled = [h for h in shuffled if h.event.id not in lost]
    seen: set[str] = set()
    async with aiohttp.ClientSession() as session:
        for hook in shuffled:
            status = await post_webhook(session, rig.webhook_url, hook)
            assert status == (409 if hook.event.id in seen else 200)
            seen.add(hook.event.id)
    await rig.intake.reconcile(room)
    async with rig.pool.acquire() as conn:
        stored = await livekit_store.load_room(conn, room)
    assert stored is not None
    assert summary(stored) == summary(truth)
    finished = [e for e in rig.events if e.kind == SfuEventKind.RECORDING_FINISHED]
    assert sorted(e.recording_id or "" for e in finished) == sorted(truth.egress)
    assert all(_is_file(e.file_path) for e in finished)
    assert all(e.consultation_id == consultation for e in rig.events)
    # Each change was audited, with the state, exactly once.
    async with rig.pool.acquire() as conn:
        actions = await conn.fetch(
            "SELECT action, detail FROM audit_intake WHERE object_id = $1 "
            "UNION ALL SELECT action, detail FROM audit_log WHERE object_id = $1",
            str(consultation),
        )
    recorded = sorted(
        row["detail"]["egress_id"] for row in actions if row["action"] == "rtc.recording.finished"
    )
    assert recorded == sorted(truth.egress)
    joined = [row for row in actions if row["action"] == "rtc.participant.joined"]
    left = [row for row in actions if row["action"] == "rtc.participant.left"]
    assert len(joined) - len(left) == len(truth.present())


def _is_file(path: str | None) -> bool:
    return path is not None and Path(path).is_file()


# -- refusals -----------------------------------------------------------------------------


async def _snapshot(pool: asyncpg.Pool) -> tuple[Any, ...]:
    async with pool.acquire() as conn:
        rooms = await conn.fetch("SELECT room, state FROM livekit_rooms ORDER BY room")
        seen = await conn.fetchval("SELECT count(*) FROM livekit_webhook_events")
    return tuple((r["room"], str(r["state"])) for r in rooms), seen


def _joined_event(room: str, identity: str, *, created_at: int | None = None) -> WebhookEvent:
    now = time.time()
    event = WebhookEvent(event="participant_joined", id="EV_" + uuid4().hex[:12])
    event.created_at = int(now) if created_at is None else created_at
    event.room.name = room
    event.participant.identity = identity
    event.participant.sid = "PA_" + uuid4().hex[:12]
    event.participant.joined_at_ms = int(now * 1000)
    return event


async def test_forged_tampered_and_replayed_webhooks_are_refused_and_change_nothing(
    rig: Rig,
) -> None:
    room = room_name(uuid4())
    good = sign_webhook(_joined_event(room, "doctor"), KEY, SECRET)
    async with aiohttp.ClientSession() as session:
        assert await post_webhook(session, rig.webhook_url, good) == 200
        before = await _snapshot(rig.pool)
        forged = sign_webhook(_joined_event(room, "intruder"), KEY, "f" * 40)
        other_key = sign_webhook(_joined_event(room, "intruder"), "APIother", SECRET)
        tampered = Webhook(good.event, good.body.replace(b"doctor", b"intrude"), good.authorization)
        swapped = Webhook(good.event, forged.body, good.authorization)
        stale = sign_webhook(
            _joined_event(room, "intruder", created_at=int(time.time()) - 3600), KEY, SECRET
        )
        future = sign_webhook(
            _joined_event(room, "intruder", created_at=int(time.time()) + 3600), KEY, SECRET
        )
        unsigned = Webhook(good.event, good.body, "")
        # Signed, fresh, but with names the store cannot keep: 400, not a 500.
        odd = sign_webhook(_joined_event(room, "nul\x00identity"), KEY, SECRET)
        long_room = sign_webhook(_joined_event("tc-" + "r" * 300, "doctor"), KEY, SECRET)
        cases = [
            (forged, 401),
            (other_key, 401),
            (tampered, 401),
            (swapped, 401),
            (unsigned, 401),
            (good, 409),
            (stale, 409),
            (future, 409),
            (odd, 400),
            (long_room, 400),
        ]
        for hook, status in cases:
            headers = {"Content-Type": "application/webhook+json"}
            if hook.authorization:
                headers["Authorization"] = hook.authorization
            async with session.post(rig.webhook_url, data=hook.body, headers=headers) as resp:
                assert resp.status == status, (hook.event.participant.identity, status)
                assert resp.content_type == "application/problem+json"
                problem = await resp.json()
                codes = {401: "bad_signature", 409: "conflict", 400: "validation_failed"}
                assert problem["code"] == codes[status]
        # Not JSON at all, but signed: still refused, still nothing changes.
        junk = b"\xff\xfe not json"
        digest = base64.b64encode(hashlib.sha256(junk).digest()).decode()
        token = api.AccessToken(KEY, SECRET).with_sha256(digest).to_jwt()
        async with session.post(
            rig.webhook_url, data=junk, headers={"Authorization": token}
        ) as resp:
            assert resp.status == 401
    assert await _snapshot(rig.pool) == before


# -- recordings always end ----------------------------------------------------------------


async def test_a_recording_whose_egress_ended_never_comes_still_ends(rig: Rig) -> None:
    rig.standin.withhold = {"egress_ended"}
    consultation = uuid4()
    room = room_name(consultation)
    await rig.sfu.create_room(consultation)
    rig.standin.join(
        str((await rig.sfu.grant(consultation, "doc", SfuRole.DOCTOR)).details["token"])
    )
    known = await rig.sfu.start_recording(consultation)
    lost = await rig.sfu.start_recording(consultation)
    await rig.sfu.stop_recording(consultation, known)
    async with aiohttp.ClientSession() as session:
        assert set(await rig.standin.deliver(session)) == {200}
    # LiveKit forgets the second recording altogether (it never ends, it is not listed).
    del rig.standin.egress[lost]
    async with rig.pool.acquire() as conn:
        state = await livekit_store.load_room(conn, room)
    assert state is not None
    assert {e: s.status.final for e, s in state.egress.items()} == {known: False, lost: False}

    now = time.time()
    # Soon: ListEgress tells the first one's final state; the second waits for its deadline.
    assert await rig.intake_at(now + rig.settings.egress_check_seconds).tick() == 1
    # Past the deadline: the second ends as failed.
    assert await rig.intake_at(now + rig.settings.egress_deadline_seconds + 1).tick() == 1
    async with rig.pool.acquire() as conn:
        state = await livekit_store.load_room(conn, room)
        open_rooms = await livekit_store.rooms_with_open_egress(conn)
    assert state is not None and room not in open_rooms
    assert state.egress[known].status == EgressStatus.COMPLETE
    assert state.egress[lost].status == EgressStatus.FAILED
    kinds = {(e.recording_id, e.kind) for e in rig.events}
    assert (known, SfuEventKind.RECORDING_FINISHED) in kinds
    assert (lost, SfuEventKind.RECORDING_FAILED) in kinds
    finished = next(e for e in rig.events if e.recording_id == known)
    assert _is_file(finished.file_path)
    # A tick with nothing left to do ends nothing twice.
    assert await rig.intake_at(now + 2 * rig.settings.egress_deadline_seconds).tick() == 0
    assert sum(1 for e in rig.events if e.recording_id in (known, lost)) == 2


async def test_a_recording_end_the_handler_failed_on_is_handed_on_again(rig: Rig) -> None:
    calls: list[SfuEvent] = []

    async def flaky(event: SfuEvent) -> None:
        calls.append(event)
        if len([c for c in calls if c.recording_id]) == 1:
            raise RuntimeError("the recording store is down")

    rig.sfu.on_event(flaky)
    consultation = uuid4()
    await rig.sfu.create_room(consultation)
    egress_id = await rig.sfu.start_recording(consultation)
    await rig.sfu.stop_recording(consultation, egress_id)
    async with aiohttp.ClientSession() as session:
        assert set(await rig.standin.deliver(session)) == {200}
    ends = [c for c in calls if c.recording_id == egress_id]
    assert [c.kind for c in ends] == [SfuEventKind.RECORDING_FINISHED]  # and it failed

    later = rig.intake_at(time.time() + rig.settings.egress_check_seconds, to_sfu=True)
    await later.tick()
    await later.tick()  # taken now: not handed on a third time
    ends = [c for c in calls if c.recording_id == egress_id]
    assert len(ends) == 2 and ends[0].event_id == ends[1].event_id
    assert ends[1].file_path == ends[0].file_path and _is_file(ends[1].file_path)
    async with rig.pool.acquire() as conn:
        assert room_name(consultation) not in await livekit_store.rooms_with_open_egress(conn)


async def test_closing_a_room_disconnects_everyone_and_may_be_repeated(rig: Rig) -> None:
    consultation = uuid4()
    room = (await rig.sfu.create_room(consultation)).name
    assert (await rig.sfu.create_room(consultation)).name == room  # idempotent, like LiveKit
    grant = await rig.sfu.grant(consultation, "pat", SfuRole.PATIENT)
    rig.standin.join(str(grant.details["token"]))
    async with aiohttp.ClientSession() as session:
        assert set(await rig.standin.deliver(session)) == {200}
    assert [e.kind for e in rig.events] == [SfuEventKind.JOINED]

    await rig.sfu.close_room(consultation)
    await rig.sfu.close_room(consultation)
    assert room not in rig.standin.rooms
    assert await rig.sfu.participants(consultation) == []
    async with aiohttp.ClientSession() as session:
        assert set(await rig.standin.deliver(session)) == {200}
    assert [(e.kind, e.identity) for e in rig.events][-1] == (SfuEventKind.LEFT, "pat")
    async with rig.pool.acquire() as conn:
        state = await livekit_store.load_room(conn, room)
    assert state is not None and state.closed and state.present() == frozenset()


async def test_the_webhook_route_answers_404_on_a_server_without_livekit(
    client: TestClient[Any, Any],
) -> None:
    hook = sign_webhook(_joined_event(room_name(uuid4()), "doctor"), KEY, SECRET)
    resp = await client.post(
        WEBHOOK_PATH, data=hook.body, headers={"Authorization": hook.authorization}
    )
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"


async def test_a_finished_egress_file_goes_to_the_recording_store(rig: Rig) -> None:
    """The server's handler passes the file to the recording intake; one for a recording
    nobody started (no consent was checked) is removed unsealed."""
    rig.forward = True
    consultation = uuid4()
    await rig.sfu.create_room(consultation)
    egress_id = await rig.sfu.start_recording(consultation)
    await rig.sfu.stop_recording(consultation, egress_id)
    path = rig.standin.egress[egress_id].file_results[0].filename
    assert _is_file(path) and path.startswith(str(rig.settings.egress_dir))
    async with aiohttp.ClientSession() as session:
        assert set(await rig.standin.deliver(session)) == {200}
    assert [e.kind for e in rig.events if e.recording_id] == [SfuEventKind.RECORDING_FINISHED]
    assert not _is_file(path)


def test_events_that_show_a_loss_or_an_overtaking_are_doubtful() -> None:
    joined = _participant("participant_joined", "pat", "PA_1", 1_000, 1)
    left = _participant("participant_left", "pat", "PA_1", 1_000, 2)
    assert doubtful(RoomState(), left)  # its joined is lost or late
    assert not doubtful(RoomState(), joined)
    assert not doubtful(fold([joined]), left)
    assert doubtful(fold([left]), joined)  # a joined after its own left
    final = LkEvent(
        "EV_e1", "egress_ended", "tc-x", 3, egress=Egress("EG", EgressStatus.COMPLETE, 9)
    )
    stale = LkEvent(
        "EV_e2", "egress_updated", "tc-x", 2, egress=Egress("EG", EgressStatus.ACTIVE, 5)
    )
    assert doubtful(fold([final]), stale) and not doubtful(fold([stale]), final)


async def test_a_lost_participant_left_is_found_out_by_asking_livekit(rig: Rig) -> None:
    rig.standin.withhold = {"participant_left"}
    consultation = uuid4()
    room = room_name(consultation)
    await rig.sfu.create_room(consultation)
    for identity, role in (("doc", SfuRole.DOCTOR), ("guest", SfuRole.GUEST)):
        rig.standin.join(str((await rig.sfu.grant(consultation, identity, role)).details["token"]))
    await rig.sfu.remove(consultation, "guest")
    async with aiohttp.ClientSession() as session:
        assert set(await rig.standin.deliver(session)) == {200}
    async with rig.pool.acquire() as conn:
        state = await livekit_store.load_room(conn, room)
    assert state is not None and state.present() == {"doc", "guest"}  # as far as we heard

    # No news for a while from a room someone is in: the reconciler asks LiveKit.
    await rig.intake_at(time.time() + rig.settings.egress_check_seconds + 1).tick()
    async with rig.pool.acquire() as conn:
        state = await livekit_store.load_room(conn, room)
    assert state is not None and state.present() == {"doc"}
    assert (SfuEventKind.LEFT, "guest") in [(e.kind, e.identity) for e in rig.events]


async def test_a_left_that_overtook_its_joined_makes_the_intake_ask_livekit_at_once(
    rig: Rig,
) -> None:
    consultation = uuid4()
    room = room_name(consultation)
    await rig.sfu.create_room(consultation)
    rig.standin.join(
        str((await rig.sfu.grant(consultation, "doc", SfuRole.DOCTOR)).details["token"])
    )
    rig.standin.join(
        str((await rig.sfu.grant(consultation, "pat", SfuRole.PATIENT)).details["token"])
    )
    rig.standin.leave(room, "pat")
    hooks = [h for h in rig.standin.outbox if h.event.event.startswith("participant_")]
    doc_joined, pat_joined, pat_left = hooks
    before = rig.standin.calls.count("ListParticipants")
    async with aiohttp.ClientSession() as session:
        for hook in (doc_joined, pat_left):  # pat's joined is late
            assert await post_webhook(session, rig.webhook_url, hook) == 200
        assert rig.standin.calls.count("ListParticipants") == before + 1
        assert await post_webhook(session, rig.webhook_url, pat_joined) == 200
    async with rig.pool.acquire() as conn:
        state = await livekit_store.load_room(conn, room)
    assert state is not None and state.present() == {"doc"}
