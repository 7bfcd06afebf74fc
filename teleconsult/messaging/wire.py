"""What the real-time transports carry: request bodies, acks and pushed events.

Socket.IO and MQTT speak the same events with the same payloads (docs/protocol.md,
"Real-time events"). A pushed ``message`` carries the envelope as msgpack bytes
inside the server; :func:`for_encoding` turns it into the JSON form for a
client that asked for JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

from pydantic import Field

from teleconsult.messaging.envelope import (
    Envelope,
    EnvelopeError,
    from_json,
    from_msgpack,
    to_json,
)
from teleconsult.messaging.records import StoredMessage
from teleconsult.messaging.service import envelope_problem
from teleconsult.realtime.acks import Event, Id
from teleconsult.realtime.server import Encoding

Seq = Annotated[int, Field(ge=0, le=2**63 - 1)]
MAX_RESUME_THREADS = 100


class SendRequest(Event):
    thread_id: Id
    envelope: dict[str, Any] | bytes


class ResumeRequest(Event):
    threads: Annotated[dict[Id, Seq], Field(max_length=MAX_RESUME_THREADS)]
    limit: Annotated[int, Field(ge=1, le=200)] = 50


class ReceiptRequest(Event):
    thread_id: Id
    delivered_seq: Seq | None = None
    read_seq: Seq | None = None


class TypingRequest(Event):
    thread_id: Id
    typing: bool


class PresenceRequest(Event):
    thread_id: Id


def envelope_of(value: dict[str, Any] | bytes, *, max_bytes: int) -> Envelope:
    try:
        if isinstance(value, bytes):
            return from_msgpack(value, max_bytes=max_bytes)
        return from_json(value, max_bytes=max_bytes)
    except EnvelopeError as exc:
        raise envelope_problem(exc) from None


def message_data(m: StoredMessage) -> dict[str, Any]:
    """A stored message as pushed and resumed, envelope in msgpack bytes."""
    return {
        "thread_id": str(m.thread_id),
        "seq": m.seq,
        "client_msg_id": m.client_msg_id,
        "sender_user_id": str(m.sender_user_id),
        "sender_device_id": str(m.sender_device_id),
        "created_at": _iso(m.created_at),
        "envelope": m.envelope,
    }


def for_encoding(data: Mapping[str, Any], encoding: Encoding) -> dict[str, Any]:
    """``data`` with its envelope in the client's encoding (bytes stay bytes for msgpack)."""
    out = dict(data)
    raw = out.get("envelope")
    if encoding == "json" and isinstance(raw, bytes):
        out["envelope"] = to_json(from_msgpack(raw, max_bytes=len(raw)))
    return out


def push_payload(_event: str, data: Mapping[str, Any], encoding: Encoding) -> dict[str, Any]:
    """A pushed event's data for a client of ``encoding`` (the hub's adapter)."""
    return for_encoding(data, encoding)


def ack_for_encoding(event: str, ack: dict[str, Any], encoding: Encoding) -> dict[str, Any]:
    """``ack`` with the envelopes of resumed messages in the client's encoding."""
    if event != "resume" or encoding != "json" or not ack.get("ok"):
        return ack
    threads = {
        thread: {**result, "messages": [for_encoding(m, encoding) for m in result["messages"]]}
        if result.get("ok")
        else result
        for thread, result in ack["threads"].items()
    }
    return {**ack, "threads": threads}


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")
