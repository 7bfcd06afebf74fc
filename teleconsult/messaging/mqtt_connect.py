"""The MQTT CONNECT packet, read before the embedded broker sees it: pure functions, no I/O.

The embedded broker (``mqtt_broker.py``) reads a connection's first packet
itself, answers anything it will not take, and authenticates it before amqtt
may act on the client id (amqtt ends the session of an online client with the
same id before it authenticates). Only what that decision needs is parsed here:
MQTT 3.1.1 (protocol level 4) in full; for any other level just enough to
answer "unacceptable protocol version".
"""

from __future__ import annotations

from dataclasses import dataclass, field

CONNECT = 0x10  # packet type 1, flags 0
MAX_CONNECT_BYTES = 65_536  # a CONNECT of ours is under 2 KiB (a token and a small will)
PROTOCOL_LEVEL = 4  # MQTT 3.1.1, the only level amqtt speaks

# CONNACK return codes of MQTT 3.1.1 (section 3.2.2.3).
UNACCEPTABLE_PROTOCOL_VERSION = 0x01
SERVER_UNAVAILABLE = 0x03
NOT_AUTHORIZED = 0x05


class ConnectError(ValueError):
    """Not a CONNECT that can be read (the connection is closed without an answer)."""


class UnsupportedProtocol(ConnectError):
    """A CONNECT of another MQTT version: answer ``UNACCEPTABLE_PROTOCOL_VERSION``."""

    def __init__(self, name: str, level: int) -> None:
        super().__init__(f"protocol {name!r} level {level}")
        self.name, self.level = name, level


@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str
    clean_session: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    will_topic: str | None = None
    will_retain: bool = False


def connack(code: int) -> bytes:
    """A CONNACK refusing with ``code`` (session present 0, as MQTT 3.1.1 requires)."""
    return bytes((0x20, 0x02, 0x00, code))


def remaining_length(encoded: bytes) -> int | None:
    """The remaining length of a fixed header's 1 to 4 length bytes; None if incomplete.

    ConnectError when it is malformed or larger than ``MAX_CONNECT_BYTES``.
    """
    value = 0
    for i, byte in enumerate(encoded):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if value > MAX_CONNECT_BYTES:
                raise ConnectError(f"a CONNECT of {value} bytes")
            return value
        if i == 3:
            raise ConnectError("a remaining length of more than 4 bytes")
    return None


def parse_connect(body: bytes) -> Connect:
    """The CONNECT's variable header and payload (what follows the fixed header)."""
    reader = _Reader(body)
    name = reader.text()
    level = reader.byte()
    if name != "MQTT" or level != PROTOCOL_LEVEL:
        raise UnsupportedProtocol(name, level)
    flags = reader.byte()
    if flags & 0x01:
        raise ConnectError("the reserved flag is set")
    reader.take(2)  # keep-alive: amqtt reads it again
    client_id = reader.text()
    will_topic = None
    if flags & 0x04:
        will_topic = reader.text()
        reader.data()
    elif flags & 0x38:
        raise ConnectError("will QoS or retain without a will")
    username = reader.text() if flags & 0x80 else None
    password = None
    if flags & 0x40:
        if username is None:
            raise ConnectError("a password without a username")
        try:
            password = reader.data().decode()
        except UnicodeDecodeError:
            raise ConnectError("a password that is not UTF-8") from None
    if not reader.done():
        raise ConnectError("bytes after the payload")
    return Connect(
        client_id=client_id,
        clean_session=bool(flags & 0x02),
        username=username,
        password=password,
        will_topic=will_topic,
        will_retain=bool(flags & 0x20) and will_topic is not None,
    )


class _Reader:
    def __init__(self, data: bytes) -> None:
        self._data, self._at = data, 0

    def take(self, n: int) -> bytes:
        if self._at + n > len(self._data):
            raise ConnectError("a truncated CONNECT")
        chunk = self._data[self._at : self._at + n]
        self._at += n
        return chunk

    def byte(self) -> int:
        return self.take(1)[0]

    def data(self) -> bytes:
        return self.take(int.from_bytes(self.take(2), "big"))

    def text(self) -> str:
        try:
            return self.data().decode()
        except UnicodeDecodeError:
            raise ConnectError("a string that is not UTF-8") from None

    def done(self) -> bool:
        return self._at == len(self._data)
