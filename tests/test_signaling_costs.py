"""What a join costs: statements to PostgreSQL and commands to Redis, counted (never timed).

A join reads the room's access with the caller's invitation in one statement, changes
the room registry in one Redis round trip (a Lua script: no lock), and records its
events, with the consultation's opening, in one more statement on the same connection.
The waiting patient's network test is read only when a doctor is there to be told.
Events for peers leave as one bus frame each, from the hub, off the join's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from teleconsult.client.signal import SignalClient
from teleconsult.core.identity import Role
from teleconsult.server.app import POOL
from tests.conftest import StartServer
from tests.dbutil import REDIS_URL
from tests.querylog import QueryLog, counting
from tests.signalkit import open_room
from tests.world import make_tenant

# What a client says once per new connection: not part of any request.
_HANDSHAKE = ("HELLO", "CLIENT SETNAME", "SELECT")


@dataclass
class RedisLog:
    """Every command Redis receives from a client (not those a script runs)."""

    commands: list[str] = field(default_factory=list)
    grew: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, entry: dict[str, Any]) -> None:
        if entry.get("client_type") != "lua":
            self.commands.append(str(entry.get("command", "")))
            self.grew.set()

    async def wait_for(self, predicate: Any, *, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                self.grew.clear()
                await self.grew.wait()


@contextlib.asynccontextmanager
async def redis_log() -> AsyncIterator[tuple[RedisLog, aioredis.Redis]]:
    log = RedisLog()
    watcher = aioredis.Redis.from_url(REDIS_URL)
    marker = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    ready = asyncio.Event()

    async def watch() -> None:
        async with watcher.monitor() as m:
            ready.set()
            async for entry in m.listen():
                log.add(entry)

    task = asyncio.create_task(watch())
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield log, marker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await watcher.aclose()
        await marker.aclose()


@dataclass
class Cost:
    statements: list[str]
    redis: list[str]
    publishes: int

    def __str__(self) -> str:
        return (
            f"{len(self.statements)} statements, {len(self.redis)} Redis commands "
            f"(+{self.publishes} PUBLISH)\n  " + "\n  ".join(self.statements + self.redis)
        )


class Meter:
    def __init__(self, queries: QueryLog, log: RedisLog, marker: aioredis.Redis) -> None:
        self._queries, self._log, self._marker = queries, log, marker

    async def _mark(self) -> int:
        text = "mark-" + secrets.token_hex(6)
        await self._marker.echo(text)
        await self._log.wait_for(lambda: any(text in c for c in self._log.commands))
        return next(i for i, c in enumerate(self._log.commands) if text in c)

    @contextlib.asynccontextmanager
    async def measure(self, *, publishes: int) -> AsyncIterator[list[Cost]]:
        """The cost of the block; ``publishes`` bus frames are awaited before it ends."""
        found: list[Cost] = []
        start = await self._mark()
        self._queries.clear()
        yield found
        await asyncio.sleep(0)  # the query loggers run soon after each statement
        statements = list(self._queries.statements)

        def published() -> list[str]:
            return [c for c in self._log.commands[start:] if c.startswith("PUBLISH")]

        await self._log.wait_for(lambda: len(published()) >= publishes)
        end = await self._mark()
        between = self._log.commands[start + 1 : end]
        redis = [c for c in between if not c.startswith(("PUBLISH", "ECHO", *_HANDSHAKE))]
        found.append(Cost(statements, redis, len([c for c in between if c.startswith("PUBLISH")])))


def _url(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_a_join_costs_two_statements_and_one_redis_round_trip(
    start_server: StartServer,
) -> None:
    # Nothing else runs meanwhile: no session re-check, no room sweep.
    server = await start_server(
        REDIS_URL=REDIS_URL, CHAT_AUTH_RECHECK_SECONDS="600", SIGNAL_HEARTBEAT_SECONDS="60"
    )
    pool = server.app[POOL]
    tenant = await make_tenant(pool, server, name="Costs")
    warmup, room = await open_room(pool, tenant), await open_room(pool, tenant, offset_days=1)
    base = _url(server)
    roles = (Role.DOCTOR, Role.PATIENT, Role.NURSE, Role.DOCTOR)
    doctor, patient, nurse, doctor_again = (
        SignalClient(base, tenant[r].access_token) for r in roles
    )
    everyone = (doctor, patient, nurse, doctor_again)
    try:
        async with asyncio.timeout(60), counting(pool) as queries, redis_log() as (log, marker):
            for c in everyone:
                await c.connect()
            # Once through another room: statements prepared, scripts loaded, the bus
            # connected for publishing.
            for c in (doctor, patient):
                await c.join(warmup)
            await doctor.next_event("waiting")
            for c in (doctor, patient):
                await c.call("leave")
            meter = Meter(queries, log, marker)
            async with meter.measure(publishes=0) as waiting_alone:
                await patient.join(room)
            async with meter.measure(publishes=0) as doctor_joins:
                await doctor.join(room)
            await doctor.call("invite", {"user_id": str(tenant[Role.NURSE].user_id)})
            async with meter.measure(publishes=1) as waiting_seen:
                await nurse.join(room)
                await doctor.next_event("waiting")
            await doctor.call("admit", {"peer_id": patient.peer_id})
            await patient.next_event("admitted")
            await doctor.cut()
            await patient.next_event("peer_disconnected")
            # A new device: the old peer is replaced, the admitted patient told twice.
            async with meter.measure(publishes=2) as replaced:
                await doctor_again.join(room)
                await patient.next_event("peer_left")
                await patient.next_event("peer_joined")
    finally:
        for c in everyone:
            await c.close()
    costs = {
        "patient waits alone": (waiting_alone[0], 2, 0),
        "doctor joins": (doctor_joins[0], 2, 0),
        "guest waits, doctor told": (waiting_seen[0], 3, 1),
        "doctor replaces own peer": (replaced[0], 2, 2),
    }
    report = "\n".join(f"{name}: {cost}" for name, (cost, _, _) in costs.items())
    for _name, (cost, statements, publishes) in costs.items():
        assert len(cost.statements) == statements, report
        assert [c.split()[0] for c in cost.redis] == ["EVALSHA"], report
        assert cost.publishes == publishes, report
    # The network test is read only when a doctor is there to see it.
    assert any("network_tests" in s for s in waiting_seen[0].statements), report
    assert not any("network_tests" in s for s in waiting_alone[0].statements), report
