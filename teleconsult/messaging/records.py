"""Domain records and errors of the messaging store (plain values, no I/O).

An envelope is opaque bytes to the server: encrypted by the sending device for
every recipient device. Nothing here holds plaintext or a private key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

from teleconsult.core.errors import TeleconsultError


class ThreadKind(StrEnum):
    DIRECT = "direct"
    CARE_TEAM = "care_team"


@dataclass(frozen=True)
class Device:
    """A client device's public keys; ``revoked_at`` is set once it may no longer send."""

    id: UUID
    user_id: UUID
    x25519_public: bytes
    ed25519_public: bytes
    label: str | None
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class Thread:
    """``last_seq`` is the seq of the newest message (0 while there is none)."""

    id: UUID
    clinic_id: UUID
    kind: ThreadKind
    appointment_id: UUID | None
    created_by: UUID
    created_at: datetime
    last_seq: int


@dataclass(frozen=True)
class Member:
    """``left_at`` is None while the user is a current member."""

    thread_id: UUID
    user_id: UUID
    role: str
    joined_at: datetime
    left_at: datetime | None


@dataclass(frozen=True)
class StoredMessage:
    thread_id: UUID
    seq: int
    client_msg_id: str
    sender_user_id: UUID
    sender_device_id: UUID
    envelope: bytes
    created_at: datetime


@dataclass(frozen=True)
class Receipt:
    """Both markers only move forward, and ``read_seq <= delivered_seq``."""

    thread_id: UUID
    user_id: UUID
    delivered_seq: int
    read_seq: int
    updated_at: datetime


@dataclass(frozen=True)
class AppendResult:
    """The message's seq; ``duplicate`` when the client message id was stored before."""

    seq: int
    duplicate: bool
    created_at: datetime


# --- errors ---------------------------------------------------------------------------


class ThreadNotFound(TeleconsultError):
    def __init__(self, thread_id: UUID) -> None:
        super().__init__(f"thread {thread_id} does not exist")
        self.thread_id = thread_id


class NotAMember(TeleconsultError):
    """The user is not a current member of the thread."""


class DeviceNotUsable(TeleconsultError):
    """The device does not exist, belongs to another user, or was revoked."""


class ConflictingDuplicate(TeleconsultError):
    """A client message id came again with another sender or other envelope bytes."""

    def __init__(self, thread_id: UUID, client_msg_id: str, seq: int) -> None:
        super().__init__(
            f"client message id {client_msg_id!r} is already message {seq} of the thread, "
            "with another sender or content"
        )
        self.thread_id = thread_id
        self.client_msg_id = client_msg_id
        self.seq = seq


class InvalidDeviceKey(TeleconsultError):
    """A public key is not 32 bytes."""


class DeviceKeyInUse(TeleconsultError):
    """The signing key belongs to another device: another user's, or a revoked one."""


class NotInClinic(TeleconsultError):
    """A member, the creator or the appointment is not of the thread's clinic."""


class InvalidMembers(TeleconsultError):
    """The member list breaks a rule of the thread kind (a direct thread has two)."""


class AppointmentHasThread(TeleconsultError):
    def __init__(self, appointment_id: UUID, thread_id: UUID | None) -> None:
        super().__init__(f"appointment {appointment_id} already has a thread")
        self.appointment_id = appointment_id
        self.thread_id = thread_id
