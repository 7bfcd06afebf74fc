"""Sessions that end, told to every process at once.

The accounts domain says *who* can no longer act (a login session, or every
session of a user), and messaging which device (a deleted one), through a
:class:`Revocations`; each transport (``/chat``
and ``/signal`` through the session guard, MQTT, the server's network-test
peers) subscribes with a :data:`RevocationHandler` and closes what it holds.
The message goes over the bus, so a logout on one process closes the user's
connections on all of them within the bus's delivery time; the guard's
periodic re-check stays as the fallback for a revocation lost while the bus
was down.

Wire format (channel ``tc.revoke``): compact JSON
``{"u": user id, "s": session id or null, "k": session id to keep or null, "r": reason}``,
with ``"d": device id`` for a device's revocation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from uuid import UUID

from teleconsult.core.bus import Bus, Subscription

logger = logging.getLogger(__name__)

CHANNEL = "tc.revoke"


@dataclass(frozen=True, slots=True)
class Revocation:
    """Who may no longer act, and why (a stable error code clients are told).

    ``session_id`` None means every login session of ``user_id``, except
    ``keep_session`` when set (a password change keeps the session that made it).
    With ``device_id`` it is one device of the user that is gone, and no login
    session ends (:meth:`covers` is False): only what that device holds closes
    (its MQTT account and connections).
    """

    user_id: UUID
    reason: str
    session_id: UUID | None = None
    keep_session: UUID | None = None
    device_id: UUID | None = None

    def covers(self, user_id: UUID, session_id: UUID | None) -> bool:
        """Whether a connection of ``user_id`` on login session ``session_id`` must end.

        A connection without a login session (``None``, e.g. proven by a broker)
        ends on a user-wide revocation only.
        """
        if user_id != self.user_id or self.device_id is not None:
            return False
        if self.session_id is not None:
            return session_id == self.session_id
        return session_id is None or session_id != self.keep_session

    def encode(self) -> bytes:
        data = {
            "u": str(self.user_id),
            "s": _text(self.session_id),
            "k": _text(self.keep_session),
            "r": self.reason,
        }
        if self.device_id is not None:
            data["d"] = str(self.device_id)
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Revocation:
        """ValueError (or KeyError/TypeError) on anything that is not a revocation."""
        data = json.loads(raw)
        return cls(
            user_id=UUID(data["u"]),
            reason=str(data["r"]),
            session_id=_uuid(data.get("s")),
            keep_session=_uuid(data.get("k")),
            device_id=_uuid(data.get("d")),
        )


RevocationHandler = Callable[[Revocation], Awaitable[None]]
# What a domain service is given: announce a revocation after its commit.
RevocationSink = Callable[[Revocation], Awaitable[None]]


def _text(value: UUID | None) -> str | None:
    return None if value is None else str(value)


def _uuid(value: object) -> UUID | None:
    return None if value is None else UUID(str(value))


class Revocations:
    """Announces revocations on the bus and hands each one to every local handler.

    ``announce`` also runs the local handlers directly, so this process's
    connections close even while the bus is down; a handler may therefore see
    the same revocation twice (closing is idempotent).
    """

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._handlers: list[RevocationHandler] = []
        self._subscription: Subscription | None = None

    def add_handler(self, handler: RevocationHandler) -> None:
        self._handlers.append(handler)

    async def start(self) -> None:
        self._subscription = await self._bus.subscribe(CHANNEL, self._on_message)

    async def close(self) -> None:
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None

    async def announce(self, revocation: Revocation) -> None:
        """Never raises: a bus failure is logged, the periodic re-check covers it."""
        await self._run_handlers(revocation)
        try:
            await self._bus.publish(CHANNEL, revocation.encode())
        except Exception as exc:
            logger.warning(
                "could not announce a revocation on the bus (%s); "
                "other processes close those connections at their next re-check",
                type(exc).__name__,
            )

    async def _on_message(self, raw: bytes) -> None:
        try:
            revocation = Revocation.decode(raw)
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed message on %s", CHANNEL)
            return
        await self._run_handlers(revocation)

    async def _run_handlers(self, revocation: Revocation) -> None:
        for handler in self._handlers:
            try:
                await handler(revocation)
            except Exception:
                logger.warning("a revocation handler failed", exc_info=True)
