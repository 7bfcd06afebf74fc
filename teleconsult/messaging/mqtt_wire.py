"""MQTT topics and payloads of the chat transport: pure functions, no I/O.

Per user (the canonical, lower-case UUID text of the user id):

* ``tc/u/<user>/req``: the user's devices publish requests,
  ``{"id": <text, at most 64 characters>, "event": ..., "data": ...}``;
* ``tc/u/<user>/ack``: the server answers each request, ``{"id": ..., "ack": ...}``
  (every device of the user sees every ack and keeps those whose id it sent);
* ``tc/u/<user>/inbox``: the server pushes ``{"event": "message", "data": ...}``.

Payloads are msgpack, envelopes as bin. A request whose first byte is ``{``
is read as JSON (envelopes in their JSON form) and answered in JSON; pushed
events are always msgpack. The events and acks are those of Socket.IO
(``messaging/wire.py``, docs/protocol.md), plus two that only MQTT needs, since
the server cannot see a device's connection through a broker: ``online`` (on
connecting, then every ``renew_in`` seconds of its ack) and ``offline`` (before
a clean disconnect, and as the connection's Last Will), each with
``{"conn": <an id made for this connection>}`` (docs/mqtt.md, "Presence").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

import msgpack
from pydantic import Field

from teleconsult.core.errors import BadRequest, ClientError, ErrorCode, FieldError, PayloadTooLarge
from teleconsult.messaging import wire
from teleconsult.messaging.envelope import encode_b64url
from teleconsult.realtime.acks import Event

PREFIX = "tc/u"
MAX_REQUEST_ID = 64
ONLINE, OFFLINE = "online", "offline"
LINK_EVENTS = (ONLINE, OFFLINE)


def request_topic(user_id: UUID) -> str:
    return f"{PREFIX}/{user_id}/req"


def ack_topic(user_id: UUID) -> str:
    return f"{PREFIX}/{user_id}/ack"


def inbox_topic(user_id: UUID) -> str:
    return f"{PREFIX}/{user_id}/inbox"


def request_filter(shared_group: str = "") -> str:
    """What the server subscribes to; a shared subscription hands each request to one server."""
    plain = f"{PREFIX}/+/req"
    return f"$share/{shared_group}/{plain}" if shared_group else plain


def user_of(topic: str, kind: str) -> UUID | None:
    """The user of ``tc/u/<user>/<kind>``, or None (only the canonical id form counts)."""
    parts = topic.split("/")
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != PREFIX or parts[3] != kind:
        return None
    try:
        user_id = UUID(parts[2])
    except ValueError:
        return None
    return user_id if str(user_id) == parts[2] else None


class LinkRequest(Event):
    """``online`` and ``offline``: which of the user's connections (random, per connection)."""

    conn: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


@dataclass(frozen=True)
class Request:
    id: str
    event: str
    data: object
    encoding: wire.Encoding


class RequestRefused(Exception):
    """A request that cannot be run: answer ``error`` to ``request_id`` (None if unknown)."""

    def __init__(self, error: ClientError, request_id: str | None, encoding: wire.Encoding) -> None:
        super().__init__(error.detail)
        self.error = error
        self.request_id = request_id
        self.encoding: wire.Encoding = encoding


def encoding_of(payload: bytes) -> wire.Encoding:
    return "json" if payload[:1] == b"{" else "msgpack"


def parse_request(payload: bytes, *, max_bytes: int) -> Request:
    """Decode and check one request's frame; RequestRefused names what is wrong."""
    encoding = encoding_of(payload)
    if len(payload) > max_bytes:
        raise RequestRefused(
            PayloadTooLarge(f"a request may be at most {max_bytes} bytes"), None, encoding
        )
    try:
        if encoding == "json":
            frame = json.loads(payload)
        else:
            frame = msgpack.unpackb(payload, raw=False)
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException):
        code = ErrorCode.MALFORMED_JSON if encoding == "json" else ErrorCode.VALIDATION_FAILED
        raise RequestRefused(
            BadRequest(f"the request is not valid {encoding}", code=code), None, encoding
        ) from None
    if not isinstance(frame, dict):
        raise RequestRefused(_bad("request", "not an object"), None, encoding)
    request_id = frame.get("id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
        raise RequestRefused(
            _bad("id", f"text of 1 to {MAX_REQUEST_ID} characters"), None, encoding
        )
    event = frame.get("event")
    if not isinstance(event, str):
        raise RequestRefused(_bad("event", "not text"), request_id, encoding)
    extra = set(frame) - {"id", "event", "data"}
    if extra:
        raise RequestRefused(_bad(str(sorted(map(str, extra))[0]), "unknown"), request_id, encoding)
    return Request(id=request_id, event=event, data=frame.get("data"), encoding=encoding)


def _bad(field: str, message: str) -> BadRequest:
    return BadRequest("the request frame is invalid", fields=[FieldError(field, message)])


def encode_request(request_id: str, event: str, data: Any, encoding: wire.Encoding) -> bytes:
    frame = {"id": request_id, "event": event, "data": data}
    return _encode(frame, encoding)


def offline_will(conn: str, encoding: wire.Encoding) -> bytes:
    """The request a device leaves as its Last Will: the broker sends it if the link dies."""
    return encode_request(f"will-{conn}"[:MAX_REQUEST_ID], OFFLINE, {"conn": conn}, encoding)


def encode_ack(request_id: str | None, ack: dict[str, Any], encoding: wire.Encoding) -> bytes:
    return _encode({"id": request_id, "ack": ack}, encoding)


def encode_event(event: str, data: dict[str, Any]) -> bytes:
    return _encode({"event": event, "data": data}, "msgpack")


def decode(payload: bytes) -> Any:
    """A frame from the server, either encoding (client side)."""
    if encoding_of(payload) == "json":
        return json.loads(payload)
    return msgpack.unpackb(payload, raw=False)


def _encode(frame: dict[str, Any], encoding: wire.Encoding) -> bytes:
    if encoding == "json":
        return json.dumps(_json_ready(frame), separators=(",", ":")).encode()
    packed: bytes = msgpack.packb(frame, use_bin_type=True)
    return packed


def _json_ready(value: Any) -> Any:
    """Envelopes (msgpack bytes in pushed and resumed messages) in their JSON form."""
    if isinstance(value, dict):
        if isinstance(value.get("envelope"), bytes):
            value = wire.for_encoding(value, "json")
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, bytes):
        return encode_b64url(value)
    return value
