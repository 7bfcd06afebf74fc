"""The Python reference server: aiohttp and python-socketio doing only what a reference must.

Run: ``python -m bench.refs.pyref --port P [--persist none|each|batch] [--db]``
(the benchmarks start it pinned and bounded through ``bench.harness.procs``).
The Socket.IO server has teleconsult's options (``async_handlers`` off, so one
connection's events are handled in order, no CORS, no loggers).

* ``/chat``: a connection joins a room: auth ``{"pair": k}`` the room of pair
  ``k``, ``{"room": r}`` room ``r``. ``send`` ``{"thread_id", "client_msg_id",
  "envelope": <bytes>}`` is stored (``--persist``), then pushed as ``message``,
  shaped like teleconsult's push and carrying the same bytes, to everyone else in
  the room (one packet, encoded once), then acknowledged ``{"ok", "seq",
  "duplicate", "created_at"}``, as teleconsult does: committed before pushed
  and acked.

  - ``none``: nothing is stored: the framework's ceiling;
  - ``each``: one ``INSERT`` of the message's bytes per message, autocommit,
    through a pool of teleconsult's size;
  - ``batch``: messages wait for one multi-row ``INSERT`` every 2 ms (group
    commit on one connection).

  Rows go to ``bench_ref_messages`` in the benchmark's database.
* ``/signal``: ``join`` answered with a constant shaped like teleconsult's answer,
  ``leave`` with ``{"ok": true}``.
* ``GET /api/v1/me``: verify the HS256 access token (pyjwt, teleconsult's options),
  one ``SELECT`` of user and session by primary key, a JSON answer.
* ``POST /api/v1/appointments``: verify the token, one raw ``INSERT INTO
  appointments`` of the requested slot, ``201``.
* ``GET /ws``: a bare WebSocket; a text ``hello`` is answered ``ready``.
* ``GET /readyz``: 200.

``DATABASE_URL``, ``JWT_SECRET`` and ``JWT_ISSUER`` come from the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import jwt
import socketio
from aiohttp import WSMsgType, web

POOL_SIZE = 10
BATCH_EVERY = 0.002
TABLE = """CREATE TABLE IF NOT EXISTS bench_ref_messages (
    id bigserial PRIMARY KEY, room text NOT NULL, client_msg_id text NOT NULL,
    body bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"""
INSERT_ONE = "INSERT INTO bench_ref_messages (room, client_msg_id, body) VALUES ($1, $2, $3)"
INSERT_MANY = """INSERT INTO bench_ref_messages (room, client_msg_id, body)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])"""
ME = """SELECT u.id, u.clinic_id, u.email, u.role::text AS role, u.full_name, u.phone,
    u.status, u.created_at, s.revoked_at
    FROM auth_sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $2 AND u.id = $1"""
BOOK = """INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at,
    ends_at, buffer_minutes, status, created_by)
    SELECT clinic_id, $1, $2, 'video', $3::timestamptz, $3::timestamptz + interval '30 minutes',
        0, 'requested', $2
    FROM users WHERE id = $2 RETURNING id"""
SENDER = "00000000-0000-4000-8000-000000000001"
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
POOL = web.AppKey("pool", asyncpg.Pool)


class Batcher:
    """Group commit: whatever waits is written by one multi-row INSERT every 2 ms."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, str, bytes, asyncio.Future[None]]] = []
        self.wake = asyncio.Event()

    async def store(self, room: str, msg_id: str, body: bytes) -> None:
        done = asyncio.get_running_loop().create_future()
        self.waiting.append((room, msg_id, body, done))
        self.wake.set()
        await done

    async def run(self, conn: asyncpg.Connection) -> None:
        last = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            await asyncio.sleep(max(0.0, last + BATCH_EVERY - loop.time()))
            last = loop.time()
            batch, self.waiting = self.waiting, []
            self.wake.clear()
            try:
                rooms, ids, bodies = ([b[i] for b in batch] for i in range(3))
                await conn.execute(INSERT_MANY, rooms, ids, bodies)
            except Exception as exc:  # every waiting send fails with it
                for *_, done in batch:
                    done.set_exception(exc)
            else:
                for *_, done in batch:
                    done.set_result(None)


class Chat(socketio.AsyncNamespace):
    def __init__(self, persist: str, app: web.Application) -> None:
        super().__init__("/chat")
        self.persist, self.app = persist, app
        self.rooms: dict[str, str] = {}
        self.seq: dict[str, int] = {}
        self.batcher = Batcher()

    async def on_connect(self, sid: str, environ: Any, auth: Any = None) -> None:
        auth = auth if isinstance(auth, dict) else {}
        room = f"pair-{auth['pair']}" if "pair" in auth else str(auth.get("room", "all"))
        self.rooms[sid] = room
        await self.enter_room(sid, room)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self.rooms.pop(sid, None)

    async def on_send(self, sid: str, data: Any = None) -> dict[str, Any]:
        room = self.rooms.get(sid, "all")
        body = data.get("envelope") if isinstance(data, dict) else None
        msg_id = str(data.get("client_msg_id", "")) if isinstance(data, dict) else ""
        if not isinstance(body, bytes) or not msg_id:
            return {"ok": False, "error": {"code": "validation_failed"}}
        if self.persist == "each":
            await self.app[POOL].execute(INSERT_ONE, room, msg_id, body)
        elif self.persist == "batch":
            await self.batcher.store(room, msg_id, body)
        seq = self.seq[room] = self.seq.get(room, 0) + 1
        created = datetime.now(UTC).isoformat()
        push = {
            "thread_id": data.get("thread_id"),
            "seq": seq,
            "client_msg_id": msg_id,
            "sender_user_id": SENDER,
            "sender_device_id": SENDER,
            "created_at": created,
            "envelope": body,
        }
        await self.emit("message", push, room=room, skip_sid=sid)
        return {"ok": True, "seq": seq, "duplicate": False, "created_at": created}


class Signal(socketio.AsyncNamespace):
    async def on_connect(self, sid: str, environ: Any, auth: Any = None) -> None:
        return None

    async def on_join(self, sid: str, data: Any = None) -> dict[str, Any]:
        return JOIN_ANSWER

    async def on_leave(self, sid: str, data: Any = None) -> dict[str, Any]:
        return {"ok": True}


def _claims(request: web.Request) -> tuple[UUID, UUID] | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    try:
        claims = jwt.decode(
            token.strip(),
            os.environ["JWT_SECRET"],
            algorithms=["HS256"],
            issuer=os.environ.get("JWT_ISSUER", "teleconsult"),
            options={"require": ["exp", "iat", "sub", "sid", "iss"]},
        )
        return UUID(str(claims["sub"])), UUID(str(claims["sid"]))
    except (jwt.PyJWTError, ValueError, TypeError):
        return None


def _unauthorized() -> web.Response:
    return web.json_response({"status": 401, "detail": "access token invalid"}, status=401)


async def me(request: web.Request) -> web.Response:
    ids = _claims(request)
    if ids is None:
        return _unauthorized()
    row = await request.app[POOL].fetchrow(ME, *ids)
    if row is None or row["revoked_at"] is not None or row["status"] != "active":
        return _unauthorized()
    body = {k: str(row[k]) for k in ("id", "clinic_id", "email", "role", "full_name", "status")}
    body["phone"], body["created_at"] = row["phone"], row["created_at"].isoformat()
    return web.Response(body=json.dumps(body), content_type="application/json")


async def book(request: web.Request) -> web.Response:
    ids = _claims(request)
    if ids is None:
        return _unauthorized()
    data = await request.json()
    starts = datetime.fromisoformat(data["starts_at"])
    found = await request.app[POOL].fetchval(BOOK, UUID(data["doctor_id"]), ids[0], starts)
    if found is None:
        return _unauthorized()
    return web.json_response(
        {"id": str(found), "ends_at": str(starts + timedelta(minutes=30))}, status=201
    )


async def hello(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type is WSMsgType.TEXT and msg.data == "hello":
            await ws.send_str("ready")
    return ws


async def ready(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def create_app(persist: str, db: bool) -> web.Application:
    app = web.Application()
    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        async_handlers=False,
        max_http_buffer_size=256 * 1024,
        cors_allowed_origins=[],
        logger=False,
        engineio_logger=False,
    )
    chat = Chat(persist, app)
    sio.register_namespace(chat)
    sio.register_namespace(Signal("/signal"))
    sio.attach(app, socketio_path="socket.io")

    async def database(app: web.Application) -> AsyncIterator[None]:
        dsn = os.environ["DATABASE_URL"]
        pool = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
        app[POOL] = pool
        await pool.execute(TABLE)
        conn = await asyncpg.connect(dsn)  # the batch's own connection
        flusher = asyncio.create_task(chat.batcher.run(conn))
        try:
            yield
        finally:
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await conn.close()
            await pool.close()

    if db or persist != "none":
        app.cleanup_ctx.append(database)
    app.router.add_get("/api/v1/me", me)
    app.router.add_post("/api/v1/appointments", book)
    app.router.add_get("/ws", hello)
    app.router.add_get("/readyz", ready)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.refs.pyref", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--persist", choices=("none", "each", "batch"), default="none")
    parser.add_argument("--db", action="store_true", help="open the pool (the HTTP routes)")
    args = parser.parse_args(argv)
    web.run_app(
        create_app(args.persist, args.db),
        host=args.host,
        port=args.port,
        access_log=None,
        shutdown_timeout=1.0,  # open connections need not wait out a graceful stop
        print=lambda text: print(text, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
