"""A minimal aiohttp + python-socketio server: the framework's ceiling for two benchmarks.

The same Socket.IO server options as teleconsult's (``async_handlers`` off, no
CORS, no loggers), on ``/socket.io/``, and nothing else: no auth (``connect``
accepts anyone), no database, no state but python-socketio's own.

* ``/signal``: ``join`` is acknowledged with a constant answer shaped like
  teleconsult's (a waiting patient, no peers), ``leave`` with ``{"ok": true}``
  (bench/signal_join.py).
* ``/chat``: every connection joins one room; ``send`` pushes its payload,
  unchanged, as a ``message`` event to everyone else in the room (one packet
  encoded once, binary attachments and all) and then acknowledges ``{"ok":
  true}`` (bench/fanout.py).

``GET /readyz`` answers 200. Run: ``python -m bench.refs.sio_minimal --port P
[--host 127.0.0.1]`` (the benchmarks start it through ``bench.procs``, pinned
and bounded).
"""

from __future__ import annotations

import sys
from typing import Any

import socketio
from aiohttp import web

from bench.refs.serve import serve

ROOM = "everyone"
JOIN_ANSWER: dict[str, Any] = {
    "ok": True,
    "peer_id": "bench-reference-peer-0001",
    "role": "patient",
    "status": "waiting",
    "peers": [],
    "ice_servers": [],
    "ice_refresh_at": None,
    "grace_seconds": 30,
    "max_peers": 4,
}


class Signal(socketio.AsyncNamespace):
    async def on_connect(self, sid: str, environ: Any, auth: Any = None) -> None:
        return None

    async def on_join(self, sid: str, data: Any = None) -> dict[str, Any]:
        return JOIN_ANSWER

    async def on_leave(self, sid: str, data: Any = None) -> dict[str, Any]:
        return {"ok": True}


class Chat(socketio.AsyncNamespace):
    async def on_connect(self, sid: str, environ: Any, auth: Any = None) -> None:
        await self.enter_room(sid, ROOM)

    async def on_send(self, sid: str, data: Any = None) -> dict[str, Any]:
        await self.emit("message", data, room=ROOM, skip_sid=sid)
        return {"ok": True}


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app() -> web.Application:
    app = web.Application()
    server = socketio.AsyncServer(
        async_mode="aiohttp",
        async_handlers=False,
        max_http_buffer_size=256 * 1024,
        cors_allowed_origins=[],
        logger=False,
        engineio_logger=False,
    )
    server.register_namespace(Signal("/signal"))
    server.register_namespace(Chat("/chat"))
    server.attach(app, socketio_path="socket.io")
    app.router.add_get("/readyz", ready)
    return app


def main() -> int:
    return serve(create_app, "python -m bench.refs.sio_minimal", __doc__)


if __name__ == "__main__":
    sys.exit(main())
