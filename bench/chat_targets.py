"""The chat servers the chat benchmarks drive, one client link to each, and what
both benchmarks print about the machine and write at the end.

Three targets, each started as a subprocess pinned to one core (``bench.procs``):

* ``teleconsult`` -- ``python -m teleconsult serve`` on a fresh database, the
  Socket.IO namespace ``/chat``: a ``send`` carries a real end-to-end
  encrypted envelope that the server checks (membership, device, Ed25519
  signature, recipients), stores in PostgreSQL with its audit row, pushes to
  the other member and acknowledges with its ``seq``;
* ``aiohttp-ws`` -- ``bench/refs/ws_relay.py``: raw aiohttp WebSocket, pairs,
  forward and ack; the framework's ceiling;
* ``node-socketio`` -- ``bench/refs/socketio_relay/server.js``: the same relay
  on Node.js and socket.io from npm (installed there with ``npm ci`` on first use).

A :class:`Link` is one client connection; the benchmark gives it message
indices and gets acks and deliveries back as indices, whatever the target.
Links ``2k`` and ``2k + 1`` are the two ends of pair ``k``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import jwt

from bench.api_requests import ISSUER, _finite, _free_port, drop_database, prepare_database
from bench.procs import HOST, REPO, ServerProcess
from bench.report import target_list
from bench.sio_client import PLACEHOLDER, SioConnection, event_frame
from teleconsult.client.crypto import DeviceKeys, seal
from teleconsult.core.settings import OWASP_MIN_MEMLIMIT_KIB, OWASP_MIN_OPSLIMIT
from teleconsult.messaging import store
from teleconsult.messaging.envelope import to_msgpack
from teleconsult.messaging.records import ThreadKind

TARGETS = ("teleconsult", "aiohttp-ws", "node-socketio")
NAMESPACE = "/chat"
NODE_DIR = REPO / "bench" / "refs" / "socketio_relay"
# Settings the parent's environment must not leak into a server.
_SCRUBBED = ("REDIS_URL", "MQTT_URL", "LOG_LEVEL", "LOG_FORMAT", "HOST", "PORT", "NODE_OPTIONS")
_ID = struct.Struct(">Q")

AckHandler = Callable[[int, str | None], None]  # (message index, error code or None)
DeliveryHandler = Callable[[int], None]  # message index


def client_msg_id(index: int) -> str:
    """The envelope's client message id: 16 characters that carry the message index."""
    return f"b{index:015d}"


def index_of(cmid: Any) -> int | None:
    try:
        return int(str(cmid)[1:])
    except ValueError:
        return None


@dataclass
class Outgoing:
    """One message ready to go: built before the measured window."""

    sender: int  # link index
    frame: str | bytes
    attachment: bytes | None = None


@dataclass
class ChatFixture:
    """teleconsult's side: a database, users with tokens, and (for delivery) devices and threads."""

    dsn: str
    secret: str
    tokens: list[str]
    user_ids: list[UUID]
    keys: list[DeviceKeys] = field(default_factory=list)
    devices: list[UUID] = field(default_factory=list)
    threads: list[UUID] = field(default_factory=list)  # one per pair


async def chat_fixture(users: int, *, pairs: int = 0) -> ChatFixture:
    """A fresh database (``bench.api_requests.prepare_database``) with ``users`` signed-in
    users; with ``pairs``, users ``2k`` and ``2k + 1`` get a device each and a direct
    thread of their own. Drop it with ``drop_database(fixture.dsn)``."""
    base = await prepare_database(users)
    tokens = [h["Authorization"].removeprefix("Bearer ") for h in base.headers]
    user_ids = [
        UUID(jwt.decode(t, base.secret, algorithms=["HS256"], issuer=ISSUER)["sub"]) for t in tokens
    ]
    fixture = ChatFixture(base.dsn, base.secret, tokens, user_ids)
    if not pairs:
        return fixture
    conn = await asyncpg.connect(base.dsn)
    try:
        clinic_id = await conn.fetchval("SELECT clinic_id FROM users WHERE id = $1", user_ids[0])
        for user_id in user_ids[: 2 * pairs]:
            keys = DeviceKeys.generate()
            device = await store.register_device(
                conn,
                user_id=user_id,
                x25519_public=keys.encryption_public_key,
                ed25519_public=keys.signing_public_key,
                label="bench",
            )
            fixture.keys.append(keys)
            fixture.devices.append(device.id)
        for k in range(pairs):
            a, b = user_ids[2 * k], user_ids[2 * k + 1]
            thread = await store.create_thread(
                conn,
                clinic_id=clinic_id,
                kind=ThreadKind.DIRECT,
                created_by=a,
                members=[(a, "patient"), (b, "patient")],
            )
            fixture.threads.append(thread.id)
    except BaseException:
        await conn.close()
        await drop_database(base.dsn)
        raise
    await conn.close()
    return fixture


# --- links ----------------------------------------------------------------------------


class Link:
    """One client connection; ``on_ack``/``on_delivered``/``on_lost`` are set by the caller."""

    def __init__(self) -> None:
        self.on_ack: AckHandler = _ignore_ack
        self.on_delivered: DeliveryHandler = _ignore_delivery
        self.on_lost: Callable[[], None] = _nothing

    async def send(self, out: Outgoing) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


def _ignore_ack(index: int, error: str | None) -> None:
    pass


def _ignore_delivery(index: int) -> None:
    pass


def _nothing() -> None:
    pass


class SioLink(Link):
    """A Socket.IO connection; pushed ``message`` events name their message by ``id_key``."""

    def __init__(self, conn: SioConnection, id_of: Callable[[dict[str, Any]], int | None]) -> None:
        super().__init__()
        self.conn = conn
        self._id_of = id_of
        conn.on_event = self._event
        conn.on_ack = self._ack
        conn.on_close = self._lost

    def _lost(self) -> None:
        self.on_lost()

    def _event(self, event: str, data: Any, attachments: list[bytes]) -> None:
        if event == "message" and isinstance(data, dict):
            index = self._id_of(data)
            if index is not None:
                self.on_delivered(index)

    def _ack(self, ack_id: int, payload: Any) -> None:
        if isinstance(payload, dict) and payload.get("ok"):
            self.on_ack(ack_id, None)
        else:
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            self.on_ack(ack_id, str(error.get("code", "bad_ack")))

    async def send(self, out: Outgoing) -> None:
        assert isinstance(out.frame, str)
        await self.conn.emit(out.frame, out.attachment)

    async def close(self) -> None:
        await self.conn.close()


class RawWsLink(Link):
    """A connection to ``ws_relay``: binary frames ``M``+id+payload out, ``A``+id+seq back."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__()
        self.ws = ws
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.BINARY:
                    continue
                data: bytes = msg.data
                index = _ID.unpack_from(data, 1)[0]
                if data[:1] == b"A":
                    self.on_ack(index, None)
                elif data[:1] == b"M":
                    self.on_delivered(index)
        finally:
            self.on_lost()

    async def send(self, out: Outgoing) -> None:
        assert isinstance(out.frame, bytes)
        await self.ws.send_bytes(out.frame)

    async def close(self) -> None:
        self.on_lost = _nothing
        await self.ws.close()  # while the reader runs: see SioConnection.close
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


# --- targets --------------------------------------------------------------------------


class Target:
    """A server under test: start it, open links, build messages, stop it."""

    name = ""

    def __init__(self) -> None:
        self.port = _free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.server: ServerProcess | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        env.update(HOST=HOST, PORT=str(self.port), PYTHONUNBUFFERED="1")
        return env

    ready_path = "/socket.io/?EIO=4&transport=polling"

    async def start(self, cpu: int | None) -> ServerProcess:
        self.server = ServerProcess(self.name, self.command(), self.env(), cpu=cpu)
        await self.server.wait_ready(self.base_url + self.ready_path)
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    async def connect(self, session: aiohttp.ClientSession, index: int) -> Link:
        """Link ``index``: one end of pair ``index // 2``."""
        raise NotImplementedError

    def message(self, sender: int, index: int, size: int) -> Outgoing:
        """Message ``index`` from link ``sender`` to the other end of its pair."""
        raise NotImplementedError


class Teleconsult(Target):
    name = "teleconsult"
    ready_path = "/healthz"

    def __init__(self, fixture: ChatFixture, *, users_per_link: int = 1) -> None:
        super().__init__()
        self.fixture = fixture
        self._per_user = users_per_link
        self._data = tempfile.TemporaryDirectory(prefix="bench-teleconsult-data-")

    def command(self) -> list[str]:
        return [sys.executable, "-m", "teleconsult", "serve"]

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            DATABASE_URL=self.fixture.dsn,
            JWT_SECRET=self.fixture.secret,
            JWT_ISSUER=ISSUER,
            ACCESS_TOKEN_TTL="3600",
            TELECONSULT_DATA_DIR=self._data.name,
            LOG_LEVEL="WARNING",
            LOG_FORMAT="json",
            NOTIFY_IN_SERVER="false",
            MQTT_EMBEDDED_PORT="off",
            # Nobody signs in with a password here, but start-up may hash one.
            PASSWORD_HASH_MEMLIMIT_KIB=str(OWASP_MIN_MEMLIMIT_KIB),
            PASSWORD_HASH_OPSLIMIT=str(OWASP_MIN_OPSLIMIT),
            # Benchmarks send far faster than a person: lift the per-connection limits.
            CHAT_EVENTS_PER_SECOND="1000000",
            CHAT_EVENT_BURST="1000000",
            CHAT_MAX_QUEUED_EVENTS="4096",
        )
        return env

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self._data.cleanup()

    async def connect(self, session: aiohttp.ClientSession, index: int) -> Link:
        token = self.fixture.tokens[(index // self._per_user) % len(self.fixture.tokens)]
        conn = await SioConnection.open(
            session, self.base_url, NAMESPACE, {"token": token, "encoding": "msgpack"}
        )
        return SioLink(conn, lambda data: index_of(data.get("client_msg_id")))

    def message(self, sender: int, index: int, size: int) -> Outgoing:
        f = self.fixture
        peer = sender ^ 1
        thread = f.threads[sender // 2]
        env = seal(
            plaintext=b"x" * size,
            thread_id=thread,
            sender=f.keys[sender],
            sender_device_id=f.devices[sender],
            recipients={f.devices[peer]: f.keys[peer].encryption_public_key},
            client_msg_id=client_msg_id(index),
        )
        data = {"thread_id": str(thread), "envelope": PLACEHOLDER}
        frame = event_frame(NAMESPACE, "send", data, index, binary=True)
        return Outgoing(sender, frame, to_msgpack(env))


class AiohttpWs(Target):
    name = "aiohttp-ws"
    ready_path = "/health"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.refs.ws_relay", "--port", str(self.port)]

    async def connect(self, session: aiohttp.ClientSession, index: int) -> Link:
        ws = await session.ws_connect(
            f"{self.base_url}/ws?pair={index // 2}", autoping=True, compress=0
        )
        return RawWsLink(ws)

    def message(self, sender: int, index: int, size: int) -> Outgoing:
        return Outgoing(sender, b"M" + _ID.pack(index) + secrets.token_bytes(size))


class NodeSocketIo(Target):
    name = "node-socketio"

    def command(self) -> list[str]:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node-socketio needs Node.js (node) on the PATH")
        return [node, str(NODE_DIR / "server.js")]

    def env(self) -> dict[str, str]:
        env = super().env()
        env["MAX_SECONDS"] = "900"
        return env

    async def start(self, cpu: int | None) -> ServerProcess:
        await asyncio.to_thread(ensure_node_modules)
        return await super().start(cpu)

    async def connect(self, session: aiohttp.ClientSession, index: int) -> Link:
        conn = await SioConnection.open(session, self.base_url, NAMESPACE, {"pair": index // 2})
        return SioLink(conn, lambda data: _int_or_none(data.get("id")))

    def message(self, sender: int, index: int, size: int) -> Outgoing:
        data = {"id": index, "payload": PLACEHOLDER}
        frame = event_frame(NAMESPACE, "send", data, index, binary=True)
        return Outgoing(sender, frame, secrets.token_bytes(size))


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def ensure_node_modules() -> None:
    """``npm ci`` (``npm install`` without a lock file) in the relay's folder, once."""
    if (NODE_DIR / "node_modules" / "socket.io").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("node-socketio needs npm to install socket.io (or skip that target)")
    verb = "ci" if (NODE_DIR / "package-lock.json").exists() else "install"
    print(f"installing the Socket.IO relay's packages: npm {verb}", file=sys.stderr)
    subprocess.run(
        [npm, verb, "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=NODE_DIR,
        check=True,
        timeout=300,
    )


def make_target(name: str, fixture: ChatFixture | None, *, users_per_link: int = 1) -> Target:
    if name == "teleconsult":
        assert fixture is not None
        return Teleconsult(fixture, users_per_link=users_per_link)
    if name == "aiohttp-ws":
        return AiohttpWs()
    if name == "node-socketio":
        return NodeSocketIo()
    raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")


def versions() -> dict[str, str]:
    """Versions of what serves the targets, beyond those ``bench.api_requests.machine`` has."""
    found = {"python-socketio": version("python-socketio")}
    node = shutil.which("node")
    if node:
        found["node"] = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        lock = NODE_DIR / "node_modules" / "socket.io" / "package.json"
        if lock.exists():
            found["socket.io"] = json.loads(lock.read_text())["version"]
    return found


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--targets``, ``--quiet-wait`` and ``--json``, as both chat benchmarks take them."""
    parser.add_argument(
        "--targets",
        type=target_list(TARGETS),
        default=list(TARGETS),
        help=f"comma-separated, run in this order; from {', '.join(TARGETS)}",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=0.0, help="wait up to S s for an idle machine first"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")


def describe(host: dict[str, Any]) -> str:
    """One line of machine facts from ``machine()`` plus :func:`versions`."""
    extra = f"; {host['fd_limit']}" if "fd_limit" in host else ""
    return (
        f"{host['nproc']} cores ({host['cpu_model']}), Python {host['python']}, "
        f"aiohttp {host['aiohttp']}, python-socketio {host['python-socketio']}, "
        f"Node.js {host.get('node', '-')}, socket.io {host.get('socket.io', '-')}; "
        f"pinning: {host['pinning']}{extra}; "
        f"other processes' CPU before the run: {host['busy_before_run']:.0%} of a core"
    )


def finish(report: dict[str, Any], json_path: Path | None) -> int:
    """Print the table, write the JSON (NaN as null); 1 when a result is invalid."""
    print(report["table"])
    if json_path is not None:
        text = json.dumps(_finite(report), indent=2, allow_nan=False)
        json_path.write_text(text + "\n", encoding="utf-8")
        print(f"results written to {json_path}")
    return 1 if any(r["invalid"] for r in report["results"]) else 0
