"""How a chat client reaches the server: request/ack calls and pushed events.

:class:`ChatClient` works over any :class:`Transport`. This module has the
Socket.IO one (WebSocket or HTTP long-polling); the MQTT one is in
``client/mqtt.py``. A transport keeps itself connected: after any drop (the
network, a server restart, the server closing a slow consumer) it reconnects
with jittered exponential backoff and calls ``on_connected`` so the client
resumes.

The backoff is capped at :data:`RECONNECT_CAP` seconds, and while it waits more
than a second the transport asks ``/healthz`` once a second: when the server
answers after not answering (it is back from a restart), the transport connects
at once (after a short jitter) instead of sleeping out its backoff. A server that
flaps is therefore rejoined within about a second of each recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import engineio.payload
import socketio

from teleconsult.core.backoff import Backoff

logger = logging.getLogger(__name__)

# python-engineio refuses a long-polling response of more than 16 packets and
# drops the connection. A server with a backlog for us (a resume page of
# msgpack envelopes: one packet per attachment; a burst of pushes) answers a
# single poll with more, and the client would reconnect, ask again and be
# dropped again, forever. What one response may carry is bounded in bytes by
# the server; the packet count is not a safety limit for a client.
engineio.payload.Payload.max_decode_packets = max(engineio.payload.Payload.max_decode_packets, 4096)

EventHandler = Callable[[str, Any], Awaitable[None]]
ConnectedHandler = Callable[[], Awaitable[None]]
TokenProvider = Callable[[], Awaitable[str]]

# The longest wait between two reconnect attempts (seconds), before jitter.
RECONNECT_CAP = 5.0
# How often a waiting transport asks /healthz, and the jitter after it answers.
_HEALTH_EVERY = 1.0
_HEALTH_JITTER = 0.3


async def _no_silent_retry(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """Make a dropped connection an error the caller sees, never a silent repeat.

    aiohttp sends an idempotent request (GET) once more when its connection
    drops. For a long-poll GET whose response was cut after the server had
    handed it packets, the repeat loses those packets inside an engine.io
    session that still looks healthy (found by `teleconsult soak` on a polling
    link cut every 4 s). As an error, engine.io ends the session instead, and
    the transport reconnects and the client resumes by seq.
    """
    try:
        return await handler(request)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise aiohttp.ClientConnectionError(f"connection lost: {exc}") from exc


def _http_session() -> aiohttp.ClientSession:
    """The HTTP session of one engine.io connection (engine.io closes it)."""
    return aiohttp.ClientSession(middlewares=(_no_silent_retry,))


class TransportClosed(Exception):
    """The call could not be made or answered: the link is down (retry later)."""


class Refused(Exception):
    """The server refused the connection itself (bad token): retrying will not help."""

    def __init__(self, error: Any) -> None:
        super().__init__(str(error))
        self.error = error


class Transport(Protocol):
    connected: asyncio.Event

    async def start(self, on_event: EventHandler, on_connected: ConnectedHandler) -> None: ...

    async def call(self, event: str, data: Any, *, within: float) -> dict[str, Any]:
        """Send a request and return its ack; TransportClosed when that failed."""
        ...

    async def close(self) -> None: ...


class SocketIoTransport:
    """``transports``: ``("websocket",)``, ``("polling",)``, or both (polling, then upgrade)."""

    def __init__(
        self,
        base_url: str,
        token: TokenProvider,
        *,
        transports: tuple[str, ...] = ("websocket",),
        encoding: str = "msgpack",
        connect_timeout: float = 10.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._url = base_url.rstrip("/")
        self._backoff = backoff or Backoff(most=RECONNECT_CAP)
        self._token = token
        self._transports = list(transports)
        self._encoding = encoding
        self._connect_timeout = connect_timeout
        self.connected = asyncio.Event()
        self._sio: socketio.AsyncClient | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._dropped = asyncio.Event()
        self._closing = False
        self._on_event: EventHandler | None = None
        self._on_connected: ConnectedHandler | None = None
        self.reconnects = 0
        # Set when the server refused the credentials for good (revoked, disabled).
        self.refused: Refused | None = None

    async def start(self, on_event: EventHandler, on_connected: ConnectedHandler) -> None:
        self._on_event, self._on_connected = on_event, on_connected
        await self._connect_once()  # the first failure is the caller's to see
        self._supervisor = asyncio.create_task(self._supervise(), name="sio-supervisor")

    async def _connect_once(self) -> None:
        sio = socketio.AsyncClient(
            reconnection=False, handle_sigint=False, http_session=_http_session
        )
        sio.on("*", self._dispatch, namespace="/chat")

        async def lost(*_: Any) -> None:
            if self._sio is sio:  # not a late event of an older connection
                self.connected.clear()
                self._dropped.set()

        sio.on("disconnect", lost, namespace="/chat")
        refusal: list[Any] = []

        async def refused(data: Any = None) -> None:
            refusal.append(data)

        sio.on("connect_error", refused, namespace="/chat")
        auth = {"token": await self._token(), "encoding": self._encoding}
        # Current before it connects: a drop during the handshake must count.
        self._dropped.clear()
        self._sio = sio
        try:
            await sio.connect(
                self._url,
                auth=auth,
                transports=self._transports,
                namespaces=["/chat"],
                wait_timeout=self._connect_timeout,
            )
        except socketio.exceptions.ConnectionError as exc:
            self._sio = None
            await _shut(sio)
            # The server's refusal: {"message", "data": {"code", "status", "detail"}}.
            data = refusal[-1] if refusal else None
            error = data.get("data") if isinstance(data, dict) else None
            # An expired token is the app's to refresh (the next attempt asks the
            # token provider again); any other 401 will not get better by itself.
            if (
                isinstance(error, dict)
                and error.get("status") == 401
                and error.get("code") != "token_expired"
            ):
                raise Refused(error) from None
            raise TransportClosed(str(exc)) from None
        if self._dropped.is_set() or not sio.connected:
            self._sio = None
            await _shut(sio)
            raise TransportClosed("the connection dropped as it opened")
        self.connected.set()
        assert self._on_connected is not None
        await self._on_connected()

    async def _dispatch(self, event: str, data: Any = None) -> None:
        if self._on_event is not None:
            await self._on_event(event, data)

    async def _supervise(self) -> None:
        backoff = self._backoff
        while not self._closing:
            await self._dropped.wait()
            if self._closing:
                return
            old, self._sio = self._sio, None
            if old is not None:
                await _shut(old)
            while not self._closing:
                await self._pause(backoff.delay())
                try:
                    await self._connect_once()
                except Refused as exc:
                    logger.warning("the server refused the token; giving up reconnecting")
                    self.refused = exc
                    return
                except (TimeoutError, TransportClosed, OSError):
                    continue
                except Exception:  # never let the supervisor die: the app would go deaf
                    logger.exception("reconnecting failed unexpectedly; trying again")
                    continue
                self.reconnects += 1
                backoff.reset()
                break

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay``, or less when /healthz starts answering meanwhile."""
        if delay <= _HEALTH_EVERY:
            await asyncio.sleep(delay)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        was_down = False
        timeout = aiohttp.ClientTimeout(total=_HEALTH_EVERY)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while (left := deadline - loop.time()) > 0:
                await asyncio.sleep(min(_HEALTH_EVERY, left))
                if await self._healthy(http):
                    if was_down:
                        await asyncio.sleep(random.uniform(0, _HEALTH_JITTER))  # noqa: S311
                        return
                else:
                    was_down = True

    async def _healthy(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(f"{self._url}/healthz") as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def call(self, event: str, data: Any, *, within: float) -> dict[str, Any]:
        sio = self._sio
        if sio is None or not self.connected.is_set():
            raise TransportClosed("not connected")
        if not sio.connected:  # dropped without telling us: let the supervisor reconnect
            self.connected.clear()
            self._dropped.set()
            raise TransportClosed("not connected")
        # python-socketio's call waits out its whole timeout when the link
        # drops under it; stop waiting as soon as this connection is lost, so
        # the caller retries on the next one at once.
        asking = asyncio.ensure_future(sio.call(event, data, namespace="/chat", timeout=within))
        lost = asyncio.ensure_future(self._dropped.wait())
        try:
            await asyncio.wait({asking, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if not asking.done():
            asking.cancel()
            with contextlib.suppress(BaseException):
                await asking
            raise TransportClosed("disconnected while waiting for the ack")
        try:
            ack = asking.result()
        except socketio.exceptions.TimeoutError:
            # No ack in time: the connection may look alive and be dead one way
            # (engine.io's polling writer can stop after a cut POST while its reader
            # goes on, so nothing we send leaves). Replace it; the caller retries.
            if self._sio is sio:
                logger.info("no ack within %.0f s; reconnecting", within)
                self.connected.clear()
                self._dropped.set()
            raise TransportClosed("no ack in time") from None
        except socketio.exceptions.BadNamespaceError as exc:
            raise TransportClosed(str(exc) or type(exc).__name__) from None
        except socketio.exceptions.DisconnectedError:
            raise TransportClosed("disconnected") from None
        if not isinstance(ack, dict):
            raise TransportClosed(f"unexpected ack {ack!r}")
        return ack

    async def close(self) -> None:
        self._closing = True
        self._dropped.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        if self._sio is not None:
            # Say goodbye when we can: the server frees the session now instead
            # of after its ping timeout.
            await _shut(self._sio, polite=1.0 if self.connected.is_set() else 0.0)
        self.connected.clear()


async def _shut(sio: socketio.AsyncClient, *, polite: float = 0.0) -> None:
    """End a connection. engine.io's own disconnect waits for a pending
    long-poll to come back (up to the ping interval); after ``polite`` seconds
    (time for the close packets to go out) the HTTP session is closed under it.
    A dead link (``polite`` 0) is aborted at once."""
    if polite > 0:
        closing = asyncio.ensure_future(sio.disconnect())
        done, _ = await asyncio.wait({closing}, timeout=polite)
        if done:
            with contextlib.suppress(Exception):
                closing.result()
            return
        with contextlib.suppress(Exception):
            await sio.eio.disconnect(abort=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(closing, polite)
        return
    with contextlib.suppress(Exception):
        await sio.eio.disconnect(abort=True)
