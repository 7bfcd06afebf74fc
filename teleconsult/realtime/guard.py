"""Sessions that end reach open connections: at once when announced, and one sweep as fallback.

A connection proves its user once, at connect (or with ``auth`` and a fresh token).
After that the :class:`SessionGuard` re-checks all of this process's connections
together every ``period`` seconds with one call to the :class:`Authority` (one
query per ``SWEEP_SLICE`` connections), and closes those whose login session
ended, whose account was disabled, or whose access token expired; a role
change is picked up in place. Between sweeps an event on a connection whose
token has expired is refused with ``token_expired`` by the namespace (no query).

A revocation announced over the bus (:mod:`teleconsult.core.revocation`) closes
the connections it covers at once (:meth:`SessionGuard.on_revocation`); the
sweep catches what a bus outage lost.

Not safe for concurrent ``sweep`` calls; the guard's own task is the only caller
apart from tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Protocol
from uuid import UUID

from teleconsult.core.errors import ClientError, ErrorCode
from teleconsult.core.identity import Grant, Principal
from teleconsult.core.revocation import Revocation
from teleconsult.realtime.connection import Connection

logger = logging.getLogger(__name__)

# A connection proven by a broker (MQTT) has no login session to re-check.
NO_SESSION = UUID(int=0)

Closer = Callable[[Connection, str], Awaitable[None]]
# Connections re-checked per query of a sweep.
SWEEP_SLICE = 2000


class Authority(Protocol):
    """What the accounts domain offers the transports."""

    async def grant(self, token: str) -> Grant:
        """The principal of a valid access token and when it expires; ClientError if not."""
        ...

    async def recheck(
        self, principals: Collection[Principal]
    ) -> Mapping[UUID, Principal | ClientError]:
        """For each login session, its principal as of now or why it may no longer act."""
        ...


class SessionGuard:
    def __init__(self, authority: Authority, *, period: float) -> None:
        self._authority = authority
        self._period = period
        self._connections: set[Connection] = set()
        self._closers: dict[str, Closer] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def authority(self) -> Authority:
        return self._authority

    def on_close(self, namespace: str, closer: Closer) -> None:
        """How to close a connection of ``namespace`` (say why, then disconnect)."""
        self._closers[namespace] = closer

    def track(self, conn: Connection) -> None:
        self._connections.add(conn)

    def forget(self, conn: Connection) -> None:
        self._connections.discard(conn)

    def count(self, namespace: str | None = None) -> int:
        if namespace is None:
            return len(self._connections)
        return sum(1 for c in self._connections if c.namespace == namespace)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="realtime-session-guard")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._period)
            try:
                await self.sweep()
            except Exception as exc:
                # One line when checks start failing, one when they work again.
                if not failing:
                    logger.warning("session re-check failed (%s); retrying", type(exc).__name__)
                failing = True
            else:
                if failing:
                    logger.info("session re-check works again")
                failing = False

    async def sweep(self) -> int:
        """Re-check every connection once; how many were closed."""
        now = time.time()
        connections = [c for c in self._connections if not c.closing]
        ending: list[tuple[Connection, str]] = []
        checked: list[Connection] = []
        for conn in connections:
            if conn.expired(now):
                ending.append((conn, str(ErrorCode.TOKEN_EXPIRED)))
            elif conn.principal.session_id != NO_SESSION:
                checked.append(conn)
        # In slices, so a sweep of many thousand connections holds few rows at once.
        for start in range(0, len(checked), SWEEP_SLICE):
            part = checked[start : start + SWEEP_SLICE]
            verdicts = await self._authority.recheck({c.principal for c in part})
            for conn in part:
                verdict = verdicts.get(conn.principal.session_id)
                if isinstance(verdict, Principal):
                    if verdict != conn.principal:  # a role change; else keep the object
                        conn.principal = verdict
                else:
                    code = verdict.code if verdict is not None else ErrorCode.TOKEN_INVALID
                    ending.append((conn, str(code)))
        for conn, reason in ending:
            await self.end(conn, reason)
        return len(ending)

    async def end(self, conn: Connection, reason: str) -> None:
        """Close one connection, saying why; safe to call twice."""
        if conn.closing:
            return
        conn.closing = True
        closer = self._closers.get(conn.namespace)
        if closer is None:
            return
        try:
            await closer(conn, reason)
        except Exception:
            logger.warning("could not close a %s connection", conn.namespace, exc_info=True)

    async def on_revocation(self, revocation: Revocation) -> None:
        """Close this process's connections that a revocation (from any process) covers."""
        matching = [
            c
            for c in list(self._connections)
            if revocation.covers(
                c.user_id,
                None if c.principal.session_id == NO_SESSION else c.principal.session_id,
            )
        ]
        for conn in matching:
            await self.end(conn, revocation.reason)
