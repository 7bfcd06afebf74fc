"""A small client of Janus's HTTP API (sessions, handles, plugin messages, long poll).

Janus answers a plugin request either at once (``success`` with ``plugindata``:
VideoRoom's synchronous requests such as ``create``) or with an ``ack`` followed
by an ``event`` carrying the same transaction, delivered on the session's long
poll (``join``, ``publish``, ``start``...). :meth:`JanusSession.request` hides the
difference. Events without a pending transaction (``publishers``, ``leaving``,
``webrtcup``, ``hangup``) go to the handle's listener.

The long poll (``GET /janus/<session>``) is also the keepalive: Janus resets the
session's timeout on every request, and the poll is re-issued at once.

This module speaks HTTP with aiohttp's client; it is a transport adapter, not a
domain service, so the ``domains-no-transport`` contract (services, stores,
records) does not cover it. Nothing outside ``rtc/`` imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp

from teleconsult.core.errors import InfrastructureError
from teleconsult.core.tasks import cancel_and_wait

logger = logging.getLogger(__name__)

VIDEOROOM = "janus.plugin.videoroom"
REQUEST_TIMEOUT = 20.0
# VideoRoom's error codes that mean "the caller may not", not "Janus is broken".
UNAUTHORIZED = 433
NO_SUCH_ROOM = 426
ROOM_EXISTS = 427
NO_SUCH_FEED = 428
ALREADY_JOINED = 425

Listener = Callable[[dict[str, Any]], None]


class JanusError(InfrastructureError):
    """Janus refused or failed a request. ``code`` is Janus's or VideoRoom's error code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(f"janus: {message}")
        self.code = code


def _transaction() -> str:
    return secrets.token_urlsafe(12)


class JanusSession:
    """One Janus session with its long poll. Close it with :meth:`destroy`."""

    def __init__(self, http: aiohttp.ClientSession, url: str, session_id: int) -> None:
        self._http = http
        self._url = url
        self.id = session_id
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: dict[int, Listener] = {}
        self._poller: asyncio.Task[None] | None = None
        self.closed = False

    @classmethod
    async def create(cls, http: aiohttp.ClientSession, url: str) -> JanusSession:
        answer = await _post(http, url, {"janus": "create", "transaction": _transaction()})
        session = cls(http, url, int(answer["data"]["id"]))
        session._poller = asyncio.create_task(session._poll(), name=f"janus-poll-{session.id}")
        return session

    @property
    def url(self) -> str:
        return f"{self._url}/{self.id}"

    async def attach(self, plugin: str = VIDEOROOM, listener: Listener | None = None) -> int:
        answer = await _post(
            self._http,
            self.url,
            {"janus": "attach", "plugin": plugin, "transaction": _transaction()},
        )
        handle = int(answer["data"]["id"])
        if listener is not None:
            self._listeners[handle] = listener
        return handle

    async def detach(self, handle: int) -> None:
        self._listeners.pop(handle, None)
        with contextlib.suppress(JanusError, aiohttp.ClientError, OSError):
            await _post(
                self._http,
                f"{self.url}/{handle}",
                {"janus": "detach", "transaction": _transaction()},
            )

    async def request(
        self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Send a plugin message; the plugin's data and the JSEP of its answer, if any.
        Raises :class:`JanusError` with VideoRoom's ``error_code`` when it refuses."""
        transaction = _transaction()
        message: dict[str, Any] = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            message["jsep"] = jsep
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = waiter
        try:
            answer = await _post(self._http, f"{self.url}/{handle}", message)
            if answer.get("janus") == "ack":
                answer = await asyncio.wait_for(waiter, REQUEST_TIMEOUT)
        except TimeoutError as exc:
            raise JanusError(f"no answer to {body.get('request')!r}") from exc
        finally:
            self._pending.pop(transaction, None)
        if answer.get("janus") == "error":
            error = answer.get("error", {})
            raise JanusError(str(error.get("reason", "error")), error.get("code"))
        data = answer.get("plugindata", {}).get("data", {})
        if "error_code" in data or data.get(body.get("request", "")) == "error":
            raise JanusError(str(data.get("error", "refused")), data.get("error_code"))
        return data, answer.get("jsep")

    async def trickle(self, handle: int, candidate: dict[str, Any] | None) -> None:
        payload = {"completed": True} if candidate is None else candidate
        await _post(
            self._http,
            f"{self.url}/{handle}",
            {"janus": "trickle", "candidate": payload, "transaction": _transaction()},
        )

    async def _poll(self) -> None:
        failures = 0
        while not self.closed:
            try:
                async with self._http.get(
                    self.url, params={"maxev": "10"}, timeout=aiohttp.ClientTimeout(total=60)
                ) as resp:
                    events = await resp.json(content_type=None)
                failures = 0
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                failures += 1
                if failures > 5:
                    logger.warning("janus session %s lost its long poll", self.id)
                    self.closed = True
                    return
                await asyncio.sleep(min(0.2 * 2**failures, 5))
                continue
            for event in events if isinstance(events, list) else [events]:
                if isinstance(event, dict):  # an empty poll answers null
                    self._dispatch(event)

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("janus")
        if kind == "keepalive":
            return
        if kind == "error" and event.get("error", {}).get("code") == 458:  # no such session
            self.closed = True
            return
        waiter = self._pending.get(str(event.get("transaction", "")))
        if waiter is not None and kind != "ack" and not waiter.done():
            waiter.set_result(event)
            return
        listener = self._listeners.get(int(event.get("sender", 0) or 0))
        if listener is not None:
            try:
                listener(event)
            except Exception:
                logger.warning("janus event listener failed", exc_info=True)

    async def destroy(self) -> None:
        if self._poller is None:
            return
        self._listeners.clear()
        with contextlib.suppress(JanusError, aiohttp.ClientError, OSError):
            await _post(self._http, self.url, {"janus": "destroy", "transaction": _transaction()})
        self.closed = True
        await cancel_and_wait([self._poller])
        self._poller = None
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.cancel()


async def _post(http: aiohttp.ClientSession, url: str, message: dict[str, Any]) -> dict[str, Any]:
    try:
        async with http.post(
            url, json=message, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        ) as resp:
            answer: dict[str, Any] = await resp.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        raise JanusError(f"{message.get('janus')} failed: {type(exc).__name__}") from exc
    if answer.get("janus") == "error":
        error = answer.get("error", {})
        raise JanusError(str(error.get("reason", "error")), error.get("code"))
    return answer
