"""Which failures are a dependency being down (PostgreSQL, Redis), not a bug.

Every surface answers those with ``unavailable`` (HTTP 503 with ``Retry-After``, the
same code in acks and connect refusals) instead of ``internal_error``: the client's
request was fine and is worth repeating shortly. Anything else stays a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import redis.exceptions

from teleconsult.core.errors import InfrastructureError

logger = logging.getLogger(__name__)

# Seconds a client is told to wait before trying again during an outage.
RETRY_AFTER_SECONDS = 2

_OUTAGES: tuple[type[BaseException], ...] = (
    InfrastructureError,
    OSError,  # refused, reset, unreachable (ConnectionError is one)
    TimeoutError,  # no pool connection or no answer in time
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.exceptions.ConnectionDoesNotExistError,  # the connection died mid-query
    asyncpg.exceptions.CannotConnectNowError,  # starting up or recovering
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says a dependency is down."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, _OUTAGES):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def dependency_of(exc: BaseException) -> str:
    """``redis`` when the failure came from Redis, else ``database``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, redis.exceptions.RedisError):
            return "redis"
        if type(current).__module__.startswith("redis"):
            return "redis"
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return "database"


Probe = Callable[[], Awaitable[bool]]


@dataclass
class _Down:
    since: float
    cause: str
    failures: int = 1


class OutageLog:
    """One WARNING when a dependency goes, one INFO when it is back, a count in between.

    Process-wide, like a logger: every surface that answers ``unavailable`` calls
    :meth:`down`; while an outage lasts, a watcher probes the dependency once a
    second (with the probes the composition root registers) and logs its return,
    with how long it lasted and how many failures it caused. ``state`` feeds the
    ``teleconsult_dependency_up`` gauge. Call from the event loop only.
    """

    def __init__(self, *, probe_every: float = 1.0) -> None:
        self._probe_every = probe_every
        self._probes: dict[str, Probe] = {}
        self._down: dict[str, _Down] = {}
        self._watcher: asyncio.Task[None] | None = None

    def set_probe(self, dependency: str, probe: Probe) -> None:
        self._probes[dependency] = probe

    def clear(self) -> None:
        """Forget probes and state (the server stops)."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        self._probes.clear()
        self._down.clear()

    def state(self) -> dict[str, bool]:
        """Each known dependency: True when up (as far as this process knows)."""
        return {name: name not in self._down for name in {*self._probes, *self._down}}

    def down(self, exc: BaseException) -> str:
        """Note a failure caused by a dependency being down; returns which one."""
        name = dependency_of(exc)
        known = self._down.get(name)
        if known is not None:
            known.failures += 1
            return name
        self._down[name] = _Down(since=time.monotonic(), cause=type(exc).__name__)
        logger.warning(
            "%s is down (%s); answering unavailable until it is back", name, type(exc).__name__
        )
        if self._watcher is None or self._watcher.done():
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to watch with
                self._watcher = asyncio.get_running_loop().create_task(
                    self._watch(), name="outage-watcher"
                )
        return name

    def up(self, dependency: str) -> None:
        """The dependency answered again."""
        known = self._down.pop(dependency, None)
        if known is not None:
            logger.info(
                "%s is back after %.1f s; %d request(s) answered unavailable meanwhile",
                dependency,
                time.monotonic() - known.since,
                known.failures,
            )

    async def _watch(self) -> None:
        while self._down:
            await asyncio.sleep(self._probe_every)
            for name in list(self._down):
                probe = self._probes.get(name)
                if probe is None:
                    continue
                try:
                    answered = await probe()
                except Exception:
                    answered = False
                if answered:
                    self.up(name)


class OutageFilter(logging.Filter):
    """For a library logger that logs each failed reconnect with a traceback (asyncpg's
    pool refilling itself): such a record becomes one :class:`OutageLog` note instead."""

    def __init__(self, outages: OutageLog) -> None:
        super().__init__()
        self._outages = outages

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_outage(exc):
            self._outages.down(exc)
            return False
        return True


# The process's outage log (see OutageLog): shared like a logger.
OUTAGES = OutageLog()
# Installed on asyncpg's pool logger by the composition root (adding it twice is a no-op).
OUTAGE_FILTER = OutageFilter(OUTAGES)
