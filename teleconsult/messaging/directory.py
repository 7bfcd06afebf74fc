"""Who is in a thread and with which devices: cached per process, invalidated over the bus.

The send path needs, before it writes, the sending device's signing key and the
set of devices a message may be sealed for; fan-out needs the members. Reading
them from PostgreSQL on every send was three of its round trips, so this
directory keeps them per thread:

- an entry is loaded with one query and kept for ``ttl`` seconds at most;
- a device registered or revoked, or a change of members, drops the entries it
  touches on every process (``forget_user``/``forget_thread`` publish on the bus
  channel ``tc.directory``); a load that raced such a change is not kept;
- the whole directory is dropped when the bus reconnects (changes may have been
  missed meanwhile).

What the directory says never grants anything on its own: the append statement
re-checks in the same transaction that the sender is a current member sending
from a current device of theirs. A refusal based on the directory is confirmed
against the database first (``fresh``), so a stale entry can delay nothing but a
push to a member who joined in the last ``ttl`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

import asyncpg
import msgpack

from teleconsult.core.bus import Bus, Subscription

logger = logging.getLogger(__name__)

CHANNEL = "tc.directory"

_LOAD = """
SELECT t.clinic_id, m.user_id, d.id AS device_id, d.ed25519_public
FROM threads t
LEFT JOIN thread_members m ON m.thread_id = t.id AND m.left_at IS NULL
LEFT JOIN devices d ON d.user_id = m.user_id AND d.revoked_at IS NULL
WHERE t.id = $1
"""


@dataclass(frozen=True)
class DeviceKey:
    user_id: UUID
    ed25519_public: bytes


@dataclass(frozen=True)
class ThreadInfo:
    """A thread's clinic, current members, and the current devices of those members."""

    thread_id: UUID
    clinic_id: UUID
    members: frozenset[UUID]
    devices: Mapping[UUID, DeviceKey]
    loaded_at: float


class ThreadDirectory:
    """Safe for concurrent use from one event loop."""

    def __init__(
        self, pool: asyncpg.Pool, bus: Bus, *, ttl: float, max_threads: int = 20_000
    ) -> None:
        self._pool = pool
        self._bus = bus
        self._ttl = ttl
        self._max = max_threads
        self._threads: OrderedDict[UUID, ThreadInfo] = OrderedDict()
        self._by_user: dict[UUID, set[UUID]] = {}
        self._generation = 0
        self._subscription: Subscription | None = None
        self.loads = 0

    async def start(self) -> None:
        if self._bus.shared:
            self._subscription = await self._bus.subscribe(CHANNEL, self._receive)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
        self.clear()

    # --- reading ----------------------------------------------------------------------

    async def thread(
        self, thread_id: UUID, conn: asyncpg.Connection | None = None
    ) -> ThreadInfo | None:
        """The thread as cached (loading it when missing or old); None when it does not exist."""
        info = self._threads.get(thread_id)
        if info is not None and time.monotonic() - info.loaded_at < self._ttl:
            self._threads.move_to_end(thread_id)
            return info
        return await self.fresh(thread_id, conn)

    async def fresh(
        self, thread_id: UUID, conn: asyncpg.Connection | None = None
    ) -> ThreadInfo | None:
        """The thread as the database has it now (and cached so)."""
        generation = self._generation
        rows = await (conn or self._pool).fetch(_LOAD, thread_id)
        self.loads += 1
        if not rows:
            self._drop(thread_id)
            return None
        members = frozenset(r["user_id"] for r in rows if r["user_id"] is not None)
        devices = {
            r["device_id"]: DeviceKey(r["user_id"], bytes(r["ed25519_public"]))
            for r in rows
            if r["device_id"] is not None
        }
        info = ThreadInfo(thread_id, rows[0]["clinic_id"], members, devices, time.monotonic())
        if generation == self._generation:  # no change was announced while we read
            self._keep(info)
        return info

    def _keep(self, info: ThreadInfo) -> None:
        self._drop(info.thread_id)
        self._threads[info.thread_id] = info
        for user in info.members:
            self._by_user.setdefault(user, set()).add(info.thread_id)
        while len(self._threads) > self._max:
            _, oldest = self._threads.popitem(last=False)
            self._unindex(oldest)

    def _drop(self, thread_id: UUID) -> None:
        info = self._threads.pop(thread_id, None)
        if info is not None:
            self._unindex(info)

    def _unindex(self, info: ThreadInfo) -> None:
        for user in info.members:
            threads = self._by_user.get(user)
            if threads is not None:
                threads.discard(info.thread_id)
                if not threads:
                    del self._by_user[user]

    # --- invalidation -----------------------------------------------------------------

    def clear(self) -> None:
        self._generation += 1
        self._threads.clear()
        self._by_user.clear()

    async def forget_thread(self, thread_id: UUID) -> None:
        """Its members changed: drop it here and on every other process."""
        self._forget_thread(thread_id)
        await self._announce({"t": thread_id.bytes})

    async def forget_user(self, user_id: UUID) -> None:
        """Their devices changed: drop every thread of theirs, here and elsewhere."""
        self._forget_user(user_id)
        await self._announce({"u": user_id.bytes})

    def _forget_thread(self, thread_id: UUID) -> None:
        self._generation += 1
        self._drop(thread_id)

    def _forget_user(self, user_id: UUID) -> None:
        self._generation += 1
        for thread_id in list(self._by_user.get(user_id, ())):
            self._drop(thread_id)

    async def _announce(self, frame: dict[str, bytes]) -> None:
        if not self._bus.shared:
            return
        try:
            await self._bus.publish(CHANNEL, msgpack.packb(frame, use_bin_type=True))
        except Exception as exc:
            # Other processes keep stale entries until their ttl runs out.
            logger.warning("directory change not announced (%s)", type(exc).__name__)

    async def _receive(self, frame: bytes) -> None:
        try:
            decoded = msgpack.unpackb(frame, raw=False)
            if "t" in decoded:
                self._forget_thread(UUID(bytes=decoded["t"]))
            elif "u" in decoded:
                self._forget_user(UUID(bytes=decoded["u"]))
        except (ValueError, KeyError, TypeError, msgpack.ExtraData):
            logger.error("dropped an undecodable directory frame")
