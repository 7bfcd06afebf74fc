"""SQL for doctor profiles, availability, appointments and consultations.

Double-booking is refused by the database (the exclusion constraints of
migration 0003), not by a read-then-write here: ``insert_appointment``,
``reschedule`` and ``transition`` raise :class:`SlotTaken` when a constraint
fires, after taking the doctor's then the patient's advisory lock (the rule
and why: overlap.py). The functions take a pool or a connection; on a
connection inside a transaction, the guarded writes run in a savepoint so a
refused booking leaves the outer transaction usable. A booking from the API
takes two statements of booking_store.py instead.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from teleconsult.core.errors import TeleconsultError
from teleconsult.scheduling.overlap import LOCK_APPOINTMENT, LOCK_PEOPLE, guarded_fetchrow
from teleconsult.scheduling.overlap import SlotOwner as SlotOwner
from teleconsult.scheduling.overlap import SlotTaken as SlotTaken
from teleconsult.scheduling.records import (
    ACTIVE_STATUSES,
    Appointment,
    AppointmentStatus,
    AvailabilityException,
    AvailabilityRule,
    Consultation,
    ConsultationStatus,
    DoctorProfile,
    ExceptionKind,
    RuleKind,
    ServiceKind,
)

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"

_MOVABLE = (AppointmentStatus.REQUESTED, AppointmentStatus.CONFIRMED)


class NoDoctorProfile(TeleconsultError):
    """The doctor has no profile in the clinic, so cannot be booked."""


def rows_affected(status: str) -> int:
    """Rows affected, from a command tag such as ``UPDATE 3``."""
    return int(status.rsplit(" ", 1)[-1])


# --- doctor profiles ------------------------------------------------------------------

_DOCTOR_COLUMNS = (
    "p.user_id, p.clinic_id, u.full_name, p.specialties, p.languages, "
    "p.consultation_minutes, p.buffer_minutes, p.fee_cents, p.currency, "
    "p.services::text[] AS services, p.bio, p.created_at, p.updated_at"
)


def _doctor(row: Mapping[str, Any]) -> DoctorProfile:
    values = dict(row)
    values["specialties"] = tuple(values["specialties"])
    values["languages"] = tuple(values["languages"])
    values["services"] = tuple(ServiceKind(s) for s in values["services"])
    return DoctorProfile(**values)


async def upsert_doctor_profile(
    conn: Conn,
    *,
    user_id: UUID,
    clinic_id: UUID,
    specialties: Sequence[str],
    languages: Sequence[str],
    consultation_minutes: int,
    buffer_minutes: int,
    fee_cents: int,
    currency: str,
    services: Sequence[ServiceKind],
    bio: str | None = None,
) -> DoctorProfile | None:
    """Create or replace a doctor's profile; None when the user is not a doctor of the clinic."""
    row = await conn.fetchrow(
        f"""
        WITH p AS (
            INSERT INTO doctor_profiles (
                user_id, clinic_id, specialties, languages, consultation_minutes,
                buffer_minutes, fee_cents, currency, services, bio
            )
            SELECT id, clinic_id, $3, $4, $5, $6, $7, $8, $9::text[]::service_kind[], $10
            FROM users WHERE id = $1 AND clinic_id = $2 AND role = 'doctor'
            ON CONFLICT (user_id) DO UPDATE SET
                specialties = EXCLUDED.specialties,
                languages = EXCLUDED.languages,
                consultation_minutes = EXCLUDED.consultation_minutes,
                buffer_minutes = EXCLUDED.buffer_minutes,
                fee_cents = EXCLUDED.fee_cents,
                currency = EXCLUDED.currency,
                services = EXCLUDED.services,
                bio = EXCLUDED.bio,
                updated_at = now()
            RETURNING *
        )
        SELECT {_DOCTOR_COLUMNS} FROM p JOIN users u ON u.id = p.user_id
        """,
        user_id,
        clinic_id,
        list(specialties),
        list(languages),
        consultation_minutes,
        buffer_minutes,
        fee_cents,
        currency,
        [ServiceKind(s).value for s in services],
        bio,
    )
    return _doctor(row) if row else None


async def get_doctor_profile(conn: Conn, user_id: UUID) -> DoctorProfile | None:
    row = await conn.fetchrow(
        f"SELECT {_DOCTOR_COLUMNS} FROM doctor_profiles p JOIN users u ON u.id = p.user_id "
        "WHERE p.user_id = $1",
        user_id,
    )
    return _doctor(row) if row else None


async def list_doctors(
    conn: Conn,
    clinic_id: UUID,
    *,
    service: ServiceKind | None = None,
    include_disabled: bool = False,
) -> list[DoctorProfile]:
    """The clinic's doctors with a profile, by name; disabled accounts left out unless asked."""
    rows = await conn.fetch(
        f"""
        SELECT {_DOCTOR_COLUMNS} FROM doctor_profiles p JOIN users u ON u.id = p.user_id
        WHERE p.clinic_id = $1
          AND ($2::text IS NULL OR $2::text::service_kind = ANY(p.services))
          AND ($3 OR u.status = 'active')
        ORDER BY u.full_name, p.user_id
        """,
        clinic_id,
        service.value if service else None,
        include_disabled,
    )
    return [_doctor(row) for row in rows]


# --- availability ---------------------------------------------------------------------

_RULE_COLUMNS = (
    "id, doctor_id, weekday, start_time, end_time, valid_from, valid_until, kind, created_at"
)
_EXCEPTION_COLUMNS = "id, doctor_id, starts_at, ends_at, kind, note, created_at"


async def add_availability_rule(
    conn: Conn,
    *,
    doctor_id: UUID,
    weekday: int,
    start_time: time,
    end_time: time,
    kind: RuleKind = "work",
    valid_from: date | None = None,
    valid_until: date | None = None,
) -> AvailabilityRule:
    row = await conn.fetchrow(
        f"""
        INSERT INTO availability_rules
            (doctor_id, weekday, start_time, end_time, kind, valid_from, valid_until)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        RETURNING {_RULE_COLUMNS}
        """,
        doctor_id,
        weekday,
        start_time,
        end_time,
        kind,
        valid_from,
        valid_until,
    )
    assert row is not None
    return AvailabilityRule(**dict(row))


async def list_availability_rules(conn: Conn, doctor_id: UUID) -> list[AvailabilityRule]:
    rows = await conn.fetch(
        f"SELECT {_RULE_COLUMNS} FROM availability_rules WHERE doctor_id = $1 "
        "ORDER BY weekday, start_time, id",
        doctor_id,
    )
    return [AvailabilityRule(**dict(row)) for row in rows]


async def delete_availability_rule(conn: Conn, *, doctor_id: UUID, rule_id: UUID) -> bool:
    status = await conn.execute(
        "DELETE FROM availability_rules WHERE id = $1 AND doctor_id = $2", rule_id, doctor_id
    )
    return rows_affected(status) == 1


async def add_availability_exception(
    conn: Conn,
    *,
    doctor_id: UUID,
    starts_at: datetime,
    ends_at: datetime,
    kind: ExceptionKind,
    note: str | None = None,
) -> AvailabilityException:
    row = await conn.fetchrow(
        f"""
        INSERT INTO availability_exceptions (doctor_id, starts_at, ends_at, kind, note)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING {_EXCEPTION_COLUMNS}
        """,
        doctor_id,
        starts_at,
        ends_at,
        kind,
        note,
    )
    assert row is not None
    return AvailabilityException(**dict(row))


async def list_availability_exceptions(
    conn: Conn, doctor_id: UUID, start: datetime, end: datetime
) -> list[AvailabilityException]:
    """Exceptions overlapping ``[start, end)``."""
    rows = await conn.fetch(
        f"""
        SELECT {_EXCEPTION_COLUMNS} FROM availability_exceptions
        WHERE doctor_id = $1 AND starts_at < $3 AND ends_at > $2
        ORDER BY starts_at, id
        """,
        doctor_id,
        start,
        end,
    )
    return [AvailabilityException(**dict(row)) for row in rows]


async def delete_availability_exception(conn: Conn, *, doctor_id: UUID, exception_id: UUID) -> bool:
    status = await conn.execute(
        "DELETE FROM availability_exceptions WHERE id = $1 AND doctor_id = $2",
        exception_id,
        doctor_id,
    )
    return rows_affected(status) == 1


# --- appointments ---------------------------------------------------------------------

_APPOINTMENT_COLUMNS = (
    "id, clinic_id, doctor_id, patient_id, service::text AS service, starts_at, ends_at, "
    "buffer_minutes, status, cancel_reason, checked_in_at, created_by, created_at, "
    "updated_at, version"
)


def _appointment(row: Mapping[str, Any]) -> Appointment:
    values = dict(row)
    values["service"] = ServiceKind(values["service"])
    values["status"] = AppointmentStatus(values["status"])
    return Appointment(**values)


async def insert_appointment(
    conn: Conn,
    *,
    clinic_id: UUID,
    doctor_id: UUID,
    patient_id: UUID,
    service: ServiceKind,
    starts_at: datetime,
    ends_at: datetime,
    created_by: UUID | None,
    status: AppointmentStatus = AppointmentStatus.REQUESTED,
) -> Appointment:
    """Book ``[starts_at, ends_at)``; the doctor's current buffer is copied onto the row.

    Raises SlotTaken when the doctor (with buffers) or the patient is busy then,
    and NoDoctorProfile when the doctor has no profile in the clinic.
    """
    row = await guarded_fetchrow(
        conn,
        (LOCK_PEOPLE, [doctor_id, patient_id]),
        f"""
        INSERT INTO appointments (
            clinic_id, doctor_id, patient_id, service, starts_at, ends_at,
            buffer_minutes, status, created_by
        )
        SELECT $1, p.user_id, $3, $4::text::service_kind, $5, $6, p.buffer_minutes, $7, $8
        FROM doctor_profiles p WHERE p.user_id = $2 AND p.clinic_id = $1
        RETURNING {_APPOINTMENT_COLUMNS}
        """,
        clinic_id,
        doctor_id,
        patient_id,
        ServiceKind(service).value,
        starts_at,
        ends_at,
        AppointmentStatus(status).value,
        created_by,
    )
    if row is None:
        raise NoDoctorProfile(f"doctor {doctor_id} has no profile in clinic {clinic_id}")
    return _appointment(row)


async def get_appointment(
    conn: Conn, appointment_id: UUID, *, for_update: bool = False
) -> Appointment | None:
    """One appointment; ``for_update`` row-locks it (call inside a transaction)."""
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {_APPOINTMENT_COLUMNS} FROM appointments WHERE id = $1{lock}", appointment_id
    )
    return _appointment(row) if row else None


async def list_appointments(
    conn: Conn,
    *,
    start: datetime,
    end: datetime,
    clinic_id: UUID | None = None,
    doctor_id: UUID | None = None,
    patient_id: UUID | None = None,
    statuses: Iterable[AppointmentStatus] | None = None,
    after: tuple[datetime, UUID] | None = None,
    limit: int = 500,
) -> list[Appointment]:
    """Appointments starting in ``[start, end)``, by (starts_at, id), after a cursor.

    At least one of clinic_id, doctor_id and patient_id is required: they pick
    the agenda index.
    """
    conditions = ["starts_at >= $1", "starts_at < $2"]
    args: list[Any] = [start, end]
    for column, value in (
        ("clinic_id", clinic_id),
        ("doctor_id", doctor_id),
        ("patient_id", patient_id),
    ):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${len(args)}")
    if len(args) == 2:
        raise ValueError("list_appointments needs a clinic_id, doctor_id or patient_id")
    if statuses is not None:
        args.append([AppointmentStatus(s).value for s in statuses])
        conditions.append(f"status = ANY(${len(args)}::text[])")
    if after is not None:
        args.extend(after)
        conditions.append(f"(starts_at, id) > (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    rows = await conn.fetch(
        f"SELECT {_APPOINTMENT_COLUMNS} FROM appointments WHERE {' AND '.join(conditions)} "
        f"ORDER BY starts_at, id LIMIT ${len(args)}",
        *args,
    )
    return [_appointment(row) for row in rows]


async def list_busy(
    conn: Conn, doctor_id: UUID, start: datetime, end: datetime
) -> list[tuple[datetime, datetime, int]]:
    """The doctor's active appointments as ``(starts_at, ends_at, buffer_minutes)``.

    The buffer is the one stored with each booking (the doctor's buffer may have
    changed since). Picks every appointment whose busy range (with its buffer)
    overlaps ``[start, end)``, using the doctor exclusion constraint's index.
    """
    rows = await conn.fetch(
        """
        SELECT starts_at, ends_at, buffer_minutes FROM appointments
        WHERE doctor_id = $1
          AND status IN ('requested', 'confirmed', 'in_progress')
          AND appointment_busy_range(starts_at, ends_at, buffer_minutes)
              && tstzrange($2, $3, '[)')
        ORDER BY starts_at
        """,
        doctor_id,
        start,
        end,
    )
    return [(row["starts_at"], row["ends_at"], row["buffer_minutes"]) for row in rows]


async def transition(
    conn: Conn,
    appointment_id: UUID,
    from_statuses: Iterable[AppointmentStatus],
    to_status: AppointmentStatus,
    *,
    reason: str | None = None,
    expected_version: int | None = None,
) -> Appointment | None:
    """Move to ``to_status`` if the status is one of ``from_statuses`` (and the version matches).

    None when the appointment is missing, in another status or at another
    version. ``reason`` is the cancel reason: the table requires one exactly
    for 'cancelled' (a CheckViolationError otherwise). Raises SlotTaken when
    the move makes an inactive appointment active again over a taken slot.
    """
    target = AppointmentStatus(to_status)
    lock = (LOCK_APPOINTMENT, [appointment_id]) if target in ACTIVE_STATUSES else None
    row = await guarded_fetchrow(
        conn,
        lock,
        f"""
        UPDATE appointments
        SET status = $3, cancel_reason = $4, updated_at = now(), version = version + 1
        WHERE id = $1 AND status = ANY($2::text[]) AND ($5::integer IS NULL OR version = $5)
        RETURNING {_APPOINTMENT_COLUMNS}
        """,
        appointment_id,
        [AppointmentStatus(s).value for s in from_statuses],
        target.value,
        reason,
        expected_version,
    )
    return _appointment(row) if row else None


async def reschedule(
    conn: Conn,
    appointment_id: UUID,
    new_start: datetime,
    new_end: datetime,
    expected_version: int,
    *,
    from_statuses: Iterable[AppointmentStatus] = _MOVABLE,
) -> Appointment | None:
    """Move the appointment in one UPDATE, so the constraints check the new range atomically.

    Raises SlotTaken (and changes nothing) when the new time is taken. None when
    the appointment is missing, not movable or at another version. A check-in
    belongs to the old time and is cleared.
    """
    row = await guarded_fetchrow(
        conn,
        (LOCK_APPOINTMENT, [appointment_id]),
        f"""
        UPDATE appointments
        SET starts_at = $2, ends_at = $3, checked_in_at = NULL,
            updated_at = now(), version = version + 1
        WHERE id = $1 AND version = $4 AND status = ANY($5::text[])
        RETURNING {_APPOINTMENT_COLUMNS}
        """,
        appointment_id,
        new_start,
        new_end,
        expected_version,
        [AppointmentStatus(s).value for s in from_statuses],
    )
    return _appointment(row) if row else None


async def check_in(
    conn: Conn, appointment_id: UUID, *, expected_version: int | None = None
) -> Appointment | None:
    """Record the patient's arrival (front desk); None unless requested/confirmed and not yet in."""
    row = await guarded_fetchrow(
        conn,
        (LOCK_APPOINTMENT, [appointment_id]),
        f"""
        UPDATE appointments
        SET checked_in_at = now(), updated_at = now(), version = version + 1
        WHERE id = $1 AND status IN ('requested', 'confirmed') AND checked_in_at IS NULL
          AND ($2::integer IS NULL OR version = $2)
        RETURNING {_APPOINTMENT_COLUMNS}
        """,
        appointment_id,
        expected_version,
    )
    return _appointment(row) if row else None


# --- consultations --------------------------------------------------------------------

_CONSULTATION_COLUMNS = (
    "id, appointment_id, room_id, join_opens_at, join_closes_at, status, started_at, "
    "ended_at, created_at"
)


def new_room_id() -> str:
    """An opaque room id: random, and nothing else, so a join link reveals nothing."""
    return secrets.token_urlsafe(24)


async def insert_consultation(
    conn: Conn,
    *,
    appointment_id: UUID,
    join_opens_at: datetime,
    join_closes_at: datetime,
    room_id: str | None = None,
) -> Consultation:
    row = await conn.fetchrow(
        f"""
        INSERT INTO consultations (appointment_id, room_id, join_opens_at, join_closes_at)
        VALUES ($1, $2, $3, $4)
        RETURNING {_CONSULTATION_COLUMNS}
        """,
        appointment_id,
        room_id or new_room_id(),
        join_opens_at,
        join_closes_at,
    )
    assert row is not None
    return Consultation(**dict(row))


async def get_consultation_by_room(conn: Conn, room_id: str) -> Consultation | None:
    row = await conn.fetchrow(
        f"SELECT {_CONSULTATION_COLUMNS} FROM consultations WHERE room_id = $1", room_id
    )
    return Consultation(**dict(row)) if row else None


async def get_consultation_for_appointment(conn: Conn, appointment_id: UUID) -> Consultation | None:
    row = await conn.fetchrow(
        f"SELECT {_CONSULTATION_COLUMNS} FROM consultations WHERE appointment_id = $1",
        appointment_id,
    )
    return Consultation(**dict(row)) if row else None


async def consultations_for(
    conn: Conn, appointment_ids: Sequence[UUID]
) -> dict[UUID, Consultation]:
    """The consultations of these appointments, by appointment id (one query)."""
    rows = await conn.fetch(
        f"SELECT {_CONSULTATION_COLUMNS} FROM consultations WHERE appointment_id = ANY($1::uuid[])",
        list(appointment_ids),
    )
    return {row["appointment_id"]: Consultation(**dict(row)) for row in rows}


async def move_consultation_window(
    conn: Conn, appointment_id: UUID, join_opens_at: datetime, join_closes_at: datetime
) -> Consultation | None:
    """Follow a rescheduled appointment; None unless the consultation is still scheduled."""
    row = await conn.fetchrow(
        f"""
        UPDATE consultations SET join_opens_at = $2, join_closes_at = $3
        WHERE appointment_id = $1 AND status = 'scheduled'
        RETURNING {_CONSULTATION_COLUMNS}
        """,
        appointment_id,
        join_opens_at,
        join_closes_at,
    )
    return Consultation(**dict(row)) if row else None


async def set_consultation_status(
    conn: Conn,
    consultation_id: UUID,
    from_statuses: Iterable[ConsultationStatus],
    to_status: ConsultationStatus,
) -> Consultation | None:
    """Move the consultation's status; 'open' stamps started_at once, 'ended' stamps ended_at."""
    row = await conn.fetchrow(
        f"""
        UPDATE consultations
        SET status = $3,
            started_at = CASE WHEN $3 = 'open' THEN coalesce(started_at, now())
                              ELSE started_at END,
            ended_at = CASE WHEN $3 = 'ended' THEN now() ELSE ended_at END
        WHERE id = $1 AND status = ANY($2::text[])
        RETURNING {_CONSULTATION_COLUMNS}
        """,
        consultation_id,
        list(from_statuses),
        to_status,
    )
    return Consultation(**dict(row)) if row else None
