"""Messaging: devices, threads, and durable ordered messages the server cannot read.

Domain rules only; no HTTP or Socket.IO. Every envelope is checked here, whatever
transport brought it: the sender is a current member, the device is the
sender's and not revoked, the signature verifies with that device's key, the
envelope names this thread, and every sealed key is for a current device of a
current member. The envelope is stored as opaque bytes: the server holds no
plaintext and no private key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from teleconsult.accounts import store as accounts
from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.core.errors import (
    BadRequest,
    ClientError,
    Conflict,
    ErrorCode,
    FieldError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
)
from teleconsult.core.identity import Principal, Role
from teleconsult.core.policy import OutOfScope, Scope, ensure_in_scope
from teleconsult.core.revocation import Revocation, RevocationSink
from teleconsult.messaging import message_store, store
from teleconsult.messaging.appender import Appender
from teleconsult.messaging.directory import ThreadDirectory, ThreadInfo
from teleconsult.messaging.envelope import (
    Envelope,
    EnvelopeError,
    EnvelopeErrorCode,
    to_msgpack,
    verify_signature,
)
from teleconsult.messaging.message_store import Append, Page, PageRequest
from teleconsult.messaging.records import (
    AppendResult,
    AppointmentHasThread,
    ConflictingDuplicate,
    Device,
    DeviceKeyInUse,
    DeviceNotUsable,
    InvalidDeviceKey,
    InvalidMembers,
    Member,
    NotAMember,
    NotInClinic,
    Receipt,
    StoredMessage,
    Thread,
    ThreadKind,
    ThreadNotFound,
)
from teleconsult.scheduling.scope import appointment_in_scope

MAX_PAGE = 200


@dataclass(frozen=True)
class ThreadView:
    thread: Thread
    members: list[Member]


@dataclass(frozen=True)
class Sent:
    """A stored (or already stored) message and whom to deliver it to."""

    result: AppendResult
    message: StoredMessage
    members: frozenset[UUID]


def envelope_problem(exc: EnvelopeError) -> BadRequest | PayloadTooLarge:
    """The client-facing form of an envelope the server refuses."""
    if exc.code is EnvelopeErrorCode.TOO_LARGE:
        return PayloadTooLarge(exc.detail)
    code = {
        EnvelopeErrorCode.BAD_SIGNATURE: ErrorCode.BAD_SIGNATURE,
        EnvelopeErrorCode.UNSUPPORTED_VERSION: ErrorCode.UNSUPPORTED_VERSION,
        EnvelopeErrorCode.TOO_LARGE: ErrorCode.PAYLOAD_TOO_LARGE,
    }.get(exc.code, ErrorCode.INVALID_ENVELOPE)
    field = f"body.envelope.{exc.field}" if exc.field else "body.envelope"
    return BadRequest(exc.detail, code=code, fields=[FieldError(field, exc.detail)])


class MessagingService:
    """Safe to call concurrently; the database orders messages per thread."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        audit: AuditTrail,
        directory: ThreadDirectory,
        appender: Appender,
        revocations: RevocationSink | None = None,
    ) -> None:
        """``revocations``: where a revoked device is announced, after its commit
        (its MQTT account is disabled and its connections closed, core/revocation.py)."""
        self._pool = pool
        self._audit = audit
        self._directory = directory
        self._appender = appender
        self._revocations = revocations

    @property
    def directory(self) -> ThreadDirectory:
        return self._directory

    # --- devices --------------------------------------------------------------------

    async def register_device(
        self, principal: Principal, *, x25519: bytes, ed25519: bytes, label: str | None
    ) -> Device:
        try:
            device = await store.register_device(
                self._pool,
                user_id=principal.user_id,
                x25519_public=x25519,
                ed25519_public=ed25519,
                label=label,
            )
        except InvalidDeviceKey as exc:
            raise BadRequest(str(exc), fields=[FieldError("body", str(exc))]) from None
        except DeviceKeyInUse:
            raise Conflict(
                "that signing key belongs to another device", code=ErrorCode.DEVICE_KEY_IN_USE
            ) from None
        await self._directory.forget_user(principal.user_id)
        return device

    async def my_devices(self, principal: Principal) -> list[Device]:
        return await store.list_devices(self._pool, [principal.user_id])

    async def revoke_device(self, principal: Principal, device_id: UUID) -> None:
        if not await store.revoke_device(self._pool, principal.user_id, device_id):
            raise NotFound("device not found")
        await self._directory.forget_user(principal.user_id)
        if self._revocations is not None:
            reason = str(ErrorCode.DEVICE_NOT_USABLE)
            await self._revocations(Revocation(principal.user_id, reason, device_id=device_id))

    # --- threads --------------------------------------------------------------------

    async def ensure_member(self, principal: Principal, thread_id: UUID) -> Thread:
        """The thread when the caller is a current member of it; NotFound otherwise."""
        return await self._member_thread(principal, thread_id)

    async def member_ids(self, thread_id: UUID) -> list[UUID]:
        return await store.member_ids(self._pool, thread_id)

    async def co_member_ids(self, user_id: UUID, *, max_thread_size: int) -> list[UUID]:
        return await store.co_member_ids(self._pool, user_id, max_thread_size=max_thread_size)

    async def _member_thread(self, principal: Principal, thread_id: UUID) -> Thread:
        """The thread when the caller is a current member of it; NotFound otherwise."""
        thread = await store.member_thread(self._pool, thread_id, principal.user_id)
        if thread is None:
            raise await self._not_a_member(thread_id)
        # Membership is the scope: a member is in it whatever their role.
        ensure_in_scope(principal, Scope(thread.clinic_id, principal.user_id), "thread")
        return thread

    async def _not_a_member(self, thread_id: UUID) -> NotFound:
        """What a caller who is not a current member is told: ``not_found`` either way,
        but OutOfScope (audited as a refused attempt) when the thread exists. Only on
        the refusal path, so it costs the answers to members nothing."""
        if await self._directory.thread(thread_id) is None:
            return NotFound("thread not found")
        return OutOfScope("thread not found")

    async def create_thread(
        self, principal: Principal, *, kind: ThreadKind, member_ids: Sequence[UUID]
    ) -> Thread:
        """Staff start threads with people of their own clinic (they are a member)."""
        if principal.role is Role.PATIENT:
            raise Forbidden("patients join threads that staff or appointments start")
        people = [principal.user_id, *[m for m in member_ids if m != principal.user_id]]
        members: list[tuple[UUID, str]] = []
        for user_id in people:
            user = await accounts.get_user(self._pool, user_id)
            ensure_in_scope(principal, Scope(user.clinic_id) if user else None, "user")
            assert user is not None
            members.append((user_id, user.role.value))
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                thread = await store.create_thread(
                    conn,
                    clinic_id=principal.clinic_id,
                    kind=kind,
                    created_by=principal.user_id,
                    members=members,
                )
                await self._audit.record(self._event(principal, "thread.create", thread.id), conn)
        except (InvalidMembers, NotInClinic) as exc:
            raise BadRequest(str(exc), fields=[FieldError("body.member_ids", str(exc))]) from None
        return thread

    async def thread_for_appointment(self, principal: Principal, appointment_id: UUID) -> Thread:
        """The appointment's direct patient-doctor thread, created on first use."""
        appointment = await appointment_in_scope(self._pool, principal, appointment_id)
        existing = await store.thread_for_appointment(self._pool, appointment_id)
        if existing is not None:
            return existing
        members = [(appointment.doctor_id, "doctor"), (appointment.patient_id, "patient")]
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                thread = await store.create_thread(
                    conn,
                    clinic_id=appointment.clinic_id,
                    kind=ThreadKind.DIRECT,
                    created_by=principal.user_id,
                    members=members,
                    appointment_id=appointment_id,
                )
                await self._audit.record(self._event(principal, "thread.create", thread.id), conn)
        except AppointmentHasThread:  # a concurrent first use created it
            found = await store.thread_for_appointment(self._pool, appointment_id)
            if found is None:
                raise
            return found
        return thread

    async def my_threads(self, principal: Principal) -> list[Thread]:
        return await store.threads_for_user(self._pool, principal.user_id)

    async def view(self, principal: Principal, thread_id: UUID) -> ThreadView:
        thread = await self._member_thread(principal, thread_id)
        return ThreadView(thread, await store.list_members(self._pool, thread_id))

    async def member_devices(self, principal: Principal, thread_id: UUID) -> list[Device]:
        """Current devices of current members: whom a sender must seal the key for."""
        await self._member_thread(principal, thread_id)
        return await store.thread_devices(self._pool, thread_id)

    # --- messages -------------------------------------------------------------------

    async def send(self, principal: Principal, thread_id: UUID, env: Envelope) -> Sent:
        """Store an envelope after every check; idempotent on its client message id.

        With the thread in the directory, the checks cost no query and the store is
        one statement (shared with concurrent sends: see Appender). A refusal is
        confirmed against the database before it is given.
        """
        info = await self._directory.thread(thread_id)
        if info is None or principal.user_id not in info.members:
            info = await self._directory.fresh(thread_id)
            if info is None:
                raise NotFound("thread not found")
            if principal.user_id not in info.members:
                raise OutOfScope("thread not found")
        if env.thread_id != thread_id:
            raise BadRequest(
                "the envelope names another thread",
                code=ErrorCode.INVALID_ENVELOPE,
                fields=[FieldError("body.envelope.thread_id", "does not match the path")],
            )
        device = info.devices.get(env.sender_device_id)
        if device is None or device.user_id != principal.user_id:
            info = await self._confirmed(info)
            device = info.devices.get(env.sender_device_id)
            if device is None or device.user_id != principal.user_id:
                raise Forbidden(
                    "the sending device is not a current device of yours",
                    code=ErrorCode.DEVICE_NOT_USABLE,
                )
        try:
            verify_signature(env, device.ed25519_public)
        except EnvelopeError as exc:
            raise envelope_problem(exc) from None
        strangers = [r for r in env.recipient_ids if r not in info.devices]
        if strangers:
            info = await self._confirmed(info)
            strangers = [r for r in env.recipient_ids if r not in info.devices]
            if strangers:
                raise BadRequest(
                    "keys are sealed for devices outside the thread",
                    code=ErrorCode.NOT_A_RECIPIENT,
                    fields=[
                        FieldError("body.envelope.keys", ", ".join(str(s) for s in strangers[:5]))
                    ],
                )
        envelope = to_msgpack(env)
        outcome = await self._appender.append(
            Append(
                thread_id=thread_id,
                client_msg_id=env.client_msg_id,
                sender_user_id=principal.user_id,
                sender_device_id=env.sender_device_id,
                envelope=envelope,
                actor_role=principal.role.value,
            )
        )
        result = _appended(outcome)
        message = StoredMessage(
            thread_id=thread_id,
            seq=result.seq,
            client_msg_id=env.client_msg_id,
            sender_user_id=principal.user_id,
            sender_device_id=env.sender_device_id,
            envelope=envelope,
            created_at=result.created_at,
        )
        return Sent(result, message, info.members)

    async def _confirmed(self, info: ThreadInfo) -> ThreadInfo:
        """The thread as the database has it now (the cached entry may be old)."""
        fresh = await self._directory.fresh(info.thread_id)
        if fresh is None:
            raise NotFound("thread not found")
        return fresh

    async def members(self, thread_id: UUID) -> frozenset[UUID]:
        """Whom live events of the thread go to (the directory's view)."""
        info = await self._directory.thread(thread_id)
        return frozenset() if info is None else info.members

    async def read(
        self, principal: Principal, requests: Sequence[PageRequest]
    ) -> list[Page | ClientError]:
        """The next page of each thread (oldest first), audited, in one round trip.

        A thread the caller is not a current member of gets NotFound in its place.
        """
        capped = [PageRequest(r.thread_id, r.after_seq, min(r.limit, MAX_PAGE)) for r in requests]
        async with self._pool.acquire() as conn:
            pages = await message_store.read_pages(
                conn,
                capped,
                reader=principal.user_id,
                reader_role=principal.role.value,
                clinic_id=principal.clinic_id,
            )
        return [
            await self._not_a_member(r.thread_id) if p is None else p
            for r, p in zip(capped, pages, strict=True)
        ]

    async def history(
        self, principal: Principal, thread_id: UUID, *, after: int, limit: int
    ) -> tuple[list[StoredMessage], bool]:
        """Messages after ``after``, oldest first, and whether that reached the newest."""
        (page,) = await self.read(principal, [PageRequest(thread_id, after, limit)])
        if isinstance(page, ClientError):
            raise page
        return page.messages, page.complete

    async def mark(
        self,
        principal: Principal,
        thread_id: UUID,
        *,
        delivered_seq: int | None,
        read_seq: int | None,
    ) -> Receipt:
        """Move the caller's markers forward (one statement, membership checked in it)."""
        try:
            return await store.update_receipt(
                self._pool,
                thread_id=thread_id,
                user_id=principal.user_id,
                delivered_seq=delivered_seq,
                read_seq=read_seq,
            )
        except NotAMember:
            raise OutOfScope("thread not found") from None
        except ThreadNotFound:
            raise NotFound("thread not found") from None

    @staticmethod
    def _event(principal: Principal, action: str, thread_id: UUID, **detail: int) -> AuditEvent:
        return AuditEvent.by(principal, action, "thread", thread_id, detail=detail)


def _appended(outcome: message_store.Outcome) -> AppendResult:
    """The append's result, or its refusal as the client-facing error."""
    if isinstance(outcome, AppendResult):
        return outcome
    if isinstance(outcome, ConflictingDuplicate):
        raise Conflict(
            "that client message id was used for a different message",
            code=ErrorCode.CLIENT_MSG_ID_REUSED,
        )
    if isinstance(outcome, DeviceNotUsable):
        raise Forbidden("the sending device is not usable", code=ErrorCode.DEVICE_NOT_USABLE)
    if isinstance(outcome, NotAMember):
        raise OutOfScope("thread not found")
    if isinstance(outcome, ThreadNotFound):
        raise NotFound("thread not found")
    raise outcome
