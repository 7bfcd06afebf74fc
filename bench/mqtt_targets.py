"""The MQTT paths ``bench.mqtt_path`` drives, and one client link per user device.

The broker and (where there is one) the server run pinned to one core, the
devices -- aiomqtt clients in the benchmark's process -- on another:

* ``mosquitto`` -- the reference: a private Mosquitto alone. User ``2k``'s
  device publishes QoS 1 straight to the inbox topic of user ``2k + 1`` (and the
  other way round), which that device has subscribed to: the broker's own
  ceiling for one QoS 1 hop with a payload the size of a ``send`` request. Same
  configuration as the project's broker (password file, the shipped
  ``deploy/mosquitto/acl``) plus one ACL pattern that lets users write inboxes;
* ``teleconsult-mosquitto`` -- the project: the same kind of private Mosquitto
  with the shipped ACL, and ``teleconsult serve`` bridging it (``MQTT_URL``,
  shared subscription). A device publishes ``send`` with a real sealed envelope
  to ``tc/u/<user>/req``; the server checks it, stores it in PostgreSQL, acks on
  ``/ack`` and pushes it to both members' ``/inbox``;
* ``teleconsult-amqtt`` -- the server's embedded amqtt broker
  (``MQTT_EMBEDDED_PORT``; devices sign in with their access token). The broker
  lives in the server process, so its CPU is in the server's;
* ``teleconsult-mosquitto-nodelay``, ``teleconsult-amqtt-nodelay`` -- the same,
  the server started through ``python -m bench.mqtt_targets serve-nodelay``,
  which turns TCP_NODELAY on for the bridge's socket (paho leaves Nagle's
  algorithm on): what that fix gives.

Nagle's algorithm: Mosquitto (``set_tcp_nodelay`` false) and paho leave it on
by default, and small QoS 1 packets then wait for delayed ACKs (tens of ms).
With ``nodelay`` (the default of ``bench.mqtt_path``) the benchmark's
Mosquitto sets ``set_tcp_nodelay true`` and each device sets TCP_NODELAY;
``--nagle`` keeps both defaults. The server's own bridge is as shipped either
way, except in the ``-nodelay`` target.

A link is one device: an aiomqtt client (persistent session, QoS 1 both ways,
as ``MqttTransport``). Only the connection, subscriptions and session run
through aiomqtt; each publish and each arrival go through its paho client
directly (``publish`` without awaiting the PUBACK, a per-topic callback),
because aiomqtt's future per publish and task per message would make the
generator the bottleneck at a few thousand messages a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any
from uuid import UUID

import aiomqtt
import msgpack
import paho.mqtt.client as paho

from bench.api_requests import _free_port
from bench.chat_targets import ChatFixture, Teleconsult, client_msg_id, index_of
from bench.procs import HOST, REPO, ServerProcess
from teleconsult.client.crypto import seal
from teleconsult.messaging import mqtt_wire
from teleconsult.messaging.envelope import to_msgpack
from teleconsult.messaging.mqtt_broker import BRIDGE_USERNAME

TARGETS = (
    "mosquitto",
    "teleconsult-mosquitto",
    "teleconsult-mosquitto-nodelay",
    "teleconsult-amqtt",
    "teleconsult-amqtt-nodelay",
)
DEFAULT_TARGETS = ("mosquitto", "teleconsult-mosquitto", "teleconsult-amqtt")
REFERENCE = "mosquitto"
ACL_FILE = REPO / "deploy" / "mosquitto" / "acl"
# The reference's only change to the shipped ACL: a device may write another's inbox.
REFERENCE_ACL = "pattern write tc/u/+/inbox\n"
INFLIGHT = 100  # QoS 1 messages a client keeps unacknowledged (paho's default is 20)

# (message index, error code or None): the server acked the request.
AckHandler = Callable[[int, str | None], None]
DeliveryHandler = Callable[[int], None]  # message index: the recipient has it
Payload = bytes | bytearray

_quiet = logging.getLogger("bench.mqtt")
_quiet.setLevel(logging.ERROR)  # aiomqtt warns about pending calls; none are awaited here


@dataclass(frozen=True)
class Publish:
    """One message, built before the measured window."""

    sender: int  # link index
    topic: str
    payload: bytes


class Mosquitto:
    """A private Mosquitto on a free loopback port with a password file and an ACL."""

    def __init__(self, passwords: dict[str, str], *, nodelay: bool, extra_acl: str = "") -> None:
        self._passwords = passwords
        self._nodelay = nodelay
        self._extra_acl = extra_acl
        self._dir = tempfile.TemporaryDirectory(prefix="bench-mosquitto-")
        self.port = _free_port()
        self.process: ServerProcess | None = None

    async def start(self, cpu: int | None) -> None:
        command = await asyncio.to_thread(self._configure)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/usr/sbin")}
        self.process = ServerProcess("mosquitto", command, env, cpu=cpu)
        await wait_for_port(self.port, self.process)

    def _configure(self) -> list[str]:
        """Write the password file, ACL and configuration; the command that runs them."""
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        passwd = shutil.which("mosquitto_passwd")
        if not Path(exe).exists() or passwd is None:
            raise RuntimeError("the MQTT benchmark needs mosquitto and mosquitto_passwd")
        workdir = Path(self._dir.name)
        password_file = workdir / "passwords"
        password_file.write_text("".join(f"{u}:{p}\n" for u, p in self._passwords.items()))
        password_file.chmod(0o600)
        subprocess.run([passwd, "-U", str(password_file)], check=True, timeout=60)
        acl = workdir / "acl"
        acl.write_text(ACL_FILE.read_text() + self._extra_acl)
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {HOST}\n"
            "allow_anonymous false\n"
            f"password_file {password_file}\n"
            f"acl_file {acl}\n"
            "persistence false\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
            + ("set_tcp_nodelay true\n" if self._nodelay else "")
            +
            # As root it would switch to the mosquitto user, who cannot read the temp dir.
            "user root\n"
        )
        return [exe, "-c", str(conf)]

    def stop(self) -> None:
        try:
            if self.process is not None:
                self.process.stop()
                self.process = None
        finally:
            self._dir.cleanup()


async def wait_for_port(port: int, process: ServerProcess, within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while True:
            process.check_alive()
            try:
                _, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


# --- links ----------------------------------------------------------------------------


class MqttLink:
    """One device; ``on_ack``/``on_delivered`` are set by the caller before each step."""

    def __init__(self, client: aiomqtt.Client, stack: contextlib.AsyncExitStack) -> None:
        self.client = client
        self._stack = stack
        self.on_ack: AckHandler = _ignore_ack
        self.on_delivered: DeliveryHandler = _ignore_delivery
        self.on_frame: Callable[[str, Payload], None] | None = None  # every arrival, for checks

    @property
    def _paho(self) -> paho.Client:
        return self.client._client

    def listen(self, topic: str, take: Callable[[MqttLink, Payload], None]) -> None:
        def callback(_client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
            if self.on_frame is not None:
                self.on_frame(message.topic, message.payload)
            take(self, message.payload)

        self._paho.message_callback_add(topic, callback)

    def send(self, out: Publish) -> int:
        """Queue the PUBLISH in paho (written as the socket allows); paho's error code."""
        rc: int = self._paho.publish(out.topic, out.payload, qos=1).rc
        return rc

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._stack.aclose()


def _ignore_ack(index: int, error: str | None) -> None:
    pass


def _ignore_delivery(index: int) -> None:
    pass


async def open_link(
    port: int, user_id: UUID, password: str, index: int, *, nodelay: bool
) -> MqttLink:
    client = aiomqtt.Client(
        HOST,
        port,
        username=str(user_id),
        password=password,
        identifier=f"{user_id}-bench{index}",
        clean_session=False,
        max_inflight_messages=INFLIGHT,
        logger=_quiet,
    )
    stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(client)
    sock = client._client.socket()
    if nodelay and isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return MqttLink(client, stack)


# --- targets --------------------------------------------------------------------------


def sample_request(body: int) -> bytes:
    """A ``send`` request as a device publishes it: a sealed envelope for two devices."""
    from teleconsult.client.crypto import DeviceKeys

    me, peer = DeviceKeys.generate(), DeviceKeys.generate()
    thread, mine, theirs = (UUID(bytes=secrets.token_bytes(16), version=4) for _ in range(3))
    env = seal(
        plaintext=b"x" * body,
        thread_id=thread,
        sender=me,
        sender_device_id=mine,
        recipients={theirs: peer.encryption_public_key},
        client_msg_id=client_msg_id(0),
    )
    data = {"thread_id": str(thread), "envelope": to_msgpack(env)}
    return mqtt_wire.encode_request(client_msg_id(0), "send", data, "msgpack")


class MqttTarget:
    """A path under test: start it, open links, build messages, stop it."""

    name = ""
    acks = False  # the server answers each request on /ack

    def __init__(self, fixture: ChatFixture, *, nodelay: bool) -> None:
        self.fixture = fixture
        self.nodelay = nodelay  # TCP_NODELAY on the devices' sockets and in Mosquitto
        self.passwords = {str(u): secrets.token_hex(16) for u in fixture.user_ids}
        self.broker: Mosquitto | None = None

    @property
    def server_pid(self) -> int:
        """The process whose CPU is the 'server' column."""
        raise NotImplementedError

    @property
    def broker_pid(self) -> int | None:
        """A broker process of its own (None: there is none, or it is the server)."""
        return None

    @property
    def broker_port(self) -> int:
        assert self.broker is not None
        return self.broker.port

    async def start(self, cpu: int | None) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def check_alive(self) -> None:
        if self.broker is not None and self.broker.process is not None:
            self.broker.process.check_alive()

    def password(self, index: int) -> str:
        return self.passwords[str(self.fixture.user_ids[index])]

    async def connect(self, index: int) -> MqttLink:
        """Link ``index``, the device of user ``index``: one end of pair ``index // 2``."""
        user = self.fixture.user_ids[index]
        link = await open_link(
            self.broker_port, user, self.password(index), index, nodelay=self.nodelay
        )
        topics = [mqtt_wire.inbox_topic(user)]
        if self.acks:
            topics.append(mqtt_wire.ack_topic(user))
            link.listen(mqtt_wire.ack_topic(user), _take_ack)
        link.listen(mqtt_wire.inbox_topic(user), self._take_inbox)
        await link.client.subscribe([(t, 1) for t in topics])
        return link

    def _take_inbox(self, link: MqttLink, payload: Payload) -> None:
        raise NotImplementedError

    def message(self, sender: int, index: int, body: int) -> Publish:
        """Message ``index`` from link ``sender`` to the other end of its pair."""
        raise NotImplementedError


class MosquittoAlone(MqttTarget):
    name = "mosquitto"

    def __init__(self, fixture: ChatFixture, payload_bytes: int, *, nodelay: bool) -> None:
        super().__init__(fixture, nodelay=nodelay)
        self._padding = secrets.token_bytes(max(0, payload_bytes - 8))

    @property
    def server_pid(self) -> int:
        assert self.broker is not None and self.broker.process is not None
        return self.broker.process.pid

    async def start(self, cpu: int | None) -> None:
        self.broker = Mosquitto(self.passwords, nodelay=self.nodelay, extra_acl=REFERENCE_ACL)
        await self.broker.start(cpu)

    def _take_inbox(self, link: MqttLink, payload: Payload) -> None:
        link.on_delivered(int.from_bytes(payload[:8], "big"))

    def message(self, sender: int, index: int, body: int) -> Publish:
        peer = self.fixture.user_ids[sender ^ 1]
        payload = index.to_bytes(8, "big") + self._padding
        return Publish(sender, mqtt_wire.inbox_topic(peer), payload)


def _take_ack(link: MqttLink, payload: Payload) -> None:
    frame = msgpack.unpackb(payload, raw=False)
    index = index_of(frame.get("id"))
    if index is None:
        return
    ack = frame.get("ack") or {}
    error = None if ack.get("ok") else str((ack.get("error") or {}).get("code", "bad_ack"))
    link.on_ack(index, error)


class TeleconsultMqtt(MqttTarget):
    """``teleconsult serve`` bridging a private Mosquitto, or its embedded amqtt broker."""

    acks = True

    def __init__(
        self, name: str, fixture: ChatFixture, *, nodelay: bool, bridge_nodelay: bool = False
    ) -> None:
        super().__init__(fixture, nodelay=nodelay)
        self.name = name
        self.embedded = name.startswith("teleconsult-amqtt")
        self.bridge_password = secrets.token_hex(16)
        self._embedded_port = _free_port()
        self.app = _BridgedServer(fixture, self._mqtt_env(), bridge_nodelay=bridge_nodelay)

    def _mqtt_env(self) -> dict[str, str]:
        if self.embedded:
            return {"MQTT_EMBEDDED_PORT": str(self._embedded_port), "MQTT_EMBEDDED_HOST": HOST}
        return {"MQTT_EMBEDDED_PORT": "off"}  # MQTT_URL once the broker has its port

    @property
    def server_pid(self) -> int:
        assert self.app.server is not None
        return self.app.server.pid

    @property
    def broker_pid(self) -> int | None:
        if self.broker is None or self.broker.process is None:
            return None
        return self.broker.process.pid

    @property
    def broker_port(self) -> int:
        return self._embedded_port if self.embedded else super().broker_port

    def password(self, index: int) -> str:
        # The embedded broker checks the access token; Mosquitto its password file.
        return self.fixture.tokens[index] if self.embedded else super().password(index)

    async def start(self, cpu: int | None) -> None:
        if not self.embedded:
            accounts = {BRIDGE_USERNAME: self.bridge_password, **self.passwords}
            self.broker = Mosquitto(accounts, nodelay=self.nodelay)
            await self.broker.start(cpu)
            url = f"mqtt://{BRIDGE_USERNAME}:{self.bridge_password}@{HOST}:{self.broker.port}"
            self.app.extra["MQTT_URL"] = url
        await self.app.start(cpu)

    def stop(self) -> None:
        try:
            self.app.stop()
        finally:
            super().stop()

    def check_alive(self) -> None:
        super().check_alive()
        assert self.app.server is not None
        self.app.server.check_alive()

    def _take_inbox(self, link: MqttLink, payload: Payload) -> None:
        frame = msgpack.unpackb(payload, raw=False)
        data = frame.get("data") or {}
        index = index_of(data.get("client_msg_id"))
        if index is not None:
            link.on_delivered(index)

    def message(self, sender: int, index: int, body: int) -> Publish:
        # The sealed envelope of bench.chat_targets' Socket.IO send, as an MQTT request.
        envelope = self.app.message(sender, index, body).attachment
        thread = self.fixture.threads[sender // 2]
        data = {"thread_id": str(thread), "envelope": envelope}
        payload = mqtt_wire.encode_request(client_msg_id(index), "send", data, "msgpack")
        return Publish(sender, mqtt_wire.request_topic(self.fixture.user_ids[sender]), payload)

    async def wait_bridged(self, link: MqttLink, user: UUID, within: float = 30.0) -> None:
        """Until the bridge answers a request of ``user`` (it subscribes after start-up)."""
        answered = asyncio.Event()
        link.on_ack = lambda index, error: answered.set()
        probe = mqtt_wire.encode_request(client_msg_id(0), "resume", {"threads": {}}, "msgpack")
        async with asyncio.timeout(within):
            while not answered.is_set():
                self.check_alive()
                link.send(Publish(0, mqtt_wire.request_topic(user), probe))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(answered.wait(), 1.0)
        link.on_ack = _ignore_ack


class _BridgedServer(Teleconsult):
    """``bench.chat_targets``' teleconsult server, with the MQTT transport turned on."""

    def __init__(
        self, fixture: ChatFixture, extra: dict[str, str], *, bridge_nodelay: bool
    ) -> None:
        super().__init__(fixture)
        self.extra = extra
        self._bridge_nodelay = bridge_nodelay

    def command(self) -> list[str]:
        if self._bridge_nodelay:
            return [sys.executable, "-m", "bench.mqtt_targets", "serve-nodelay"]
        return super().command()

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(self.extra, CHAT_OFFLINE_HOOK="false")
        return env


def make_target(
    name: str, fixture: ChatFixture, payload_bytes: int, *, nodelay: bool
) -> MqttTarget:
    if name == "mosquitto":
        return MosquittoAlone(fixture, payload_bytes, nodelay=nodelay)
    if name in TARGETS:
        fix = name.endswith("-nodelay")
        return TeleconsultMqtt(name, fixture, nodelay=nodelay, bridge_nodelay=fix)
    raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")


def versions() -> dict[str, str]:
    """Versions of the brokers and MQTT libraries."""
    found = {name: version(name) for name in ("aiomqtt", "paho-mqtt", "amqtt", "msgpack")}
    exe = shutil.which("mosquitto")
    if exe:
        out = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=10)
        first = (out.stdout or out.stderr).splitlines()[:1]
        found["mosquitto"] = first[0].removeprefix("mosquitto version ") if first else "?"
    return found


def serve_with_nodelay() -> int:
    """``teleconsult serve`` whose bridge socket sets TCP_NODELAY: what a fix would give.

    paho opens its socket with ``socket.create_connection`` and leaves Nagle's
    algorithm on, so a small PUBLISH (an ack, an inbox push) can wait for the
    broker's delayed ACK. asyncio's own connections (asyncpg) set TCP_NODELAY
    already; this turns it on for the rest of the process's outgoing TCP too.
    """
    plain = socket.create_connection

    def create_connection(*args: Any, **kwargs: Any) -> socket.socket:
        sock = plain(*args, **kwargs)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    socket.create_connection = create_connection
    from teleconsult.cli import main

    return main(["serve"])


if __name__ == "__main__":
    if sys.argv[1:] != ["serve-nodelay"]:
        raise SystemExit("usage: python -m bench.mqtt_targets serve-nodelay")
    sys.exit(serve_with_nodelay())
