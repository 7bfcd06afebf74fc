"""REST transport for messaging: devices, threads, sending and resuming history.

Socket.IO and MQTT carry the same envelopes in real time (later); this is the
plain-HTTP path every client can fall back to, and the resume endpoint.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints

from teleconsult.api.models import Body, Limit
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.errors import BadRequest, FieldError
from teleconsult.core.policy import Action
from teleconsult.messaging.chat import ChatService
from teleconsult.messaging.envelope import (
    EnvelopeError,
    decode_b64url,
    encode_b64url,
    from_json,
    from_msgpack,
    to_json,
)
from teleconsult.messaging.records import Device, StoredMessage, Thread, ThreadKind
from teleconsult.messaging.service import MessagingService, envelope_problem

MESSAGING = web.AppKey("messaging", MessagingService)
# Live delivery for messages sent over REST (set by the composition root).
CHAT = web.AppKey("chat", ChatService)
api = Api()

Key = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{43}$")]
Seq = Annotated[int, Field(ge=0, le=2**63 - 1)]  # PostgreSQL bigint


class DeviceBody(Body):
    x25519_public: Key = Field(description="X25519 public key, base64url without padding")
    ed25519_public: Key = Field(description="Ed25519 public key, base64url without padding")
    label: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None


class DeviceOut(BaseModel):
    id: UUID
    user_id: UUID
    x25519_public: str
    ed25519_public: str
    label: str | None
    created_at: datetime

    @classmethod
    def of(cls, d: Device) -> DeviceOut:
        return cls(
            id=d.id,
            user_id=d.user_id,
            x25519_public=encode_b64url(d.x25519_public),
            ed25519_public=encode_b64url(d.ed25519_public),
            label=d.label,
            created_at=d.created_at,
        )


class DeviceList(BaseModel):
    items: list[DeviceOut]


class ThreadBody(Body):
    kind: ThreadKind
    member_ids: Annotated[list[UUID], Field(min_length=1, max_length=50)]


class MemberOut(BaseModel):
    user_id: UUID
    role: str
    joined_at: datetime


class ThreadOut(BaseModel):
    id: UUID
    clinic_id: UUID
    kind: ThreadKind
    appointment_id: UUID | None
    created_at: datetime
    last_seq: int
    members: list[MemberOut] | None = None

    @classmethod
    def of(cls, t: Thread, members: list[MemberOut] | None = None) -> ThreadOut:
        return cls(
            id=t.id,
            clinic_id=t.clinic_id,
            kind=t.kind,
            appointment_id=t.appointment_id,
            created_at=t.created_at,
            last_seq=t.last_seq,
            members=members,
        )


class ThreadList(BaseModel):
    items: list[ThreadOut]


class SendBody(Body):
    envelope: dict[str, Any] = Field(
        description="An envelope v1 in its JSON form (docs/protocol.md)"
    )


class SendResult(BaseModel):
    seq: int
    duplicate: bool
    created_at: datetime


class HistoryQuery(BaseModel):
    after: Seq = 0
    limit: Limit = 50


class MessageOut(BaseModel):
    seq: int
    client_msg_id: str
    sender_user_id: UUID
    sender_device_id: UUID
    created_at: datetime
    envelope: dict[str, Any]

    @classmethod
    def of(cls, m: StoredMessage) -> MessageOut:
        return cls(
            seq=m.seq,
            client_msg_id=m.client_msg_id,
            sender_user_id=m.sender_user_id,
            sender_device_id=m.sender_device_id,
            created_at=m.created_at,
            envelope=to_json(from_msgpack(m.envelope, max_bytes=len(m.envelope))),
        )


class MessagePage(BaseModel):
    items: list[MessageOut]
    complete: bool = Field(description="true when the page reaches the newest message")


class ReceiptBody(Body):
    delivered_seq: Seq | None = None
    read_seq: Seq | None = None


class ReceiptOut(BaseModel):
    delivered_seq: int
    read_seq: int
    updated_at: datetime


def _svc(req: ApiRequest) -> MessagingService:
    return req.request.app[MESSAGING]


def _key(value: str, field: str) -> bytes:
    try:
        return decode_b64url(value, field=field)
    except EnvelopeError as exc:
        raise BadRequest(exc.detail, fields=[FieldError(f"body.{field}", exc.detail)]) from None


@api.op(
    "POST",
    "/api/v1/devices",
    operation_id="registerDevice",
    summary="Register this device's public keys (never a private key)",
    tag="messaging",
    action=Action.DEVICE_MANAGE,
    body=DeviceBody,
    response=DeviceOut,
    status=201,
    errors=(409,),
)
async def register_device(req: ApiRequest) -> DeviceOut:
    """Registering the same keys again returns the same device."""
    body = req.body(DeviceBody)
    device = await _svc(req).register_device(
        req.principal,
        x25519=_key(body.x25519_public, "x25519_public"),
        ed25519=_key(body.ed25519_public, "ed25519_public"),
        label=body.label,
    )
    return DeviceOut.of(device)


@api.op(
    "GET",
    "/api/v1/devices",
    operation_id="listMyDevices",
    summary="The caller's current devices",
    tag="messaging",
    action=Action.DEVICE_MANAGE,
    response=DeviceList,
)
async def list_devices(req: ApiRequest) -> DeviceList:
    return DeviceList(items=[DeviceOut.of(d) for d in await _svc(req).my_devices(req.principal)])


@api.op(
    "DELETE",
    "/api/v1/devices/{device_id}",
    operation_id="revokeDevice",
    summary="Revoke one of the caller's devices; it can no longer send",
    tag="messaging",
    action=Action.DEVICE_MANAGE,
    status=204,
)
async def revoke_device(req: ApiRequest) -> None:
    await _svc(req).revoke_device(req.principal, req.params["device_id"])


@api.op(
    "POST",
    "/api/v1/threads",
    operation_id="createThread",
    summary="Start a direct or care-team thread with people of the clinic (staff)",
    tag="messaging",
    action=Action.THREAD_CREATE,
    body=ThreadBody,
    response=ThreadOut,
    status=201,
    errors=(404,),
)
async def create_thread(req: ApiRequest) -> ThreadOut:
    body = req.body(ThreadBody)
    thread = await _svc(req).create_thread(
        req.principal, kind=body.kind, member_ids=body.member_ids
    )
    return ThreadOut.of(thread)


@api.op(
    "POST",
    "/api/v1/appointments/{appointment_id}/thread",
    operation_id="appointmentThread",
    summary="The appointment's patient-doctor thread (created on first use)",
    tag="messaging",
    action=Action.THREAD_READ,
    response=ThreadOut,
)
async def appointment_thread(req: ApiRequest) -> ThreadOut:
    thread = await _svc(req).thread_for_appointment(req.principal, req.params["appointment_id"])
    return ThreadOut.of(thread)


@api.op(
    "GET",
    "/api/v1/threads",
    operation_id="listMyThreads",
    summary="Threads the caller is a member of, with their newest sequence number",
    tag="messaging",
    action=Action.THREAD_READ,
    response=ThreadList,
)
async def list_threads(req: ApiRequest) -> ThreadList:
    return ThreadList(items=[ThreadOut.of(t) for t in await _svc(req).my_threads(req.principal)])


@api.op(
    "GET",
    "/api/v1/threads/{thread_id}",
    operation_id="getThread",
    summary="A thread and its members (members only)",
    tag="messaging",
    action=Action.THREAD_READ,
    response=ThreadOut,
)
async def get_thread(req: ApiRequest) -> ThreadOut:
    view = await _svc(req).view(req.principal, req.params["thread_id"])
    members = [
        MemberOut(user_id=m.user_id, role=m.role, joined_at=m.joined_at) for m in view.members
    ]
    return ThreadOut.of(view.thread, members)


@api.op(
    "GET",
    "/api/v1/threads/{thread_id}/devices",
    operation_id="listThreadDevices",
    summary="Current devices of the thread's members: seal each message key for all of them",
    tag="messaging",
    action=Action.THREAD_READ,
    response=DeviceList,
)
async def thread_devices(req: ApiRequest) -> DeviceList:
    devices = await _svc(req).member_devices(req.principal, req.params["thread_id"])
    return DeviceList(items=[DeviceOut.of(d) for d in devices])


@api.op(
    "POST",
    "/api/v1/threads/{thread_id}/messages",
    operation_id="sendMessage",
    summary="Send an envelope; the answer carries its sequence number",
    tag="messaging",
    action=Action.MESSAGE_SEND,
    body=SendBody,
    response=SendResult,
    errors=(409,),
)
async def send_message(req: ApiRequest) -> SendResult:
    """Committed before the answer. Sending the same client message id again returns the
    original sequence number (`duplicate: true`) and stores nothing new."""
    body = req.body(SendBody)
    try:
        envelope = from_json(
            body.envelope, max_bytes=req.request.app[CHAT].settings.max_envelope_bytes
        )
    except EnvelopeError as exc:
        raise envelope_problem(exc) from None
    result = await req.request.app[CHAT].send(req.principal, req.params["thread_id"], envelope)
    return SendResult(seq=result.seq, duplicate=result.duplicate, created_at=result.created_at)


@api.op(
    "GET",
    "/api/v1/threads/{thread_id}/messages",
    operation_id="listMessages",
    summary="Messages after a sequence number, oldest first (resume)",
    tag="messaging",
    action=Action.THREAD_READ,
    query=HistoryQuery,
    response=MessagePage,
)
async def list_messages(req: ApiRequest) -> MessagePage:
    query = req.query(HistoryQuery)
    page, complete = await _svc(req).history(
        req.principal, req.params["thread_id"], after=query.after, limit=query.limit
    )
    return MessagePage(items=[MessageOut.of(m) for m in page], complete=complete)


@api.op(
    "POST",
    "/api/v1/threads/{thread_id}/receipts",
    operation_id="markThread",
    summary="Move the caller's delivered/read markers forward (never back)",
    tag="messaging",
    action=Action.THREAD_READ,
    body=ReceiptBody,
    response=ReceiptOut,
)
async def mark(req: ApiRequest) -> ReceiptOut:
    body = req.body(ReceiptBody)
    receipt = await _svc(req).mark(
        req.principal,
        req.params["thread_id"],
        delivered_seq=body.delivered_seq,
        read_seq=body.read_seq,
    )
    return ReceiptOut(
        delivered_seq=receipt.delivered_seq,
        read_seq=receipt.read_seq,
        updated_at=receipt.updated_at,
    )
