"""MQTT topics and payloads of the chat transport: pure functions, no I/O.

Per user (the canonical, lower-case UUID text of the user id):

* ``tc/u/<user>/req``: the user's devices publish requests,
  ``{"id": <text, at most 64 characters>, "event": ..., "data": ...}``;
* ``tc/u/<user>/ack``: the server answers each request, ``{"id": ..., "ack": ...}``
  (every device of the user sees every ack and keeps those whose id it sent);
* ``tc/u/<user>/inbox``: the server pushes ``{"event": "message", "data": ...}``, and
  ``{"event": "sync", "data": {}}`` when pushes to the user may have been lost (resume);
* ``tc/srv/up``: each bridge says ``{"event": "up", "data": {"bridge": <random id>}}``
  each time it has subscribed to requests; every device may read it, and sends its
  unanswered requests again (they are idempotent), since a request published while
  no bridge was subscribed is lost.

Payloads are msgpack, envelopes as bin. A request whose first byte is ``{``
is read as JSON (envelopes in their JSON form) and answered in JSON; pushed
events are always msgpack. The events and acks are those of Socket.IO
(``messaging/wire.py``, docs/protocol.md), plus two that only MQTT needs, since
the server cannot see a device's connection through a broker: ``online`` (on
connecting, then every ``renew_in`` seconds of its ack) and ``offline`` (before
a clean disconnect, and as the connection's Last Will), each with
``{"conn": <an id made for this connection>}`` (docs/mqtt.md, "Presence").

Signed requests (docs/mqtt.md, "Signed requests"): a device sends
``{"frame": <the request frame's bytes>, "sig": <64 bytes>}``, where the frame
is ``{"id", "event", "data", "device": <its device id>, "ts": <ms since the
epoch>}`` in the same encoding and ``sig`` is the device's Ed25519 signature
of :func:`signing_bytes` (the user id of the topic, then the frame's bytes
exactly as sent). In JSON both bytes fields are unpadded base64url.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Annotated, Any
from uuid import UUID

import msgpack
from pydantic import Field

from teleconsult.core.errors import BadRequest, ClientError, ErrorCode, FieldError, PayloadTooLarge
from teleconsult.messaging import wire
from teleconsult.messaging.envelope import EnvelopeError, decode_b64url, encode_b64url
from teleconsult.realtime.acks import Event

PREFIX = "tc/u"
MAX_REQUEST_ID = 64
SIGNATURE_BYTES = 64
SIGNING_CONTEXT = b"teleconsult mqtt request v1\n"
ONLINE, OFFLINE = "online", "offline"
LINK_EVENTS = (ONLINE, OFFLINE)
SERVER_UP_TOPIC = "tc/srv/up"  # a bridge has (re)subscribed: send unanswered requests again
UP, SYNC = "up", "sync"


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
    """One request; ``signed`` (the frame's bytes the signature covers) None when unsigned."""

    id: str
    event: str
    data: object
    encoding: wire.Encoding
    device: UUID | None = None
    ts: int | None = None
    signature: bytes | None = field(default=None, repr=False)
    signed: bytes | None = field(default=None, repr=False)


def signing_bytes(user_id: UUID, frame: bytes) -> bytes:
    """What a device signs: a fixed context, the topic's user id, a newline, the frame."""
    return SIGNING_CONTEXT + str(user_id).encode() + b"\n" + frame


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
    """Decode and check one request's payload, signed or not; RequestRefused says what is wrong."""
    encoding = encoding_of(payload)
    if len(payload) > max_bytes:
        raise RequestRefused(
            PayloadTooLarge(f"a request may be at most {max_bytes} bytes"), None, encoding
        )
    frame = _decode_frame(payload, encoding)
    if "frame" not in frame and "sig" not in frame:
        return _request(frame, encoding, signed=False)
    extra = set(frame) - {"frame", "sig"}
    if extra:
        raise RequestRefused(_bad(str(sorted(map(str, extra))[0]), "unknown"), None, encoding)
    inner = _bytes_field(frame, "frame", encoding)
    signature = _bytes_field(frame, "sig", encoding)
    if len(signature) != SIGNATURE_BYTES:
        raise RequestRefused(_bad("sig", f"not {SIGNATURE_BYTES} bytes"), None, encoding)
    request = _request(_decode_frame(inner, encoding), encoding, signed=True)
    return replace(request, signature=signature, signed=inner)


def _decode_frame(payload: bytes, encoding: wire.Encoding) -> dict[Any, Any]:
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
    return frame


def _bytes_field(frame: dict[Any, Any], name: str, encoding: wire.Encoding) -> bytes:
    value = frame.get(name)
    if encoding == "json" and isinstance(value, str):
        try:
            return decode_b64url(value, field=name)
        except EnvelopeError:
            pass
    elif isinstance(value, bytes):
        return value
    kind = "base64url text" if encoding == "json" else "bin"
    raise RequestRefused(_bad(name, f"not {kind}"), None, encoding)


def _request(frame: dict[Any, Any], encoding: wire.Encoding, *, signed: bool) -> Request:
    request_id = frame.get("id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
        raise RequestRefused(
            _bad("id", f"text of 1 to {MAX_REQUEST_ID} characters"), None, encoding
        )
    event = frame.get("event")
    if not isinstance(event, str):
        raise RequestRefused(_bad("event", "not text"), request_id, encoding)
    known = {"id", "event", "data", "device", "ts"} if signed else {"id", "event", "data"}
    extra = set(frame) - known
    if extra:
        raise RequestRefused(_bad(str(sorted(map(str, extra))[0]), "unknown"), request_id, encoding)
    if not signed:
        return Request(id=request_id, event=event, data=frame.get("data"), encoding=encoding)
    try:
        device = UUID(str(frame.get("device")))
    except ValueError:
        raise RequestRefused(_bad("device", "not a device id"), request_id, encoding) from None
    ts = frame.get("ts")
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts < 2**53:
        raise RequestRefused(_bad("ts", "not milliseconds since the epoch"), request_id, encoding)
    return Request(request_id, event, frame.get("data"), encoding, device=device, ts=ts)


def _bad(field: str, message: str) -> BadRequest:
    return BadRequest("the request frame is invalid", fields=[FieldError(field, message)])


def encode_request(request_id: str, event: str, data: Any, encoding: wire.Encoding) -> bytes:
    """An unsigned request (refused by a server that requires signatures)."""
    frame = {"id": request_id, "event": event, "data": data}
    return _encode(frame, encoding)


def request_frame(
    request_id: str, event: str, data: Any, encoding: wire.Encoding, *, device: UUID, ts: int
) -> bytes:
    """The frame a device signs: :func:`signing_bytes` of it, then :func:`signed_request`."""
    frame = {"id": request_id, "event": event, "data": data, "device": str(device), "ts": ts}
    return _encode(frame, encoding)


def signed_request(frame: bytes, signature: bytes, encoding: wire.Encoding) -> bytes:
    return _encode({"frame": frame, "sig": signature}, encoding)


def offline_will_id(conn: str) -> str:
    """The id of the ``offline`` request a device leaves as its Last Will."""
    return f"will-{conn}"[:MAX_REQUEST_ID]


def encode_ack(request_id: str | None, ack: dict[str, Any], encoding: wire.Encoding) -> bytes:
    return _encode({"id": request_id, "ack": ack}, encoding)


def encode_event(event: str, data: dict[str, Any]) -> bytes:
    return _encode({"event": event, "data": data}, "msgpack")


def encode_server_up(bridge_id: str) -> bytes:
    """The announcement a bridge publishes on :data:`SERVER_UP_TOPIC` once subscribed."""
    return encode_event(UP, {"bridge": bridge_id})


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
