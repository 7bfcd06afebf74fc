"""A small /signal client for apps, tests and the load tester.

Requests get acks (``call``); everything the server pushes lands in
``events`` as ``(event, data)``. It does not reconnect by itself: a caller
that lost its socket connects a new client and joins again with its old
``peer_id`` inside the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import socketio

NAMESPACE = "/signal"


class SignalError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('detail')}")
        self.code = str(error.get("code"))
        self.error = error


class SignalClient:
    def __init__(
        self, base_url: str, token: str, *, transports: tuple[str, ...] = ("websocket",)
    ) -> None:
        self._url = base_url.rstrip("/")
        self._token = token
        self._transports = list(transports)
        self._sio = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.peer_id: str | None = None
        self._sio.on("*", self._push, namespace=NAMESPACE)

    async def _push(self, event: str, data: Any = None) -> None:
        self.events.put_nowait((event, data))

    async def connect(self) -> None:
        await self._sio.connect(
            self._url,
            auth={"token": self._token},
            transports=self._transports,
            namespaces=[NAMESPACE],
            wait_timeout=10,
        )

    async def call(self, event: str, data: Any = None, *, within: float = 10.0) -> dict[str, Any]:
        """The ack of one request: the ok result, or SignalError with the server's code."""
        ack = await self._sio.call(event, data, namespace=NAMESPACE, timeout=within)
        if not isinstance(ack, dict) or not ack.get("ok"):
            raise SignalError((ack or {}).get("error", {"code": "bad_ack"}))
        return ack

    async def join(self, room_id: str, *, peer_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"room_id": room_id}
        if peer_id:
            body["peer_id"] = peer_id
        answer = await self.call("join", body)
        self.peer_id = answer["peer_id"]
        return answer

    async def next_event(self, name: str, *, within: float = 10.0) -> Any:
        """The next pushed ``name`` event; others before it are dropped."""
        async with asyncio.timeout(within):
            while True:
                event, data = await self.events.get()
                if event == name:
                    return data

    async def cut(self) -> None:
        """Drop the connection the way a dead network does: no leave, no goodbye."""
        with contextlib.suppress(Exception):
            await self._sio.eio.disconnect(abort=True)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._sio.eio.disconnect(abort=True)
