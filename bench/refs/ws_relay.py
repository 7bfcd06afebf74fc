"""A minimal raw aiohttp WebSocket relay: the framework's ceiling for chat delivery.

Clients connect to ``GET /ws?pair=<n>``; the first two connections of a pair
are its two ends. A binary frame ``b"M" + id(8) + payload`` from one end is
forwarded verbatim to the other, then acknowledged to the sender with
``b"A" + id(8) + seq(8)``, the pair's running count (big-endian). Nothing is
stored, checked or encrypted: what is left is aiohttp's WebSocket cost.
``GET /health`` answers 200.

Run: ``python -m bench.refs.ws_relay --port P [--host 127.0.0.1]`` (the
benchmark starts it through ``bench.procs``, pinned and bounded).
"""

from __future__ import annotations

import argparse
import struct
import sys
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

ACK = b"A"
MESSAGE = b"M"
_SEQ = struct.Struct(">Q")


@dataclass
class Pair:
    ends: list[web.WebSocketResponse] = field(default_factory=list)
    seq: int = 0


PAIRS = web.AppKey("pairs", dict[str, Pair])


async def relay(request: web.Request) -> web.WebSocketResponse:
    pairs = request.app[PAIRS]
    key = request.query.get("pair", "")
    ws = web.WebSocketResponse(autoping=True)
    await ws.prepare(request)
    pair = pairs.setdefault(key, Pair())
    pair.ends.append(ws)
    try:
        async for msg in ws:
            if msg.type is not WSMsgType.BINARY or msg.data[:1] != MESSAGE:
                continue
            for end in pair.ends:
                if end is not ws:
                    await end.send_bytes(msg.data)
            pair.seq += 1
            await ws.send_bytes(ACK + msg.data[1:9] + _SEQ.pack(pair.seq))
    finally:
        pair.ends.remove(ws)
        if not pair.ends:
            pairs.pop(key, None)
    return ws


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app() -> web.Application:
    app = web.Application()
    app[PAIRS] = {}
    app.router.add_get("/ws", relay)
    app.router.add_get("/health", health)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.refs.ws_relay", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(
        create_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=lambda text: print(text, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
