"""Domain records of the scheduling package (plain values, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time
from enum import StrEnum
from typing import Any, Literal
from uuid import UUID


class ServiceKind(StrEnum):
    VIDEO = "video"
    AUDIO = "audio"
    CHAT = "chat"
    IN_PERSON = "in_person"


class AppointmentStatus(StrEnum):
    REQUESTED = "requested"
    CONFIRMED = "confirmed"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    NO_SHOW = "no_show"


# Appointments in these states hold their time slot (the exclusion constraints'
# WHERE clause in migration 0003 lists the same states).
ACTIVE_STATUSES = frozenset(
    {AppointmentStatus.REQUESTED, AppointmentStatus.CONFIRMED, AppointmentStatus.IN_PROGRESS}
)

# Services that take place in a consultation room.
ROOM_SERVICES = frozenset({ServiceKind.VIDEO, ServiceKind.AUDIO})

RuleKind = Literal["work", "break"]
ExceptionKind = Literal["unavailable", "extra"]
ConsultationStatus = Literal["scheduled", "open", "ended", "cancelled"]


@dataclass(frozen=True)
class DoctorProfile:
    user_id: UUID
    clinic_id: UUID
    full_name: str
    specialties: tuple[str, ...]
    languages: tuple[str, ...]
    consultation_minutes: int
    buffer_minutes: int
    fee_cents: int
    currency: str
    services: tuple[ServiceKind, ...]
    bio: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class AvailabilityRule:
    """Weekly hours: ``weekday`` 0 is Monday; times are the clinic's wall clock."""

    id: UUID
    doctor_id: UUID
    weekday: int
    start_time: time
    end_time: time
    valid_from: date | None
    valid_until: date | None
    kind: RuleKind
    created_at: datetime


@dataclass(frozen=True)
class AvailabilityException:
    id: UUID
    doctor_id: UUID
    starts_at: datetime
    ends_at: datetime
    kind: ExceptionKind
    note: str | None
    created_at: datetime


@dataclass(frozen=True)
class Appointment:
    id: UUID
    clinic_id: UUID
    doctor_id: UUID
    patient_id: UUID
    service: ServiceKind
    starts_at: datetime
    ends_at: datetime
    buffer_minutes: int
    status: AppointmentStatus
    cancel_reason: str | None
    checked_in_at: datetime | None
    created_by: UUID | None
    created_at: datetime
    updated_at: datetime
    version: int

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES


@dataclass(frozen=True)
class Consultation:
    id: UUID
    appointment_id: UUID
    room_id: str
    join_opens_at: datetime
    join_closes_at: datetime
    status: ConsultationStatus
    started_at: datetime | None
    ended_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class NewNotification:
    """A notification to enqueue. The payload carries ids and kinds only, never PHI."""

    kind: str
    appointment_id: UUID
    due_at: datetime
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxItem:
    """One outbox row. Its subject is an appointment, or a thread member (chat news)."""

    id: int
    kind: str
    appointment_id: UUID | None
    due_at: datetime
    payload: dict[str, Any]
    attempts: int
    locked_until: datetime | None
    claimed_by: str | None
    sent_at: datetime | None
    cancelled_at: datetime | None
    failed_at: datetime | None
    last_error: str | None
    created_at: datetime
    thread_id: UUID | None
    user_id: UUID | None


@dataclass(frozen=True)
class CalendarFeed:
    id: UUID
    doctor_id: UUID
    created_at: datetime
    revoked_at: datetime | None
