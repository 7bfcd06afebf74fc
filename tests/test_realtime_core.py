"""The rebuilt real-time core, measured by what it does rather than how long it takes.

- a send, a receipt and a resume each cost one statement on one pooled connection
  (membership, devices and the audit event included), counted with asyncpg's query
  logger: the test fails when the count grows;
- fan-out is one bus frame per message, not one per member (Redis MONITOR);
- an idle connection owns no task of ours, and one guard sweep re-checks every
  connection with one query;
- the python-socketio/engine.io seam (realtime/seam.py) still behaves as we rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
import socketio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from teleconsult.core.identity import Role
from teleconsult.realtime import seam
from teleconsult.server.app import GUARD, POOL
from tests.chatkit import connect, next_event, people, receive, socketio_transport
from tests.conftest import StartServer
from tests.dbutil import REDIS_URL
from tests.querylog import counting
from tests.rawsio import raw
from tests.world import make_tenant

QUIET = {
    # Nothing else may use the pool while statements are counted.
    "CHAT_AUTH_RECHECK_SECONDS": "3600",
    "CHAT_OFFLINE_HOOK": "false",
    "CHAT_EVENTS_PER_SECOND": "1000",
    "CHAT_EVENT_BURST": "1000",
}


def _url(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


async def _settled() -> None:
    # Query loggers are called soon after the query, not during it.
    for _ in range(5):
        await asyncio.sleep(0)


# --- statements per request ------------------------------------------------------------


async def test_a_send_a_receipt_and_a_resume_are_one_statement_each(
    start_server: StartServer,
) -> None:
    server = await start_server(**QUIET)
    tenant = await make_tenant(server.app[POOL], server)
    base = _url(server)
    async with people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient):
        thread = await doctor.rest.create_thread([patient.user_id])
        sender = await connect(doctor, socketio_transport(base, doctor))
        reader = await connect(patient, socketio_transport(base, patient))
        reader.follow(thread)
        await sender.send(thread, b"first: loads the thread into the directory")
        await receive(reader, 1)
        async with counting(server.app[POOL]) as log:
            await sender.send(thread, b"second")
            await receive(reader, 1)
            await _settled()
            sends = list(log.statements)
            log.clear()
            ack = await sender.call("receipt", {"thread_id": str(thread), "read_seq": 2})
            assert ack["ok"], ack
            await _settled()
            receipts = list(log.statements)
            log.clear()
            ack = await sender.call("resume", {"threads": {str(thread): 0}})
            assert ack["ok"] and len(ack["threads"][str(thread)]["messages"]) == 2, ack
            await _settled()
            resumes = list(log.statements)
    assert len(sends) == 1, sends
    assert "INSERT INTO messages" in sends[0] and "audit_intake" in sends[0]
    assert len(receipts) == 1 and "receipts" in receipts[0], receipts
    assert len(resumes) == 1 and "audit_intake" in resumes[0], resumes


async def test_concurrent_sends_share_round_trips(start_server: StartServer) -> None:
    server = await start_server(**QUIET, CHAT_APPEND_INFLIGHT="1")
    tenant = await make_tenant(server.app[POOL], server)
    base = _url(server)
    senders = [tenant[Role.DOCTOR], tenant[Role.NURSE], tenant[Role.ADMIN]]
    async with people(base, *senders, tenant[Role.PATIENT]) as found:
        *staff, patient = found
        threads = [await s.rest.create_thread([patient.user_id]) for s in staff]
        chats = [await connect(s, socketio_transport(base, s)) for s in staff]
        for chat, thread in zip(chats, threads, strict=True):
            await chat.send(thread, b"warm up")
        rounds = 20
        async with counting(server.app[POOL]) as log:

            async def burst(i: int) -> None:
                for n in range(rounds):
                    await chats[i].send(threads[i], f"{n}".encode())

            await asyncio.gather(*(burst(i) for i in range(len(chats))))
            await _settled()
            appends = log.matching("INSERT INTO messages")
        seqs = [
            await server.app[POOL].fetchval("SELECT last_seq FROM threads WHERE id = $1", t)
            for t in threads
        ]
    assert seqs == [rounds + 1] * len(threads)
    # With one batch in flight at a time, the three senders' sends travel together
    # whenever they overlap: fewer round trips than messages.
    assert len(appends) < rounds * len(chats), len(appends)


# --- fan-out ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def monitor() -> AsyncIterator[list[str]]:
    """Every PUBLISH command Redis receives while the block runs."""
    seen: list[str] = []
    client = aioredis.Redis.from_url(REDIS_URL)
    ready = asyncio.Event()

    async def watch() -> None:
        async with client.monitor() as m:
            ready.set()
            async for command in m.listen():
                text = str(command.get("command", ""))
                if text.upper().startswith("PUBLISH"):
                    seen.append(text)

    task = asyncio.create_task(watch())
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await client.aclose()


async def test_a_message_to_many_members_is_one_bus_frame(start_server: StartServer) -> None:
    server = await start_server(**QUIET, REDIS_URL=REDIS_URL)
    tenant = await make_tenant(server.app[POOL], server)
    base = _url(server)
    assert tenant.other_patient is not None
    accounts = [tenant[r] for r in Role] + [tenant.other_patient]
    async with people(base, *accounts) as everyone:
        creator = next(p for p in everyone if p.account.role is Role.DOCTOR)
        others = [p for p in everyone if p is not creator]
        thread = await creator.rest.create_thread([p.user_id for p in others], kind="care_team")
        chats = [await connect(p, socketio_transport(base, p)) for p in everyone]
        for chat in chats:
            chat.follow(thread)
        sender = chats[everyone.index(creator)]
        async with monitor() as published:
            await sender.send(thread, b"to everyone")
            for chat in chats:
                if chat is not sender:
                    await receive(chat, 1)
            await asyncio.sleep(0.2)
        frames = [c for c in published if "tc.chat" in c]
    assert len(everyone) >= 5
    assert len(frames) == 1, frames


# --- idle connections and the guard ------------------------------------------------------


def _our_tasks() -> list[asyncio.Task[Any]]:
    found = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and "/teleconsult/" in code.co_filename:
            found.append(task)
    return found


async def test_idle_connections_own_no_task_and_one_sweep_checks_them_all(
    start_server: StartServer,
) -> None:
    server = await start_server(**QUIET)
    tenant = await make_tenant(server.app[POOL], server)
    base = _url(server)
    before = len(_our_tasks())
    tokens = [tenant[r].access_token for r in Role] * 4
    async with contextlib.AsyncExitStack() as stack:
        for token in tokens:
            await stack.enter_async_context(raw(base, token))
        await asyncio.sleep(0.2)
        assert server.app[GUARD].count("/chat") == len(tokens)
        assert len(_our_tasks()) == before, [t.get_name() for t in _our_tasks()]
        async with counting(server.app[POOL]) as log:
            assert await server.app[GUARD].sweep() == 0
            await _settled()
        assert len(log.statements) == 1, log.statements


# --- the seam below python-socketio ------------------------------------------------------


class _Recorder(socketio.AsyncNamespace):
    def __init__(self) -> None:
        super().__init__("/t")
        self.eio: dict[str, str] = {}

    async def on_connect(self, sid: str, environ: Any, auth: Any = None) -> None:
        found = seam.eio_sid(self.server, sid, "/t")
        assert found is not None
        self.eio[sid] = found


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_the_seam_queues_one_encoding_for_many_and_cuts_in_line(transport: str) -> None:
    # Frequent pings: a long-polling client's goodbye waits for the next one.
    server = socketio.AsyncServer(
        async_mode="aiohttp", cors_allowed_origins=[], ping_interval=1, ping_timeout=2
    )
    recorder = _Recorder()
    server.register_namespace(recorder)
    app = web.Application()
    server.attach(app)
    clients: list[socketio.AsyncClient] = []
    got: list[asyncio.Queue[tuple[str, Any]]] = []
    async with TestServer(app) as http:
        base = str(http.make_url("")).rstrip("/")
        try:
            for _ in range(3):
                client = socketio.AsyncClient(reconnection=False)
                queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

                def on_any(event: str, data: Any = None, q: Any = queue) -> None:
                    q.put_nowait((event, data))

                client.on("*", on_any, namespace="/t")
                await client.connect(base, namespaces=["/t"], transports=[transport])
                clients.append(client)
                got.append(queue)
            assert len(recorder.eio) == 3  # connect returns once the namespace accepted
            packets = seam.event_packets(server, "/t", "note", {"text": "hi", "raw": b"\x00\x01"})
            assert len(packets) == 2  # the event and its binary attachment
            for eio in recorder.eio.values():
                assert seam.queue(server, eio, packets)
            for queue in got:
                event, data = await asyncio.wait_for(queue.get(), 10)
                assert (event, data) == ("note", {"text": "hi", "raw": b"\x00\x01"})
            # A backlog that is cut: the client gets only what cuts in.
            first = next(iter(recorder.eio.values()))
            filler = seam.event_packets(server, "/t", "filler", {"n": 1})
            for _ in range(5):
                seam.queue(server, first, filler)
            assert seam.backlog(server, first) == 5
            bye = seam.event_packets(server, "/t", "bye", {"reason": "slow_consumer"})
            assert seam.cut_in_line(server, first, bye) == 5
            event, data = await asyncio.wait_for(got[0].get(), 10)
            assert (event, data) == ("bye", {"reason": "slow_consumer"})
            assert seam.backlog(server, "no-such-session") is None
            assert not seam.queue(server, "no-such-session", bye)
        finally:
            for client in clients:
                await client.disconnect()


async def test_presence_news_still_reaches_co_members(start_server: StartServer) -> None:
    """The hub delivers non-message events (presence) once per connection too."""
    server = await start_server(**QUIET)
    tenant = await make_tenant(server.app[POOL], server)
    base = _url(server)
    async with people(base, tenant[Role.DOCTOR], tenant[Role.PATIENT]) as (doctor, patient):
        await doctor.rest.create_thread([patient.user_id])
        watcher = await connect(doctor, socketio_transport(base, doctor, encoding="json"))
        async with raw(base, patient.rest.access_token):
            news = await next_event(watcher, "presence")
        assert news == {"user_id": str(patient.user_id), "online": True}
