"""What one chat message costs on the wire, per transport, measured through a byte-counting proxy.

``python -m bench.wire_bytes`` runs the real server in this process on a fresh
database, puts a TCP proxy that counts bytes in each direction in front of
each client, and sends ``--messages`` messages of ``--body`` bytes from a
doctor (WebSocket) to a patient on each transport in turn. The proxy sees
everything the client's socket sends and receives: WebSocket frames,
engine.io and Socket.IO framing, HTTP requests and responses of
long-polling, pings excluded as far as the run is short (25 s ping interval).
Prints bytes per message for the sender (up: the ``send`` event; down: its
ack) and the receiver (down: the pushed ``message``; up: what polling asks).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from aiohttp import web

from teleconsult.accounts import store
from teleconsult.client.chat import ChatClient
from teleconsult.client.crypto import DeviceKeys
from teleconsult.client.rest import RestClient
from teleconsult.client.transport import SocketIoTransport
from teleconsult.core.identity import Role
from teleconsult.core.migrations import migrate
from teleconsult.core.passwords import PasswordHasher
from teleconsult.core.settings import OWASP_MIN_MEMLIMIT_KIB, OWASP_MIN_OPSLIMIT, load_settings
from teleconsult.server.app import create_app

ADMIN_DSN = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
PASSWORD = "wire-bytes-password-1"


class CountingProxy:
    """127.0.0.1:<port> → target, counting bytes client→server (up) and back (down)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.up = 0
        self.down = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def reset(self) -> tuple[int, int]:
        counts, self.up, self.down = (self.up, self.down), 0, 0
        return counts

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False)
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@dataclass
class Run:
    transport: str
    encoding: str
    sender_up: float
    sender_down: float
    receiver_down: float
    receiver_up: float


async def _database(pairs: int) -> tuple[str, list[tuple[str, str]]]:
    """A fresh database with ``pairs`` doctor/patient pairs: each run seals for
    exactly two devices (old devices of a reused user would enlarge envelopes)."""
    name = f"tc_bench_wire_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = urlunsplit(urlsplit(ADMIN_DSN)._replace(path=f"/{name}"))
    hashed = PasswordHasher(
        memlimit_kib=OWASP_MIN_MEMLIMIT_KIB, opslimit=OWASP_MIN_OPSLIMIT
    ).hash_sync(PASSWORD)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        clinic = await store.insert_clinic(conn, name="Wire clinic", timezone="UTC")
        emails = []
        for role in [Role.DOCTOR, Role.PATIENT] * pairs:
            email = f"wire-{role.value}-{secrets.token_hex(3)}@example.test"
            await store.insert_user(
                conn,
                clinic_id=clinic.id,
                email=email,
                password_hash=hashed,
                role=role,
                full_name="Wire Test",
                phone=None,
            )
            emails.append(email)
    finally:
        await conn.close()
    return dsn, list(zip(emails[0::2], emails[1::2], strict=True))


async def _drop(dsn: str) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(
            f'DROP DATABASE IF EXISTS "{urlsplit(dsn).path.lstrip("/")}" WITH (FORCE)'
        )
    finally:
        await admin.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _client(
    base: str, rest: RestClient, transports: tuple[str, ...], encoding: str
) -> ChatClient:
    keys = DeviceKeys.generate()
    device = await rest.register_device(keys)

    async def token() -> str:
        return rest.access_token

    chat = ChatClient(
        SocketIoTransport(base, token, transports=transports, encoding=encoding),
        rest,
        keys=keys,
        device_id=device,
        encoding=encoding,
    )
    await chat.start()
    return chat


async def measure(
    base_port: int,
    doctor: str,
    patient: str,
    *,
    transports: tuple[str, ...],
    encoding: str,
    messages: int,
    body: int,
) -> Run:
    base = f"http://127.0.0.1:{base_port}"
    d_rest, p_rest = RestClient(base), RestClient(base)
    await d_rest.login(doctor, PASSWORD)
    await p_rest.login(patient, PASSWORD)
    assert p_rest.user_id is not None
    thread = await d_rest.create_thread([p_rest.user_id])
    d_proxy, p_proxy = CountingProxy(base_port), CountingProxy(base_port)
    await d_proxy.start()
    await p_proxy.start()
    sender = await _client(f"http://127.0.0.1:{d_proxy.port}", d_rest, ("websocket",), encoding)
    receiver = await _client(f"http://127.0.0.1:{p_proxy.port}", p_rest, transports, encoding)
    try:
        receiver.follow(thread)
        # Warm up (device lists cached on both sides, upgrades done), then count.
        await sender.send(thread, b"x" * body)
        await receiver.next_message(within=30)
        await asyncio.sleep(0.5)
        d_proxy.reset()
        p_proxy.reset()
        attempts = 0
        for _ in range(messages):
            attempts += (await sender.send(thread, b"x" * body)).attempts
            await receiver.next_message(within=30)
        await asyncio.sleep(0.2)
        s_up, s_down = d_proxy.reset()
        print(f"  sends took {attempts} attempts for {messages} messages", file=sys.stderr)
        r_up, r_down = p_proxy.reset()
        return Run(
            "+".join(transports),
            encoding,
            s_up / messages,
            s_down / messages,
            r_down / messages,
            r_up / messages,
        )
    finally:
        await sender.close()
        await receiver.close()
        await d_rest.close()
        await p_rest.close()
        await d_proxy.close()
        await p_proxy.close()


async def run(args: argparse.Namespace) -> list[Run]:
    cases = [
        (("websocket",), "msgpack"),
        (("websocket",), "json"),
        (("polling",), "msgpack"),
        (("polling",), "json"),
    ]
    dsn, pairs = await _database(len(cases))
    port = _free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        env = {
            "DATABASE_URL": dsn,
            "TELECONSULT_DATA_DIR": data_dir,
            "PORT": str(port),
            "PASSWORD_HASH_MEMLIMIT_KIB": str(OWASP_MIN_MEMLIMIT_KIB),
            "PASSWORD_HASH_OPSLIMIT": str(OWASP_MIN_OPSLIMIT),
            "NOTIFY_IN_SERVER": "false",
            "MQTT_EMBEDDED_PORT": "off",
            "LOG_LEVEL": "WARNING",
            "CHAT_OFFLINE_HOOK": "false",
        }
        runner = web.AppRunner(create_app(load_settings(env)), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        try:
            results = []
            for (transports, encoding), (doctor, patient) in zip(cases, pairs, strict=True):
                print(f"measuring {transports[0]} / {encoding} ...", file=sys.stderr)
                results.append(
                    await measure(
                        port,
                        doctor,
                        patient,
                        transports=transports,
                        encoding=encoding,
                        messages=args.messages,
                        body=args.body,
                    )
                )
            return results
        finally:
            await runner.cleanup()
            await _drop(dsn)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50)
    parser.add_argument("--body", type=int, default=100, help="plaintext bytes per message")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    print(f"bytes per message, {args.body}-byte text, 2 devices, {args.messages} messages")
    columns = ("receiver", "encoding", "sender up", "sender down", "recv down", "recv up")
    print("".join(f"{c:>12}" for c in columns))
    for r in results:
        row = (r.transport, r.encoding, r.sender_up, r.sender_down, r.receiver_down, r.receiver_up)
        print("".join(f"{v:>12.0f}" if isinstance(v, float) else f"{v:>12}" for v in row))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
