"""A minimal raw aiohttp WebSocket broadcaster: the framework's ceiling for fan-out.

Clients connect to ``GET /ws``. A binary frame from any client is sent,
unchanged, to every *other* connected client with one ``send_bytes`` each, in
the order they connected, before the next frame of that sender is read. A text
frame ``hello`` is answered with ``ready``: the reconnect storm's clients send it
to tell they are back. Nothing is authenticated, stored, checked or encrypted,
and there is no Socket.IO: what is left is aiohttp's WebSocket cost per
delivery. ``GET /readyz`` answers 200.

Run: ``python -m bench.refs.ws_broadcast --port P [--host 127.0.0.1]`` (the
benchmarks start it through ``bench.procs``, pinned and bounded).
"""

from __future__ import annotations

import sys

from aiohttp import WSMsgType, web

from bench.refs.serve import serve

CLIENTS = web.AppKey("clients", dict[int, web.WebSocketResponse])


async def connection(request: web.Request) -> web.WebSocketResponse:
    clients = request.app[CLIENTS]
    ws = web.WebSocketResponse(max_msg_size=1 << 20)
    await ws.prepare(request)
    clients[id(ws)] = ws
    try:
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                for other in list(clients.values()):
                    if other is not ws and not other.closed:
                        try:
                            await other.send_bytes(msg.data)
                        except ConnectionError:
                            pass  # it is going away; its own handler cleans up
            elif msg.type is WSMsgType.TEXT and msg.data == "hello":
                await ws.send_str("ready")
    finally:
        clients.pop(id(ws), None)
    return ws


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app() -> web.Application:
    app = web.Application()
    app[CLIENTS] = {}
    app.router.add_get("/ws", connection)
    app.router.add_get("/readyz", ready)
    return app


def main() -> int:
    return serve(create_app, "python -m bench.refs.ws_broadcast", __doc__)


if __name__ == "__main__":
    sys.exit(main())
