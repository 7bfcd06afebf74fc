"""Connecting to /chat and staying connected: tokens, sessions that end, floods, slow readers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from uuid import UUID, uuid4

import pytest
from aiohttp.test_utils import TestClient

from teleconsult.client.chat import ChatClient
from teleconsult.client.crypto import seal
from teleconsult.core.identity import Role
from teleconsult.core.tokens import TokenService
from teleconsult.server.app import POOL, SETTINGS
from tests.chatkit import connect, next_event, people, receive, socketio_transport
from tests.conftest import StartServer
from tests.rawsio import NS, HandSpoken, raw, refusal, refused
from tests.world import SESSION_ENDINGS, Tenant, make_tenant


def _base(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


# --- connecting -------------------------------------------------------------------------


def _tokens(client: TestClient[Any, Any], *, secret: str | None = None) -> TokenService:
    auth = client.app[SETTINGS].auth
    return TokenService(
        secret=secret or auth.jwt_secret, issuer=auth.issuer, access_ttl=auth.access_ttl
    )


def _session_of(client: TestClient[Any, Any], token: str) -> UUID:
    return _tokens(client).verify_access(token).session_id


async def test_connects_without_a_valid_token_are_refused_with_a_code(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    base = _base(client)
    patient = tenant[Role.PATIENT]
    sid = _session_of(client, patient.access_token)
    now = time.time()
    tokens = _tokens(client)
    cases: list[tuple[Any, str]] = [
        (None, "unauthenticated"),
        ({}, "unauthenticated"),
        ("just-a-token", "unauthenticated"),
        ({"token": 12345}, "unauthenticated"),
        ({"access_token": patient.access_token}, "unauthenticated"),
        ({"token": patient.access_token, "encoding": "xml"}, "unauthenticated"),
        ({"token": "garbage"}, "token_invalid"),
        ({"token": patient.access_token[:-4] + "AAAA"}, "token_invalid"),
        ({"token": patient.refresh_token}, "token_invalid"),
        (
            {
                "token": _tokens(client, secret="x" * 48).mint_access(
                    user_id=patient.user_id, session_id=sid
                )
            },
            "token_invalid",
        ),
        (
            {"token": tokens.mint_access(user_id=patient.user_id, session_id=uuid4())},
            "token_invalid",
        ),
        (
            {"token": tokens.mint_access(user_id=patient.user_id, session_id=sid, now=now - 3600)},
            "token_expired",
        ),
    ]
    async with asyncio.timeout(60):
        for auth, code in cases:
            got = await refusal(base, auth)
            assert got["data"]["code"] == code, (auth, got)
            assert got["data"]["status"] == 401, got
            assert got["message"] == got["data"]["detail"], got
        # The genuine token does connect.
        async with raw(base, patient.access_token) as sock:
            assert (await sock.call("presence", {"thread_id": str(uuid4())}))["error"]["code"] == (
                "not_found"
            )


@pytest.mark.parametrize("ending", sorted(SESSION_ENDINGS))
async def test_after_the_session_ends_connects_are_refused(
    client: TestClient[Any, Any], tenant: Tenant, ending: str
) -> None:
    patient = tenant[Role.PATIENT]
    code = await SESSION_ENDINGS[ending](client, tenant, patient)
    async with asyncio.timeout(30):
        got = await refusal(_base(client), {"token": patient.access_token})
    assert got["data"]["code"] == code, got


@pytest.mark.parametrize("ending", sorted(SESSION_ENDINGS))
async def test_an_open_connection_is_closed_soon_after_its_session_ends(
    start_server: StartServer, ending: str
) -> None:
    client = await start_server(CHAT_AUTH_RECHECK_SECONDS="0.2")
    tenant = await make_tenant(client.app[POOL], client)
    base = _base(client)
    patient = tenant[Role.PATIENT]
    async with asyncio.timeout(30), people(base, tenant[Role.DOCTOR]) as (doctor,):
        thread = await doctor.rest.create_thread([patient.user_id])
        watcher = await connect(doctor, socketio_transport(base, doctor))
        async with raw(base, patient.access_token) as sock:
            ack = await sock.call("presence", {"thread_id": str(thread)})
            assert ack["ok"] and str(patient.user_id) in ack["online"], ack
            code = await SESSION_ENDINGS[ending](client, tenant, patient)
            # The connection only listens: the server still notices, says why, and closes.
            bye = await sock.next_event("bye")
            assert bye == {"reason": code}
            await sock.gone.wait()
        offline = await next_event(watcher, "presence")
        while offline["online"]:
            offline = await next_event(watcher, "presence")
        assert offline == {"user_id": str(patient.user_id), "online": False}


async def test_a_connection_whose_token_expires_is_closed_unless_it_sends_a_fresh_one(
    start_server: StartServer,
) -> None:
    client = await start_server(CHAT_AUTH_RECHECK_SECONDS="0.2")
    tenant = await make_tenant(client.app[POOL], client)
    base = _base(client)
    patient = tenant[Role.PATIENT]
    tokens = _tokens(client)
    sid = _session_of(client, patient.access_token)

    def expiring(seconds: float) -> str:
        # Issued so that it expires ``seconds`` from now, for the patient's live session.
        return tokens.mint_access(
            user_id=patient.user_id, session_id=sid, now=time.time() - tokens.access_ttl + seconds
        )

    thread = uuid4()
    async with asyncio.timeout(30):
        async with raw(base, expiring(2)) as lapsing:
            bye = await lapsing.next_event("bye")
            assert bye == {"reason": "token_expired"}
            await lapsing.gone.wait()
        async with raw(base, expiring(2)) as renewing:
            ack = await renewing.call("auth", {"token": patient.access_token})
            assert ack == {"ok": True}
            await asyncio.sleep(3)  # past the first token's expiry: still served
            ack = await renewing.call("presence", {"thread_id": str(thread)})
            refused(ack, "not_found", 404)
            assert renewing.sio.connected and renewing.pushed.empty()


async def test_auth_takes_a_fresh_token_of_the_same_user_only(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    base = _base(client)
    patient, doctor = tenant[Role.PATIENT], tenant[Role.DOCTOR]
    async with asyncio.timeout(30), raw(base, patient.access_token) as sock:
        refused(await sock.call("auth", {"token": doctor.access_token}), "unauthenticated", 401)
        refused(await sock.call("auth", {"token": "garbage"}), "token_invalid", 401)
        refused(await sock.call("auth", "garbage"), "unauthenticated", 401)
        # Still the patient's connection, still served.
        ack = await sock.call("presence", {"thread_id": str(uuid4())})
        refused(ack, "not_found", 404)
        assert sock.sio.connected


# --- floods and slow readers ------------------------------------------------------------


async def test_a_connection_over_its_event_rate_is_refused_with_retry_after(
    start_server: StartServer,
) -> None:
    server = await start_server(CHAT_EVENTS_PER_SECOND="1", CHAT_EVENT_BURST="3")
    tenant = await make_tenant(server.app[POOL], server)
    base = _base(server)
    patient = tenant[Role.PATIENT]
    probe = {"thread_id": str(uuid4())}
    async with asyncio.timeout(30), raw(base, patient.access_token) as flooder:
        # Anything counts, even events the server does not know.
        for _ in range(3):
            refused(await flooder.call("shout", probe), "validation_failed", 400)
        error = refused(await flooder.call("presence", probe), "rate_limited", 429)
        assert error["retry_after"] >= 1, error
        # Per connection: the same user's other connection is not held back.
        async with raw(base, patient.access_token) as other:
            refused(await other.call("presence", probe), "not_found", 404)
        await asyncio.sleep(error["retry_after"])
        refused(await flooder.call("presence", probe), "not_found", 404)


def _events(frames: list[str]) -> list[tuple[str, Any]]:
    events = []
    for frame in frames:
        if frame.startswith(f"42{NS},"):
            name, data = json.loads(frame[len(f"42{NS},") :])
            events.append((name, data))
        elif frame.startswith(f"41{NS}"):
            events.append(("<disconnect>", None))
    return events


async def test_a_client_that_stops_reading_is_dropped_and_resumes_without_loss(
    start_server: StartServer,
) -> None:
    queued = 8
    server = await start_server(
        CHAT_MAX_QUEUED_EVENTS=str(queued),
        CHAT_EVENTS_PER_SECOND="10000",
        CHAT_EVENT_BURST="10000",
    )
    tenant = await make_tenant(server.app[POOL], server)
    base = _base(server)
    body = b"m" * 30_000  # big pushes fill the socket buffers sooner
    cap = 1_000
    async with (
        asyncio.timeout(120),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        sender = await connect(doctor, socketio_transport(base, doctor))
        auth = {"token": patient.rest.access_token, "encoding": "json"}
        async with HandSpoken.open(base, auth, small_window=True) as stalled:
            assert (await next_event(sender, "presence"))["online"] is True
            offline = asyncio.Event()

            async def watch_presence() -> None:
                while (await next_event(sender, "presence", within=120))["online"]:
                    pass
                offline.set()

            watching = asyncio.create_task(watch_presence())
            sent = 0
            devices = {d.id: d.x25519_public for d in await doctor.rest.thread_devices(thread)}
            # The stalled client reads nothing from here on.
            while not offline.is_set() and sent < cap:
                env = seal(
                    plaintext=body + str(sent + 1).encode(),
                    thread_id=thread,
                    sender=doctor.keys,
                    sender_device_id=doctor.device_id,
                    recipients=devices,
                )
                assert (await sender.send_envelope(env)).seq == sent + 1
                sent += 1
                await asyncio.sleep(0)
            assert offline.is_set(), f"{sent} messages and the stalled client is still served"
            await watching
            # Now read what the server had written before it gave up on the client.
            frames: list[str] = []
            with contextlib.suppress(ConnectionResetError):
                while not frames or not frames[-1].startswith(f"41{NS}"):
                    frames.append(await stalled.frame())
        events = _events(frames)
        assert events[-2:] == [("bye", {"reason": "slow_consumer"}), ("<disconnect>", None)]
        seqs = [data["seq"] for name, data in events if name == "message"]
        held = len(seqs)
        # What it got is a gapless prefix; the rest was dropped, not buffered for it.
        assert seqs == list(range(1, held + 1))
        assert held < sent
        # Coming back from its last seq, the client gets every other message once, in order.
        reader = ChatClient(
            socketio_transport(base, patient),
            patient.rest,
            keys=patient.keys,
            device_id=patient.device_id,
        )
        patient.chat = reader
        reader.follow(thread, after=held)  # before it connects: it resumes on connecting
        await reader.start()
        got = await receive(reader, sent - held, within=60)
        assert [m.seq for m in got] == list(range(held + 1, sent + 1))
        assert [m.plaintext for m in got] == [
            body + str(s).encode() for s in range(held + 1, sent + 1)
        ]
        await sender.send(thread, b"and one more")
        (last,) = await receive(reader, 1)
        assert (last.seq, last.plaintext) == (sent + 1, b"and one more")
