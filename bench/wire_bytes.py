"""What one chat message costs on the wire, per Socket.IO transport and encoding.

Run: ``.venv/bin/python -m bench.wire_bytes [--messages 50] [--body 100] [--smoke]``.

The real server (``teleconsult serve``); for each case a fresh doctor and patient
(so each envelope is sealed for exactly two devices), each a ``ChatClient`` of the
project's client library behind a TCP proxy that counts the bytes each way. The
doctor sends on WebSocket; the patient receives on the case's transport. After a
warm-up message (device lists cached, upgrades done) the proxies count
``--messages`` messages: bytes per message for the sender (up: ``send``; down: its
ack) and the receiver (down: the pushed ``message``; up: what polling asks for).
Pings fall outside a short run (25 s interval). Confirm steps: every message
opened by the receiver and acked on the first attempt.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from bench.harness import report
from bench.harness.load import say
from bench.harness.procs import HOST
from bench.harness.report import Column, Row
from bench.harness.world import Lab, Person, open_lab
from teleconsult.client.chat import ChatClient
from teleconsult.client.crypto import DeviceKeys
from teleconsult.client.rest import RestClient
from teleconsult.client.transport import SocketIoTransport
from teleconsult.core.identity import Role

CASES = (
    ("websocket", "msgpack"),
    ("websocket", "json"),
    ("polling", "msgpack"),
    ("polling", "json"),
)
COLUMNS = (
    Column("sender up", "sender_up", ">9.0f"),
    Column("sender down", "sender_down", ">11.0f"),
    Column("recv down", "receiver_down", ">9.0f"),
    Column("recv up", "receiver_up", ">7.0f"),
)


class Proxy:
    """``HOST:port`` -> the server, counting bytes client -> server (up) and back (down)."""

    def __init__(self, target: int) -> None:
        self.target, self.up, self.down, self.port = target, 0, 0, 0
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._handle, HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return f"http://{HOST}:{self.port}"

    def take(self) -> tuple[int, int]:
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
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, True), self._pipe(up_reader, writer, False)
        )

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def client(base: str, rest: RestClient, transport: str, encoding: str) -> ChatClient:
    keys = DeviceKeys.generate()
    device = await rest.register_device(keys)

    async def token() -> str:
        assert rest.access_token is not None
        return rest.access_token

    link = SocketIoTransport(base, token, transports=(transport,), encoding=encoding)
    chat = ChatClient(link, rest, keys=keys, device_id=device, encoding=encoding)
    await chat.start()
    return chat


def signed_in(base: str, person: Person) -> RestClient:
    rest = RestClient(base)
    rest.access_token, rest.user_id = person.token, person.user_id
    return rest


async def measure(
    lab: Lab, port: int, transport: str, encoding: str, args: argparse.Namespace
) -> Row:
    [doctor] = await lab.people(Role.DOCTOR, 1)
    [patient] = await lab.people(Role.PATIENT, 1)
    base = f"http://{HOST}:{port}"
    sender_rest, receiver_rest = signed_in(base, doctor), signed_in(base, patient)
    thread = await sender_rest.create_thread([patient.user_id])
    sending, receiving = Proxy(port), Proxy(port)
    sender = await client(await sending.start(), sender_rest, "websocket", encoding)
    receiver = await client(await receiving.start(), receiver_rest, transport, encoding)
    row = Row(f"{transport} {encoding}")
    try:
        receiver.follow(thread)
        await sender.send(thread, b"x" * args.body)
        await receiver.next_message(within=30)
        await asyncio.sleep(0.5)
        sending.take(), receiving.take()
        attempts = opened = 0
        for _ in range(args.messages):
            attempts += (await sender.send(thread, b"x" * args.body)).attempts
            got = await receiver.next_message(within=30)
            opened += got.plaintext == b"x" * args.body
        await asyncio.sleep(0.2)
        (s_up, s_down), (r_up, r_down) = sending.take(), receiving.take()
    finally:
        for closing in (
            sender.close(),
            receiver.close(),
            sender_rest.close(),
            receiver_rest.close(),
        ):
            await closing
        await sending.close()
        await receiving.close()
    n = args.messages
    row.fields.update(
        sender_up=s_up / n, sender_down=s_down / n, receiver_down=r_down / n, receiver_up=r_up / n
    )
    row.check(f"every message opened by the receiver ({opened}/{n})", opened == n)
    row.check(f"every send acked at the first attempt ({attempts} for {n})", attempts == n)
    return row.judge()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with open_lab("wire", args) as lab:
        server = lab.teleconsult()
        try:
            await server.wait_http("/readyz")
            rows = []
            for transport, encoding in CASES:
                say(f"measuring {transport} / {encoding}")
                rows.append(await measure(lab, server.port, transport, encoding, args))
        finally:
            server.stop()
        head = f"bytes per message, {args.body}-byte text, 2 devices, {args.messages} messages"
        return report.document(
            "wire_bytes", args, lab.facts, rows, head + "\n" + report.table(rows, COLUMNS)
        )


def main(argv: list[str] | None = None) -> int:
    p = report.parser("bench.wire_bytes", __doc__, ("teleconsult",), ("teleconsult",))
    p.add_argument("--messages", type=int, default=50, help="messages counted per case")
    p.add_argument("--body", type=int, default=100, help="plaintext bytes per message")
    args = p.parse_args(argv)
    if args.smoke:
        args.messages = 3
    return report.main(lambda: run(args), args)


if __name__ == "__main__":
    sys.exit(main())
