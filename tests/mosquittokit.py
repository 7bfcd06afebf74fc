"""MQTT at the byte level, and private Mosquitto processes started from the configs we ship.

Raw packets let a test send what a well-behaved client library will not (a
CONNECT of MQTT 5 to a 3.1.1 broker, a will on someone else's topic, a refused
CONNECT naming another device's client id) and kill a link without a
DISCONNECT. Mosquitto runs from ``deploy/mosquitto/secure.conf`` (or
``dynsec.conf``) with TLS swapped for a loopback listener and paths moved into
the test's directory; everything else, the ACL and authentication included,
is the shipped file's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "mosquitto"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- packets ----------------------------------------------------------------------------


def _text(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return len(data).to_bytes(2, "big") + data


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


def connect_packet(
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    will: Will | None = None,
    clean: bool = True,
    level: int = 4,
    keepalive: int = 60,
) -> bytes:
    """A CONNECT; ``level`` 5 adds the (empty) property lists MQTT 5 has."""
    flags = 0x02 if clean else 0
    payload = _text(client_id)
    will_props = b"\x00" if level == 5 else b""
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += will_props + _text(will.topic) + _text(will.payload)
    if username is not None:
        flags |= 0x80
        payload += _text(username)
    if password is not None:
        flags |= 0x40
        payload += _text(password)
    header = _text("MQTT") + bytes((level, flags)) + keepalive.to_bytes(2, "big")
    if level == 5:
        header += b"\x00"  # no properties
    body = header + payload
    return b"\x10" + _remaining(len(body)) + body


def subscribe_packet(packet_id: int, topic: str, qos: int = 1) -> bytes:
    body = packet_id.to_bytes(2, "big") + _text(topic) + bytes((qos,))
    return b"\x82" + _remaining(len(body)) + body


class RawLink:
    """One TCP connection speaking raw MQTT; ``kill`` resets it (no DISCONNECT, no FIN)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, port: int) -> AsyncIterator[RawLink]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        link = cls(reader, writer)
        try:
            yield link
        finally:
            link.kill()
            await asyncio.sleep(0)  # let the transport's close callback run

    async def send(self, packet: bytes) -> None:
        self.writer.write(packet)
        await self.writer.drain()

    async def packet(self, within: float = 10.0) -> bytes | None:
        """The next packet from the broker, or None when it closed the connection."""
        async with asyncio.timeout(within):
            try:
                first = await self.reader.readexactly(1)
                length, shift = 0, 0
                while True:
                    byte = (await self.reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                return first + await self.reader.readexactly(length)
            except (asyncio.IncompleteReadError, ConnectionResetError):
                return None

    async def connack(self, packet: bytes) -> int | None:
        """Send a CONNECT; the CONNACK's return code, None when closed without one."""
        await self.send(packet)
        answer = await self.packet()
        if answer is None:
            return None
        assert answer[0] == 0x20 and len(answer) == 3, answer
        return answer[2]

    async def closed(self, within: float = 10.0) -> bool:
        """Whether the broker closes the connection (reads until EOF)."""
        async with asyncio.timeout(within):
            try:
                while await self.reader.read(4096):
                    pass
            except ConnectionResetError:
                pass
        return True

    def kill(self) -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


# --- Mosquitto ----------------------------------------------------------------------------


def mosquitto_binary() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        pytest.fail("mosquitto is not installed (apt-get install mosquitto)")
    return exe


def shipped_config(name: str, workdir: Path, port: int, **paths: Path) -> str:
    """``deploy/mosquitto/<name>`` for a test: the TLS listener on loopback ``port``
    instead, and every path the config names (``password_file``, ``acl_file``,
    ``persistence_location``, the plugin's ``config_file`` ...) replaced by ``paths``
    or moved into ``workdir``. Nothing else changes."""
    out = []
    for line in (DEPLOY / name).read_text().splitlines():
        words = line.split()
        key = words[0] if words else ""
        if key == "listener":
            out.append(f"listener {port} 127.0.0.1")
        elif key in ("certfile", "keyfile", "cafile"):
            continue
        elif key in ("password_file", "acl_file"):
            out.append(f"{key} {paths.get(key, workdir / Path(words[1]).name)}")
        elif key == "persistence_location":
            out.append(f"{key} {paths.get(key, workdir)}/")
        elif key == "plugin_opt_config_file":
            out.append(f"{key} {paths.get(key, workdir / Path(words[1]).name)}")
        elif key == "plugin" and "plugin" in paths:
            out.append(f"plugin {paths['plugin']}")
        elif key == "log_dest":
            out.append("log_dest stderr")
        else:
            out.append(line)
    if os.geteuid() == 0:
        # As root it would switch to the mosquitto user, who cannot read tmp_path.
        out.append("user root")
    return "\n".join(out) + "\n"


class MosquittoProcess:
    """One private Mosquitto on a fixed loopback port: start, kill, start again."""

    def __init__(self, workdir: Path, config: str, port: int) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self._conf = workdir / "mosquitto.conf"
        self._conf.write_text(config)
        self.log_path = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it listens."""
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                [mosquitto_binary(), "-c", str(self._conf)], stdout=log, stderr=subprocess.STDOUT
            )
        self._proc = proc
        for _ in range(200):
            if proc.poll() is not None:
                raise AssertionError(
                    f"mosquitto exited: {self.log_path.read_text(errors='replace')}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("mosquitto did not start listening")

    def kill(self) -> None:
        """SIGKILL: every connection drops at once, no will is sent."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(timeout=10)


@contextlib.contextmanager
def run_mosquitto(workdir: Path, config: str, port: int) -> Iterator[int]:
    with mosquitto_process(workdir, config, port) as broker:
        yield broker.port


@contextlib.contextmanager
def mosquitto_process(workdir: Path, config: str, port: int) -> Iterator[MosquittoProcess]:
    broker = MosquittoProcess(workdir, config, port)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@contextlib.contextmanager
def secure_mosquitto(workdir: Path, users: dict[str, str]) -> Iterator[int]:
    """Mosquitto from deploy/mosquitto/secure.conf, with a password file of ``users``."""
    with secure_mosquitto_process(workdir, users) as broker:
        yield broker.port


@contextlib.contextmanager
def secure_mosquitto_process(workdir: Path, users: dict[str, str]) -> Iterator[MosquittoProcess]:
    """:func:`secure_mosquitto`, as a process the test may kill and start again."""
    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.fail("mosquitto_passwd is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    password_file = workdir / "passwords"
    password_file.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run([passwd, "-b", str(password_file), user, password], check=True)
    port = free_port()
    config = shipped_config(
        "secure.conf",
        workdir,
        port,
        password_file=password_file,
        acl_file=DEPLOY / "acl",
        persistence_location=workdir,
    )
    with mosquitto_process(workdir, config, port) as broker:
        yield broker


DYNSEC_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")


@contextlib.contextmanager
def dynsec_mosquitto(workdir: Path, admin: str, admin_password: str) -> Iterator[int]:
    """Mosquitto from deploy/mosquitto/dynsec.conf; its plugin's JSON made by
    ``mosquitto_ctrl dynsec init`` with ``admin`` as the admin account."""
    ctrl = shutil.which("mosquitto_ctrl")
    if ctrl is None or not DYNSEC_PLUGIN.exists():
        pytest.fail("mosquitto_ctrl or the dynamic-security plugin is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    state = workdir / "dynamic-security.json"
    subprocess.run(
        [ctrl, "dynsec", "init", str(state), admin, admin_password],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    port = free_port()
    config = shipped_config(
        "dynsec.conf",
        workdir,
        port,
        plugin=DYNSEC_PLUGIN,
        plugin_opt_config_file=state,
        persistence_location=workdir,
    )
    with run_mosquitto(workdir, config, port):
        yield port


# --- a link the test controls ---------------------------------------------------------------


class Gate:
    """A TCP relay to ``127.0.0.1:target`` that a test opens, shuts, cuts and stalls.

    * ``shut()``: new connections are reset at once (as if refused), and ``cut()``
      resets the ones there are; ``open()`` lets connections through again.
    * ``stall()``: bytes stop flowing both ways (held, never delivered) until the
      links are cut: a request sent meanwhile is lost with its link.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.is_open = True
        self.stalled = False
        self.held = 0  # bytes held back by a stall
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Gate:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        self.shut()  # every link's pumps end, and with them their tasks
        async with asyncio.timeout(10):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def open(self) -> None:
        self.is_open, self.stalled = True, False

    def shut(self) -> None:
        self.is_open = False
        self.cut()

    def stall(self) -> None:
        self.stalled = True

    def cut(self) -> None:
        """Reset every link through the gate (no FIN: like a dropped network)."""
        for pair in list(self._links):
            for writer in pair:
                _reset(writer)
        self._links.clear()
        self.stalled = False

    @property
    def links(self) -> int:
        return len(self._links)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if not self.is_open:
                _reset(writer)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
            except OSError:
                _reset(writer)
                return
            pair = (writer, up_writer)
            self._links.add(pair)
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True
            )
            self._links.discard(pair)
            for w in pair:
                _reset(w)
        except OSError:
            pass  # a link reset while it was being set up
        finally:
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.stalled:
                self.held += len(data)
                continue
            writer.write(data)
            await writer.drain()
        _reset(writer)  # one side ended: so does the other


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
