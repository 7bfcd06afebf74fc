"""Live delivery to the real-time sessions of this process, fed through the bus.

Every user with a live session here has one bus subscription,
``tc.user.<user id>``. Publishing an event to a set of users sends one bus
message per user, so a message reaches the user's sessions on whichever
process they are connected to, and membership is decided at send time by the
sender's process (no per-thread subscriptions to keep in step).

Live delivery is best effort: the bus may drop (it is at most once) and a
session that cannot keep up is closed. What makes chat reliable is that every
message carries its thread's sequence number and clients resume from the
last one they hold (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

import msgpack

from teleconsult.core.bus import Bus, Subscription
from teleconsult.core.errors import InfrastructureError
from teleconsult.realtime.presence import Presence

logger = logging.getLogger(__name__)

SLOW_CONSUMER = "slow_consumer"


class Session(Protocol):
    """One live connection of one user, whatever carries it."""

    @property
    def id(self) -> str: ...

    @property
    def user_id(self) -> UUID: ...

    def push(self, event: str, data: Mapping[str, Any]) -> bool:
        """Queue an event for the client; False when the client is too far behind."""
        ...

    async def close(self, reason: str) -> None: ...


@dataclass
class _UserSessions:
    sessions: dict[str, Session] = field(default_factory=dict)
    subscription: Subscription | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def channel(user_id: UUID) -> str:
    return f"tc.user.{user_id}"


class Hub:
    def __init__(self, bus: Bus, presence: Presence, *, heartbeat: float) -> None:
        self._bus = bus
        self._presence = presence
        self._heartbeat = heartbeat
        self._users: dict[UUID, _UserSessions] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._beat: asyncio.Task[None] | None = None
        self.slow_consumers = 0

    async def start(self) -> None:
        self._beat = asyncio.create_task(self._keep_present(), name="hub-presence")

    async def close(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for user in list(self._users.values()):
            if user.subscription is not None:
                await user.subscription.close()
        self._users.clear()

    def session_count(self) -> int:
        return sum(len(u.sessions) for u in self._users.values())

    def local_users(self) -> set[UUID]:
        return {uid for uid, u in self._users.items() if u.sessions}

    async def attach(self, session: Session) -> bool:
        """Start delivering to ``session``; True when its user just came online."""
        while True:
            user = self._users.setdefault(session.user_id, _UserSessions())
            async with user.lock:
                if self._users.get(session.user_id) is not user:
                    continue  # the last session detached while we waited: start afresh
                if user.subscription is None:
                    user.subscription = await self._bus.subscribe(
                        channel(session.user_id), self._handler(session.user_id)
                    )
                user.sessions[session.id] = session
                break
        try:
            return await self._presence.connected(session.user_id, session.id)
        except InfrastructureError:
            await self.detach(session)  # the caller refuses the session: deliver nothing to it
            raise

    async def detach(self, session: Session) -> bool:
        """Stop delivering to ``session``; True when its user has no session left anywhere."""
        user = self._users.get(session.user_id)
        if user is not None:
            async with user.lock:
                user.sessions.pop(session.id, None)
                if not user.sessions:
                    if user.subscription is not None:
                        await user.subscription.close()
                        user.subscription = None
                    if self._users.get(session.user_id) is user:
                        del self._users[session.user_id]
        try:
            return await self._presence.disconnected(session.user_id, session.id)
        except InfrastructureError:
            logger.warning("presence could not record a disconnect", exc_info=True)
            return False

    async def publish(
        self,
        user_ids: Iterable[UUID],
        event: str,
        data: Mapping[str, Any],
        *,
        skip_session: str | None = None,
    ) -> None:
        """Send ``event`` to every live session of these users, on any process."""
        frame = msgpack.packb({"e": event, "d": data, "s": skip_session}, use_bin_type=True)
        for user_id in dict.fromkeys(user_ids):
            await self._bus.publish(channel(user_id), frame)

    async def online(self, user_ids: Iterable[UUID]) -> set[UUID]:
        return await self._presence.online(user_ids)

    def _handler(self, user_id: UUID) -> Any:
        async def deliver(frame: bytes) -> None:
            try:
                decoded = msgpack.unpackb(frame, raw=False)
                event, data, skip = decoded["e"], decoded["d"], decoded["s"]
            except (ValueError, KeyError, TypeError, msgpack.ExtraData):
                logger.error("dropped an undecodable bus frame")
                return
            user = self._users.get(user_id)
            if user is None:
                return
            for session in list(user.sessions.values()):
                if session.id == skip:
                    continue
                if not session.push(event, data):
                    self.slow_consumers += 1
                    self._spawn(session.close(SLOW_CONSUMER))

        return deliver

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keep_present(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat)
            entries = [(uid, sid) for uid, u in self._users.items() for sid in u.sessions]
            try:
                await self._presence.refresh(entries)
            except InfrastructureError:
                logger.warning("presence refresh failed", exc_info=True)
