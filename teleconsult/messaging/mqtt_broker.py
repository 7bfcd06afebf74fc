"""The embedded MQTT broker (amqtt) for one-process installs, with the server's own access rules.

Started when ``MQTT_URL`` is not set. A device connects with its user id as
the MQTT username, a current access token as the password, and a client id
that starts with its user id; it may publish only to its own ``req`` topic
(its Last Will too, not retained: amqtt sends a will without the topic
check) and subscribe to (and receive from) only its own ``ack`` and ``inbox``, and
the bridge's announcement ``tc/srv/up``, which only the bridge publishes. The
server's bridge connects as ``bridge_username`` with a secret made at start-up
that never leaves the process. :class:`BrokerAccess` holds those rules as
plain code; the two amqtt plugins below only call it.

amqtt speaks MQTT 3.1.1 without shared subscriptions: one server process per
embedded broker (several processes need an external broker, docs/mqtt.md).

Every TCP connection's first packet is read here before amqtt sees it
(``_GatedBroker``, the only code below amqtt's plugin API): a CONNECT of
another MQTT version is answered "unacceptable protocol version", and a
CONNECT is authenticated before amqtt may act on its client id (amqtt ends
the session of an online client with the same id, and copies the CONNECT's
will and credentials onto it, before it authenticates). The broker keeps each
connection's user and login session, so a :class:`Revocation` closes the
connections it covers (:meth:`EmbeddedBroker.revoke`). It also notes which
device a connection speaks for, from the first request it publishes (the
``device`` its frame names; only its own user's topic counts), so a revoked
device's connection is closed too. That device may connect again while its
user's login session lasts: the bridge drops whatever it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from amqtt.adapters import ReaderAdapter, StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.errors import BrokerError
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin

from teleconsult.core.errors import ClientError, ConfigError
from teleconsult.core.identity import Principal
from teleconsult.core.revocation import Revocation
from teleconsult.messaging import mqtt_connect, mqtt_wire

logger = logging.getLogger(__name__)

Authenticator = Callable[[str], Awaitable[Principal]]
BRIDGE_USERNAME = "teleconsult-bridge"


@dataclass(frozen=True, slots=True)
class Admitted:
    """A connection let in: its user and login session (both None for the bridge)."""

    user_id: UUID | None
    session_id: UUID | None


@dataclass(frozen=True)
class BrokerAccess:
    """Who may connect to the embedded broker, and which topics each may use."""

    authenticate: Authenticator
    bridge_username: str = BRIDGE_USERNAME
    bridge_password: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    async def may_connect(
        self,
        username: str | None,
        password: str | None,
        client_id: str,
        *,
        will_topic: str | None = None,
        will_retain: bool = False,
    ) -> bool:
        """``will_topic``: the Last Will's topic when the CONNECT has one."""
        admitted = await self.admit(
            username, password, client_id, will_topic=will_topic, will_retain=will_retain
        )
        return admitted is not None

    async def admit(
        self,
        username: str | None,
        password: str | None,
        client_id: str,
        *,
        will_topic: str | None = None,
        will_retain: bool = False,
    ) -> Admitted | None:
        """Who connects, or None when the CONNECT is refused."""
        if not username or not password:
            return None
        if username == self.bridge_username:
            if will_topic is None and hmac.compare_digest(
                password.encode(), self.bridge_password.encode()
            ):
                return Admitted(None, None)
            return None
        user_id = _user_id(username)
        # The client id is bound to the user, so nobody can take over (and read
        # the queued inbox of) another user's persistent session.
        if user_id is None or not client_id.startswith(username):
            return None
        # amqtt publishes a will without asking the topic plugin: a will on
        # someone else's ``req`` would be a request made as them.
        if will_topic is not None and (
            will_retain or not self.may(username, "publish", will_topic)
        ):
            return None
        try:
            principal = await self.authenticate(password)
        except ClientError:
            return None
        if principal.user_id != user_id:
            return None
        return Admitted(user_id, principal.session_id)

    def may(self, username: str | None, action: str, topic: str) -> bool:
        """``action``: publish, subscribe or receive (amqtt's names)."""
        if not username or not topic:
            return False
        if username == self.bridge_username:
            if action == "publish":
                return topic == mqtt_wire.SERVER_UP_TOPIC or any(
                    mqtt_wire.user_of(topic, kind) for kind in ("ack", "inbox")
                )
            return topic == mqtt_wire.request_filter() or bool(mqtt_wire.user_of(topic, "req"))
        user_id = _user_id(username)
        if user_id is None:
            return False
        if action == "publish":
            return topic == mqtt_wire.request_topic(user_id)
        return topic in (
            mqtt_wire.ack_topic(user_id),
            mqtt_wire.inbox_topic(user_id),
            mqtt_wire.SERVER_UP_TOPIC,
        )


def _user_id(username: str) -> UUID | None:
    try:
        user_id = UUID(username)
    except ValueError:
        return None
    return user_id if str(user_id) == username else None


class AccessAuthPlugin(BaseAuthPlugin):
    @dataclass
    class Config:
        access: Any = None

    async def authenticate(self, *, session: Any) -> bool:
        access: BrokerAccess = self.config.access
        allowed = await access.may_connect(
            session.username,
            session.password,
            session.client_id or "",
            will_topic=session.will_topic if session.will_flag else None,
            will_retain=bool(session.will_retain),
        )
        if not allowed:
            logger.info("MQTT connection refused", extra={"mqtt_client_id": session.client_id})
        return allowed


class AccessTopicPlugin(BaseTopicPlugin):
    @dataclass
    class Config:
        access: Any = None
        published: Any = None  # Callable[[str, str, bytes], None]: client id, topic, payload

    async def on_broker_message_received(self, *, client_id: str, message: Any) -> None:
        if self.config.published is not None and message is not None:
            self.config.published(client_id, message.topic, message.data)

    async def topic_filtering(
        self, *, session: Any = None, topic: str | None = None, action: Any = None
    ) -> bool:
        access: BrokerAccess = self.config.access
        username = session.username if session is not None else None
        return access.may(username, str(action or ""), topic or "")


class _Replayed(ReaderAdapter):
    """The connection's reader with the CONNECT already read put back in front."""

    def __init__(self, first: bytes, reader: asyncio.StreamReader) -> None:
        self._first = first
        self._rest = StreamReaderAdapter(reader)

    async def read(self, n: int = -1) -> bytes:
        if not self._first:
            data: bytes = await self._rest.read(n)
            return data
        if n == -1:
            first, self._first = self._first, b""
            rest: bytes = await self._rest.read(-1)
            return first + rest
        chunk, self._first = self._first[:n], self._first[n:]
        if len(chunk) < n:
            chunk += await self._rest.read(n - len(chunk))
        return chunk

    def feed_eof(self) -> None:
        self._rest.feed_eof()


Gate = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable["_Link | None"]]


class _GatedBroker(Broker):
    """amqtt's Broker, each TCP connection's CONNECT checked by ``gate`` before amqtt reads it.

    Overrides ``stream_connected`` (the listener's callback) and
    ``retain_message``, and calls ``_client_connected`` (amqtt's handling of a
    connection from its first packet on): tests/security/test_mqtt_identity.py
    checks all three against the amqtt version pinned in pyproject.toml.
    """

    def __init__(
        self, config: dict[str, Any], gate: Gate, live: set[_Link], by_client: dict[str, _Link]
    ) -> None:
        super().__init__(config)
        self._gate = gate
        self._live = live
        self._by_client = by_client

    async def retain_message(
        self, source_session: Any, topic_name: str | None, data: Any, qos: int | None = None
    ) -> None:
        """Retain nothing: no topic of ours needs it, and amqtt 0.12 sends every retained
        message matching anyone's subscription to each client that connects, without
        the topic plugin's receive check (one user's retained ``req`` would reach all)."""
        if data:
            logger.debug("dropped the retain flag of an MQTT publish on %s", topic_name)

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        link = await self._gate(reader, writer)
        if link is None:
            return
        self._live.add(link)
        self._by_client[link.client_id] = link
        try:
            await self._client_connected(
                listener_name, _Replayed(link.connect, reader), StreamWriterAdapter(writer)
            )
        finally:
            self._live.discard(link)
            if self._by_client.get(link.client_id) is link:
                del self._by_client[link.client_id]


@dataclass(eq=False, slots=True)
class _Link:
    """One admitted connection: who it is, and its socket to cut on revocation.

    ``device_id``: the device its first request named (None before, or unsigned);
    ``heard``: whether that first request came."""

    connect: bytes = field(repr=False)
    client_id: str
    admitted: Admitted
    writer: asyncio.StreamWriter = field(repr=False)
    device_id: UUID | None = None
    heard: bool = False

    def ends_with(self, revocation: Revocation) -> bool:
        user_id = self.admitted.user_id
        if user_id is None:
            return False
        if revocation.device_id is not None:
            return user_id == revocation.user_id and self.device_id == revocation.device_id
        return revocation.covers(user_id, self.admitted.session_id)


CONNECT_WITHIN = 10.0  # seconds a new connection has to send its CONNECT
MAX_NOTED_BYTES = 1 << 20  # a first request larger than this names no device here


class EmbeddedBroker:
    """amqtt on ``host:port`` with :class:`BrokerAccess` enforced; ``start`` then ``close``.

    ``revoke`` is a :data:`~teleconsult.core.revocation.RevocationHandler`: it
    closes the connections of the login sessions (or the user) a revocation
    names, as a dead link would end (their Last Will is sent); their token no
    longer passes CONNECT.
    """

    def __init__(self, host: str, port: int, access: BrokerAccess) -> None:
        self.host, self.port, self.access = host, port, access
        self._broker: Broker | None = None
        self._live: set[_Link] = set()
        self._by_client: dict[str, _Link] = {}
        self.refused = 0  # CONNECTs answered with a refusal or closed unread (tests, metrics)

    async def start(self) -> None:
        # amqtt logs every connection and its state machine every transition at INFO.
        for noisy in ("amqtt", "transitions"):
            if logging.getLogger(noisy).level == logging.NOTSET:
                logging.getLogger(noisy).setLevel(logging.WARNING)
        plugin = f"{__name__}."
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {
                plugin + AccessAuthPlugin.__name__: {"access": self.access},
                plugin + AccessTopicPlugin.__name__: {
                    "access": self.access,
                    "published": self._published,
                },
            },
        }
        broker = _GatedBroker(config, self._gate, self._live, self._by_client)
        try:
            await broker.start()
        except BrokerError as exc:
            raise ConfigError(
                "MQTT_EMBEDDED_PORT",
                f"the embedded MQTT broker cannot listen on {self.host}:{self.port} ({exc}); "
                "choose another port, set MQTT_URL to an external broker, or set it to off",
            ) from None
        self._broker = broker
        logger.info("embedded MQTT broker listening on %s:%s", self.host, self.port)

    async def close(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None

    async def revoke(self, revocation: Revocation) -> None:
        """Close every connection ``revocation`` covers (idempotent)."""
        closed = 0
        for link in list(self._live):
            if link.ends_with(revocation):
                link.writer.transport.abort()
                self._live.discard(link)
                closed += 1
        if closed:
            logger.info(
                "closed %s MQTT connection(s) of a revoked session (%s)", closed, revocation.reason
            )

    def _published(self, client_id: str, topic: str, payload: Any) -> None:
        """Note the device a connection speaks for, from its first request."""
        link = self._by_client.get(client_id)
        if link is None or link.heard or link.admitted.user_id is None:
            return
        if topic != mqtt_wire.request_topic(link.admitted.user_id):
            return
        link.heard = True
        with contextlib.suppress(mqtt_wire.RequestRefused):
            link.device_id = mqtt_wire.parse_request(
                bytes(payload or b""), max_bytes=MAX_NOTED_BYTES
            ).device

    async def _gate(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Link | None:
        """Read and check the CONNECT; answer and close what amqtt must not see."""
        peer = writer.get_extra_info("peername")
        try:
            async with asyncio.timeout(CONNECT_WITHIN):
                packet, connect = await _read_connect(reader)
        except mqtt_connect.UnsupportedProtocol as exc:
            logger.info(
                "MQTT CONNECT refused: protocol level %s (the embedded broker speaks MQTT 3.1.1)",
                exc.level,
                extra={"mqtt_peer": str(peer)},
            )
            await self._refuse(writer, mqtt_connect.UNACCEPTABLE_PROTOCOL_VERSION)
            return None
        except (
            mqtt_connect.ConnectError,
            asyncio.IncompleteReadError,
            TimeoutError,
            OSError,
        ) as exc:
            logger.info(
                "MQTT connection closed before a valid CONNECT: %s",
                str(exc) or type(exc).__name__,
                extra={"mqtt_peer": str(peer)},
            )
            await self._refuse(writer, None)
            return None
        try:
            admitted = await self.access.admit(
                connect.username,
                connect.password,
                connect.client_id,
                will_topic=connect.will_topic,
                will_retain=connect.will_retain,
            )
        except Exception as exc:  # the database is away: the device tries again later
            logger.warning("could not check an MQTT CONNECT: %s", type(exc).__name__)
            await self._refuse(writer, mqtt_connect.SERVER_UNAVAILABLE)
            return None
        if admitted is None:
            logger.info("MQTT connection refused", extra={"mqtt_client_id": connect.client_id})
            await self._refuse(writer, mqtt_connect.NOT_AUTHORIZED)
            return None
        return _Link(packet, connect.client_id, admitted, writer)

    async def _refuse(self, writer: asyncio.StreamWriter, code: int | None) -> None:
        self.refused += 1
        with contextlib.suppress(OSError):
            if code is not None:
                writer.write(mqtt_connect.connack(code))
                await writer.drain()
            writer.close()
            await writer.wait_closed()


async def _read_connect(reader: asyncio.StreamReader) -> tuple[bytes, mqtt_connect.Connect]:
    """The first packet's bytes, and the CONNECT they are (ConnectError when not one)."""
    header = await reader.readexactly(1)
    if header[0] != mqtt_connect.CONNECT:
        raise mqtt_connect.ConnectError(f"a first packet of type {header[0] >> 4}, not CONNECT")
    length_bytes = b""
    while (length := mqtt_connect.remaining_length(length_bytes)) is None:
        length_bytes += await reader.readexactly(1)
    body = await reader.readexactly(length)
    return header + length_bytes + body, mqtt_connect.parse_connect(body)
