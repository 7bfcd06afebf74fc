"""SQL of a booking in two statements: one read for every check, one write for every row.

:func:`booking_context` reads, in one SELECT, the doctor's profile, the time
zone of the doctor's clinic, the doctor's weekly rules and the dated exceptions
around the requested time, and (when staff book) the patient's clinic and role.
The service decides on those in Python.

:func:`insert_booking` is then one statement, run in its own implicit
transaction: a CTE that takes the doctor's then the patient's advisory lock
(the rule and why: overlap.py) and inserts the appointment, its consultation,
its outbox notifications and its audit event, all or nothing. The ids are made
by the caller, so the notifications and the audit event are known before the
statement runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import NamedTuple, TypeAlias
from uuid import UUID

import asyncpg

from teleconsult.audit import AuditEvent
from teleconsult.audit.store import INTAKE_COLUMNS, intake_params, intake_placeholders
from teleconsult.core.identity import Role
from teleconsult.notifications.store import ON_DUPLICATE, enqueue_params
from teleconsult.scheduling.overlap import people_locks, retry_deadlocks, slot_taken_on_overlap
from teleconsult.scheduling.records import (
    Appointment,
    AppointmentStatus,
    Consultation,
    DoctorProfile,
    ExceptionKind,
    NewNotification,
    RuleKind,
    ServiceKind,
)
from teleconsult.scheduling.store import (
    _APPOINTMENT_COLUMNS,
    _CONSULTATION_COLUMNS,
    _DOCTOR_COLUMNS,
    NoDoctorProfile,
    _appointment,
    _doctor,
)

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"

# The dated exceptions read around a booking: as AvailabilityService reads them.
EXCEPTION_MARGIN = timedelta(days=1)


class BookingRule(NamedTuple):
    """A weekly rule as the booking's checks take it (no id, no timestamps)."""

    weekday: int
    start_time: time
    end_time: time
    valid_from: date | None
    valid_until: date | None
    kind: RuleKind


class BookingException(NamedTuple):
    """A dated exception as the booking's checks take it."""

    starts_at: datetime
    ends_at: datetime
    kind: ExceptionKind


@dataclass(frozen=True)
class BookingContext:
    """What the checks of a booking need, read at once. ``doctor`` is None when the
    doctor has no profile; the patient's fields are None unless asked for and found."""

    doctor: DoctorProfile | None
    timezone: str | None
    rules: list[BookingRule]
    exceptions: list[BookingException]
    patient_clinic_id: UUID | None
    patient_role: Role | None


@dataclass(frozen=True)
class Room:
    """The consultation room of a video or audio appointment, made by the caller."""

    room_id: str
    join_opens_at: datetime
    join_closes_at: datetime


# $1 doctor, $2 and $3 the window of exceptions before adding the consultation's length
# (that is on the profile, read here), $4 the patient or NULL. The rules and exceptions
# come as arrays of built-in types, one per column: decoded by the driver, no JSON.
# Aggregates in one query see their rows in one order, so the arrays line up.
_CONTEXT = f"""
SELECT {_DOCTOR_COLUMNS}, c.timezone, r.*, x.*,
    pt.clinic_id AS patient_clinic_id, pt.role::text AS patient_role
FROM (VALUES (true)) AS always (one_row)
LEFT JOIN (doctor_profiles p JOIN users u ON u.id = p.user_id JOIN clinics c ON c.id = p.clinic_id)
    ON p.user_id = $1
LEFT JOIN users pt ON pt.id = $4
CROSS JOIN LATERAL (
    SELECT array_agg(ar.weekday) AS rule_weekdays, array_agg(ar.start_time) AS rule_starts,
           array_agg(ar.end_time) AS rule_ends, array_agg(ar.valid_from) AS rule_froms,
           array_agg(ar.valid_until) AS rule_untils, array_agg(ar.kind) AS rule_kinds
    FROM availability_rules ar WHERE ar.doctor_id = p.user_id
) r
CROSS JOIN LATERAL (
    SELECT array_agg(ae.starts_at) AS exception_starts, array_agg(ae.ends_at) AS exception_ends,
           array_agg(ae.kind) AS exception_kinds
    FROM availability_exceptions ae
    WHERE ae.doctor_id = p.user_id AND ae.ends_at > $2
      AND ae.starts_at < $3::timestamptz + make_interval(mins => p.consultation_minutes)
) x
"""
_CONTEXT_FIELDS = (
    "timezone rule_weekdays rule_starts rule_ends rule_froms rule_untils rule_kinds "
    "exception_starts exception_ends exception_kinds patient_clinic_id patient_role"
).split()


async def booking_context(
    conn: Conn, *, doctor_id: UUID, patient_id: UUID | None, starts_at: datetime
) -> BookingContext:
    """Everything a booking of ``doctor_id`` at ``starts_at`` is checked against (one query).

    The exceptions are those overlapping ``[starts_at - 1 day, ends_at + 1 day)``,
    ``ends_at`` by the doctor's consultation length. The patient is read only
    when ``patient_id`` is given.
    """
    row = await conn.fetchrow(
        _CONTEXT,
        doctor_id,
        starts_at - EXCEPTION_MARGIN,
        starts_at + EXCEPTION_MARGIN,
        patient_id,
    )
    assert row is not None
    values = dict(row)
    got = {name: values.pop(name) for name in _CONTEXT_FIELDS}
    role = got["patient_role"]
    return BookingContext(
        doctor=_doctor(values) if values["user_id"] is not None else None,
        timezone=got["timezone"],
        rules=[
            BookingRule(*rule)
            for rule in zip(
                *(
                    got[f"rule_{n}"] or ()
                    for n in "weekdays starts ends froms untils kinds".split()
                ),
                strict=True,
            )
        ],
        exceptions=[
            BookingException(*dated)
            for dated in zip(
                *(got[f"exception_{n}"] or () for n in ("starts", "ends", "kinds")), strict=True
            )
        ],
        patient_clinic_id=got["patient_clinic_id"],
        patient_role=Role(role) if role is not None else None,
    )


_CONSULTATION_FIELDS = tuple(c.strip() for c in _CONSULTATION_COLUMNS.split(","))

# Every sub-statement writes only when the appointment was written (FROM a), so a
# doctor without a profile in the clinic writes nothing; an exclusion violation
# aborts the whole statement. Notifications are outbox rows as enqueue() writes them.
_INSERT_BOOKING = f"""
WITH locks AS MATERIALIZED (
    SELECT {people_locks("$3::uuid", "$4::uuid")}
),
a AS (
    INSERT INTO appointments (
        id, clinic_id, doctor_id, patient_id, service, starts_at, ends_at,
        buffer_minutes, status, created_by
    )
    SELECT $1::uuid, $2::uuid, p.user_id, $4::uuid, $5::text::service_kind, $6::timestamptz,
           $7::timestamptz, p.buffer_minutes, $8::text, $9::uuid
    FROM locks, doctor_profiles p WHERE p.user_id = $3::uuid AND p.clinic_id = $2::uuid
    RETURNING {_APPOINTMENT_COLUMNS}
),
c AS (
    INSERT INTO consultations (appointment_id, room_id, join_opens_at, join_closes_at)
    SELECT a.id, $10::text, $11::timestamptz, $12::timestamptz FROM a
    WHERE $10::text IS NOT NULL
    RETURNING {_CONSULTATION_COLUMNS}
),
n AS (
    INSERT INTO notification_outbox (kind, appointment_id, due_at, payload)
    SELECT n.kind, n.appointment_id, n.due_at, n.payload::jsonb
    FROM unnest($13::text[], $14::uuid[], $15::timestamptz[], $16::text[])
        AS n (kind, appointment_id, due_at, payload)
    JOIN a ON a.id = n.appointment_id
    {ON_DUPLICATE}
),
i AS (
    INSERT INTO audit_intake ({", ".join(INTAKE_COLUMNS)})
    SELECT {intake_placeholders(17)} FROM a
)
SELECT a.*, {", ".join(f"c.{f} AS consultation_{f}" for f in _CONSULTATION_FIELDS)}
FROM a LEFT JOIN c ON c.appointment_id = a.id
"""


async def insert_booking(
    conn: Conn,
    *,
    appointment_id: UUID,
    clinic_id: UUID,
    doctor_id: UUID,
    patient_id: UUID,
    service: ServiceKind,
    starts_at: datetime,
    ends_at: datetime,
    status: AppointmentStatus,
    created_by: UUID | None,
    room: Room | None,
    notifications: Sequence[NewNotification],
    event: AuditEvent,
) -> tuple[Appointment, Consultation | None]:
    """Book in one statement; the doctor's current buffer is copied onto the row.

    Call it outside a transaction: the statement is its own, and is run again
    when PostgreSQL aborts it as a deadlock. Raises SlotTaken when the doctor
    (with buffers) or the patient is busy then, NoDoctorProfile when the doctor
    has no profile in the clinic, and InvalidAuditEvent (before the statement)
    for a bad ``event``.
    """
    if isinstance(conn, asyncpg.Connection) and conn.is_in_transaction():
        raise RuntimeError("insert_booking runs as a statement of its own, not in a transaction")
    args = (
        appointment_id,
        clinic_id,
        doctor_id,
        patient_id,
        ServiceKind(service).value,
        starts_at,
        ends_at,
        AppointmentStatus(status).value,
        created_by,
        room.room_id if room else None,
        room.join_opens_at if room else None,
        room.join_closes_at if room else None,
        *enqueue_params(notifications),
        *intake_params(event),
    )

    async def attempt() -> asyncpg.Record | None:
        with slot_taken_on_overlap():
            row: asyncpg.Record | None = await conn.fetchrow(_INSERT_BOOKING, *args)
            return row

    row = await retry_deadlocks(attempt)
    if row is None:
        raise NoDoctorProfile(f"doctor {doctor_id} has no profile in clinic {clinic_id}")
    values = dict(row)
    consultation = {f: values.pop(f"consultation_{f}") for f in _CONSULTATION_FIELDS}
    return _appointment(values), (
        Consultation(**consultation) if consultation["id"] is not None else None
    )
