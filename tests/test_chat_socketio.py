"""Chat over Socket.IO (namespace /chat): live, ordered, acknowledged, resumable."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest
from aiohttp.test_utils import TestClient

from teleconsult.client.chat import ChatClient
from teleconsult.client.crypto import seal
from teleconsult.core.identity import Role
from teleconsult.messaging.envelope import from_json, from_msgpack, to_json
from teleconsult.server.app import POOL
from tests.chatkit import Person, connect, next_event, people, receive, socketio_transport
from tests.conftest import StartServer
from tests.dbutil import REDIS_URL
from tests.world import Tenant, make_tenant

# A long-polling client's goodbye waits for the server's next ping: keep them frequent.
FAST_PING = {"CHAT_PING_INTERVAL": "1", "CHAT_PING_TIMEOUT": "2"}
# Tests that send many messages from one connection.
NO_RATE_LIMIT = {"CHAT_EVENTS_PER_SECOND": "10000", "CHAT_EVENT_BURST": "10000"}
BUSES = {"in_process": {}, "redis": {"REDIS_URL": REDIS_URL}}


def _url(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


async def _server_and_tenant(
    start_server: StartServer, **env: str
) -> tuple[TestClient[Any, Any], Tenant]:
    server = await start_server(**env)
    return server, await make_tenant(server.app[POOL], server)


class Listener:
    """The project's Socket.IO transport without a ChatClient: raw acks, every push."""

    def __init__(self, base: str, who: Person, **options: Any) -> None:
        self.transport = socketio_transport(base, who, **options)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def _on_event(self, event: str, data: Any) -> None:
        self.events.put_nowait((event, data))

    async def _on_connected(self) -> None:
        pass

    async def call(self, event: str, data: Any) -> dict[str, Any]:
        return await self.transport.call(event, data, within=10)

    async def next_event(self, name: str) -> Any:
        while True:
            event, data = await self.events.get()
            if event == name:
                return data


@contextlib.asynccontextmanager
async def listening(base: str, who: Person, **options: Any) -> AsyncIterator[Listener]:
    listener = Listener(base, who, **options)
    await listener.transport.start(listener._on_event, listener._on_connected)
    try:
        yield listener
    finally:
        await listener.transport.close()


async def resuming(base: str, who: Person, positions: dict[UUID, int]) -> ChatClient:
    """A ChatClient that follows ``positions`` from its first connect (an app restart)."""
    chat = ChatClient(
        socketio_transport(base, who), who.rest, keys=who.keys, device_id=who.device_id
    )
    who.chat = chat
    for thread, after in positions.items():
        chat.follow(thread, after=after)
    await chat.start()
    return chat


# --- transports and encodings -----------------------------------------------------------


async def test_websocket_and_polling_users_talk_both_ways(start_server: StartServer) -> None:
    server, tenant = await _server_and_tenant(start_server, **FAST_PING)
    base = _url(server)
    async with (
        asyncio.timeout(60),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        d = await connect(doctor, socketio_transport(base, doctor))
        p = await connect(
            patient,
            socketio_transport(base, patient, transports=("polling",), encoding="json"),
            encoding="json",
        )
        d.follow(thread)
        p.follow(thread)
        sent = await d.send(thread, b"hello from the doctor")
        assert sent.seq == 1 and not sent.duplicate
        got = await receive(p, 1)
        assert got[0].plaintext == b"hello from the doctor" and got[0].seq == 1
        await p.send(thread, b"hello from the patient")
        mine_and_theirs = await receive(d, 2)
        assert [m.plaintext for m in mine_and_theirs] == [
            b"hello from the doctor",
            b"hello from the patient",
        ]


@pytest.mark.parametrize(
    ("transports", "encoding"),
    [
        (("websocket",), "json"),
        (("websocket",), "msgpack"),
        (("polling",), "json"),
        (("polling",), "msgpack"),
        (("polling", "websocket"), "msgpack"),  # starts polling, then upgrades
    ],
    ids=["websocket-json", "websocket-msgpack", "polling-json", "polling-msgpack", "upgrade"],
)
async def test_a_client_talks_over_each_transport_and_encoding(
    start_server: StartServer, transports: tuple[str, ...], encoding: str
) -> None:
    server, tenant = await _server_and_tenant(start_server, **FAST_PING)
    base = _url(server)
    async with (
        asyncio.timeout(60),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        d = await connect(doctor, socketio_transport(base, doctor))
        p = await connect(
            patient,
            socketio_transport(base, patient, transports=transports, encoding=encoding),
            encoding=encoding,
        )
        d.follow(thread)
        p.follow(thread)
        for i in range(3):
            await p.send(thread, f"question {i}".encode())
            await d.send(thread, f"answer {i}".encode())
        expected = [
            (s + 1, t)
            for s, t in enumerate(
                f"{kind} {i}".encode() for i in range(3) for kind in ("question", "answer")
            )
        ]
        for chat in (p, d):
            assert [(m.seq, m.plaintext) for m in await receive(chat, 6)] == expected


async def test_pushes_and_resumes_carry_the_envelope_in_the_connections_encoding(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    base = _url(client)
    async with (
        asyncio.timeout(30),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        sender = await connect(doctor, socketio_transport(base, doctor))
        async with (
            listening(base, patient, encoding="json") as as_json,
            listening(base, patient, encoding="msgpack") as as_msgpack,
        ):
            await sender.send(thread, b"one envelope, two encodings")
            text = (await as_json.next_event("message"))["envelope"]
            binary = (await as_msgpack.next_event("message"))["envelope"]
            assert isinstance(text, dict) and isinstance(binary, bytes)
            assert from_json(text) == from_msgpack(binary)
            request = {"threads": {str(thread): 0}}
            (resumed_text,) = (await as_json.call("resume", request))["threads"][str(thread)][
                "messages"
            ]
            (resumed_binary,) = (await as_msgpack.call("resume", request))["threads"][str(thread)][
                "messages"
            ]
            assert resumed_text["envelope"] == text
            assert resumed_binary["envelope"] == binary


# --- resume -----------------------------------------------------------------------------


async def test_resume_pages_through_a_long_absence_in_order_and_agrees_with_rest(
    start_server: StartServer,
) -> None:
    server, tenant = await _server_and_tenant(start_server, **NO_RATE_LIMIT)
    base = _url(server)
    total = 250
    async with (
        asyncio.timeout(120),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        sender = await connect(doctor, socketio_transport(base, doctor))
        devices = {d.id: d.x25519_public for d in await doctor.rest.thread_devices(thread)}
        for n in range(1, total + 1):
            env = seal(
                plaintext=f"note {n}".encode(),
                thread_id=thread,
                sender=doctor.keys,
                sender_device_id=doctor.device_id,
                recipients=devices,
            )
            assert (await sender.send_envelope(env)).seq == n
        # The patient was offline throughout; it pages with resume.
        async with listening(base, patient) as p:
            pages: list[tuple[list[int], bool]] = []
            after = 0
            while not pages or not pages[-1][1]:
                ack = await p.call("resume", {"threads": {str(thread): after}, "limit": 200})
                result = ack["threads"][str(thread)]
                seqs = [m["seq"] for m in result["messages"]]
                pages.append((seqs, result["complete"]))
                after = seqs[-1] if seqs else after
            assert pages == [(list(range(1, 201)), False), (list(range(201, 251)), True)]
            default = (await p.call("resume", {"threads": {str(thread): 0}}))["threads"]
            assert [m["seq"] for m in default[str(thread)]["messages"]] == list(range(1, 51))
            # REST gives the same pages, flags and envelopes.
            for start, (seqs, complete) in zip((0, 200), pages, strict=True):
                rest = await patient.rest.call(
                    "GET", f"/api/v1/threads/{thread}/messages?after={start}&limit=200"
                )
                live = (await p.call("resume", {"threads": {str(thread): start}, "limit": 200}))[
                    "threads"
                ][str(thread)]["messages"]
                assert [m["seq"] for m in rest["items"]] == seqs and rest["complete"] is complete
                assert [from_json(m["envelope"]) for m in rest["items"]] == [
                    from_msgpack(m["envelope"]) for m in live
                ]
        # The ChatClient does the paging itself: all of them, once each, in order.
        reader = await resuming(base, patient, {thread: 0})
        got = await receive(reader, total, within=60)
        assert [(m.seq, m.plaintext) for m in got] == [
            (n, f"note {n}".encode()) for n in range(1, total + 1)
        ]


# --- typing, presence, receipts ---------------------------------------------------------


@pytest.mark.parametrize("bus", sorted(BUSES))
async def test_typing_reaches_the_other_members_only_and_is_limited_per_user(
    start_server: StartServer, bus: str
) -> None:
    server, tenant = await _server_and_tenant(
        start_server, CHAT_TYPING_PER_WINDOW="3", CHAT_TYPING_WINDOW="60", **BUSES[bus]
    )
    base = _url(server)
    async with (
        asyncio.timeout(30),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        watcher = await connect(doctor, socketio_transport(base, doctor))

        def typing(flag: bool) -> dict[str, Any]:
            return {"thread_id": str(thread), "typing": flag}

        # Two connections of one user (two tabs, phone and laptop) share the budget.
        async with listening(base, patient) as phone, listening(base, patient) as laptop:
            for device, flag in [(phone, True), (laptop, False), (phone, True)]:
                assert await device.call("typing", typing(flag)) == {"ok": True}
                seen = await next_event(watcher, "typing")
                assert seen == {**typing(flag), "user_id": str(patient.user_id)}
            refused = await laptop.call("typing", typing(True))
            assert refused["error"]["code"] == "rate_limited", refused
            assert refused["error"]["retry_after"] >= 1
            # The doctor's budget is the doctor's own; the typer never hears itself.
            assert (await watcher.call("typing", typing(True)))["ok"]
            for device in (phone, laptop):
                heard = await device.next_event("typing")
                assert heard == {**typing(True), "user_id": str(doctor.user_id)}


@pytest.mark.parametrize("bus", sorted(BUSES))
async def test_presence_follows_a_users_connections(start_server: StartServer, bus: str) -> None:
    server, tenant = await _server_and_tenant(start_server, **BUSES[bus])
    base = _url(server)
    async with (
        asyncio.timeout(30),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        watcher = await connect(doctor, socketio_transport(base, doctor))
        ask = {"thread_id": str(thread)}
        assert (await watcher.call("presence", ask))["online"] == [str(doctor.user_id)]
        async with listening(base, patient) as first:
            assert await next_event(watcher, "presence") == {
                "user_id": str(patient.user_id),
                "online": True,
            }
            both = sorted([str(doctor.user_id), str(patient.user_id)])
            assert (await first.call("presence", ask))["online"] == both
            async with listening(base, patient) as second:
                assert (await second.call("presence", ask))["online"] == both
            # One of two connections gone: still online, and nobody is told otherwise.
            assert (await watcher.call("presence", ask))["online"] == both
        # The next presence news is the last connection going: nothing in between.
        assert await next_event(watcher, "presence") == {
            "user_id": str(patient.user_id),
            "online": False,
        }
        assert (await watcher.call("presence", ask))["online"] == [str(doctor.user_id)]


async def test_receipts_only_move_forward_and_reach_every_member(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    base = _url(client)
    async with (
        asyncio.timeout(30),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        d = await connect(doctor, socketio_transport(base, doctor))
        p = await connect(patient, socketio_transport(base, patient))
        for n in range(3):
            await d.send(thread, f"result {n}".encode())
        steps = [
            ({"delivered": 2, "read": 1}, (2, 1)),
            ({"delivered": 1}, (2, 1)),  # never back
            ({"read": 0}, (2, 1)),
            ({"read": 3}, (3, 3)),  # reading implies delivery
            ({"delivered": 99, "read": 99}, (3, 3)),  # no further than the last message
        ]
        for marks, (delivered, read) in steps:
            ack = await p.mark(thread, **marks)
            assert ack == {"ok": True, "delivered_seq": delivered, "read_seq": read}
            pushed = {
                "thread_id": str(thread),
                "user_id": str(patient.user_id),
                "delivered_seq": delivered,
                "read_seq": read,
            }
            assert await next_event(d, "receipt") == pushed
            assert await next_event(p, "receipt") == pushed  # the reader's other devices


async def test_a_message_sent_over_rest_reaches_live_connections_and_late_follows_catch_up(
    start_server: StartServer,
) -> None:
    server, tenant = await _server_and_tenant(start_server)
    base = _url(server)
    async with (
        asyncio.timeout(60),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        p = await connect(patient, socketio_transport(base, patient))
        # Followed after start: what was sent before is fetched at once.
        d_chat = await connect(doctor, socketio_transport(base, doctor))
        early = await d_chat.seal(thread, b"before the follow")
        await doctor.rest.call(
            "POST", f"/api/v1/threads/{thread}/messages", {"envelope": to_json(early)}
        )
        p.follow(thread)
        got = await receive(p, 1)
        assert got[0].plaintext == b"before the follow"
        # Sent over plain HTTP while the patient is connected: pushed live.
        late = await d_chat.seal(thread, b"over rest, pushed live")
        await doctor.rest.call(
            "POST", f"/api/v1/threads/{thread}/messages", {"envelope": to_json(late)}
        )
        got = await receive(p, 1)
        assert (got[0].seq, got[0].plaintext) == (2, b"over rest, pushed live")


async def test_a_polling_client_catches_up_on_a_long_backlog_in_one_answer(
    start_server: StartServer,
) -> None:
    """A resume page of 60 msgpack envelopes is one poll response of 61 engine.io
    packets (the ack and its attachments); python-engineio refused more than 16
    and the client reconnected and asked again forever."""
    server, tenant = await _server_and_tenant(start_server)
    base = _url(server)
    async with (
        asyncio.timeout(60),
        people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient),
    ):
        thread = await doctor.rest.create_thread([patient.user_id])
        d = await connect(doctor, socketio_transport(base, doctor))
        for n in range(60):
            await d.send(thread, f"backlog {n}".encode())
        p = await connect(patient, socketio_transport(base, patient, transports=("polling",)))
        p.follow(thread)
        got = await receive(p, 60)
        assert [m.plaintext for m in got] == [f"backlog {n}".encode() for n in range(60)]
