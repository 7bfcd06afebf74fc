"""Scheduling: booking and the appointment lifecycle (doctors' calendars: availability.py).

Domain rules live here; this module knows nothing of HTTP. Double-booking is
prevented by the database (exclusion constraints); this service maps the
refusal to ``slot_taken``. Every read and change of a patient's appointment is
audited, and notifications are enqueued in the same transaction as the change.

A booking is the hot path: one read of everything its checks need, the checks
in Python, then one write statement (booking_store.py), on one connection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import asyncpg

from teleconsult.accounts import store as accounts
from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.core.errors import (
    BadRequest,
    Conflict,
    ErrorCode,
    Forbidden,
    NotFound,
    Unprocessable,
)
from teleconsult.core.identity import Principal, Role
from teleconsult.core.policy import Scope, ensure_in_scope
from teleconsult.core.settings import SchedulingSettings
from teleconsult.notifications import store as outbox_store
from teleconsult.scheduling import booking_store, store
from teleconsult.scheduling.availability import (
    AvailabilityService,
    Clock,
    calendar_of,
    ensure_available,
    utc_now,
    visible_doctor,
)
from teleconsult.scheduling.booking_store import Room
from teleconsult.scheduling.overlap import SlotTaken
from teleconsult.scheduling.records import (
    ACTIVE_STATUSES,
    ROOM_SERVICES,
    Appointment,
    AppointmentStatus,
    Consultation,
    ConsultationStatus,
    NewNotification,
    ServiceKind,
)
from teleconsult.scheduling.scope import appointment_in_scope

S = AppointmentStatus


@dataclass(frozen=True)
class Booked:
    appointment: Appointment
    consultation: Consultation | None


class SchedulingService:
    """Safe to call concurrently; the database serialises conflicting bookings."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        audit: AuditTrail,
        calendars: AvailabilityService,
        settings: SchedulingSettings,
        clock: Clock = utc_now,
    ) -> None:
        self._pool = pool
        self._audit = audit
        self._calendars = calendars
        self._settings = settings
        self._now = clock

    # --- booking --------------------------------------------------------------------

    async def book(
        self,
        principal: Principal,
        *,
        doctor_id: UUID,
        patient_id: UUID | None,
        service: ServiceKind,
        starts_at: datetime,
        ip: str | None,
    ) -> Booked:
        """Book a slot. A patient books for themself (status ``requested``); staff book
        for any patient of their clinic (status ``confirmed``).

        Two statements on one connection: the read of booking_store.booking_context,
        then (when every check passes) the write of booking_store.insert_booking.
        """
        patient = self._patient_for_booking(principal, patient_id)
        staff = principal.role is not Role.PATIENT
        async with self._pool.acquire() as conn:
            found = await booking_store.booking_context(
                conn,
                doctor_id=doctor_id,
                patient_id=patient if staff else None,
                starts_at=starts_at,
            )
            if staff:
                ensure_in_scope(
                    principal,
                    Scope(found.patient_clinic_id, patient)
                    if found.patient_clinic_id is not None and found.patient_role is Role.PATIENT
                    else None,
                    "patient",
                )
            doctor = visible_doctor(principal, found.doctor)
            if service not in doctor.services:
                raise Unprocessable(
                    "the doctor does not offer that service", code=ErrorCode.SERVICE_NOT_OFFERED
                )
            ends_at = starts_at + timedelta(minutes=doctor.consultation_minutes)
            self._calendars.ensure_not_past(starts_at)
            assert found.timezone is not None
            ensure_available(
                calendar_of(found.timezone, found.rules, found.exceptions), starts_at, ends_at
            )
            status = S.CONFIRMED if staff else S.REQUESTED
            appointment_id = uuid4()
            room = None
            if service in ROOM_SERVICES:
                room = Room(store.new_room_id(), *self._join_window(starts_at, ends_at))
            try:
                appointment, consultation = await booking_store.insert_booking(
                    conn,
                    appointment_id=appointment_id,
                    clinic_id=principal.clinic_id,
                    doctor_id=doctor_id,
                    patient_id=patient,
                    service=service,
                    starts_at=starts_at,
                    ends_at=ends_at,
                    status=status,
                    created_by=principal.user_id,
                    room=room,
                    notifications=self._notices(appointment_id, service, starts_at, "booked"),
                    event=self._appointment_event_of(
                        principal,
                        "appointment.create",
                        appointment_id=appointment_id,
                        clinic_id=principal.clinic_id,
                        patient_id=patient,
                        status=status,
                        ip=ip,
                    ),
                )
            except SlotTaken as exc:
                raise _slot_taken(exc) from None
        return Booked(appointment, consultation)

    @staticmethod
    def _patient_for_booking(principal: Principal, patient_id: UUID | None) -> UUID:
        """Whom the booking is for; checks what needs no database (403, 400)."""
        if principal.role is Role.PATIENT:
            if patient_id is not None and patient_id != principal.user_id:
                raise Forbidden("a patient books only for themself")
            return principal.user_id
        if patient_id is None:
            raise BadRequest("patient_id is required when staff book")
        return patient_id

    def _join_window(self, starts_at: datetime, ends_at: datetime) -> tuple[datetime, datetime]:
        before = timedelta(minutes=self._settings.join_before_minutes)
        after = timedelta(minutes=self._settings.join_after_minutes)
        return starts_at - before, ends_at + after

    def _notifications(self, appointment: Appointment, change: str) -> list[NewNotification]:
        return self._notices(appointment.id, appointment.service, appointment.starts_at, change)

    def _notices(
        self, appointment_id: UUID, service: ServiceKind, starts_at: datetime, change: str
    ) -> list[NewNotification]:
        """The change's own message now, and reminders still in the future. Ids only."""
        now = self._now()
        payload = {"change": change, "service": service.value}
        items = [NewNotification(f"appointment_{change}", appointment_id, now, payload)]
        if change == "cancelled":
            return items
        for minutes in self._settings.reminder_offsets_minutes:
            due = starts_at - timedelta(minutes=minutes)
            if due > now:
                items.append(
                    NewNotification(f"reminder_{minutes}m", appointment_id, due, dict(payload))
                )
        return items

    # --- reading --------------------------------------------------------------------

    async def _load(
        self, conn: Any, principal: Principal, appointment_id: UUID, *, for_update: bool = False
    ) -> Appointment:
        return await appointment_in_scope(conn, principal, appointment_id, for_update=for_update)

    async def get(self, principal: Principal, appointment_id: UUID, *, ip: str | None) -> Booked:
        async with self._pool.acquire() as conn:
            appointment = await self._load(conn, principal, appointment_id)
            consultation = await store.get_consultation_for_appointment(conn, appointment_id)
            await self._audit.record(
                self._appointment_event(principal, "appointment.read", appointment, ip), conn
            )
        return Booked(appointment, consultation)

    # --- join links (issue 12 follow-up): /join/<room id> resolves its appointment ---
    async def get_by_room(self, principal: Principal, room_id: str, *, ip: str | None) -> Booked:
        """The appointment whose consultation room this is, scoped like ``get`` (an
        unknown room and one out of scope are the same 404), audited as a read."""
        async with self._pool.acquire() as conn:
            consultation = await store.get_consultation_by_room(conn, room_id)
            if consultation is None:
                raise NotFound("appointment not found")
            appointment = await self._load(conn, principal, consultation.appointment_id)
            await self._audit.record(
                self._appointment_event(
                    principal, "appointment.read", appointment, ip, via="join_link"
                ),
                conn,
            )
        return Booked(appointment, consultation)

    async def list_visible(
        self,
        principal: Principal,
        *,
        start: datetime,
        end: datetime,
        doctor_id: UUID | None,
        patient_id: UUID | None,
        statuses: Sequence[AppointmentStatus] | None,
        after: tuple[datetime, UUID] | None,
        limit: int,
        ip: str | None,
    ) -> list[Appointment]:
        """Appointments the caller may see: a patient their own, a doctor theirs,
        other staff their clinic's; filters narrow further."""
        if end <= start:
            raise BadRequest("'to' must be after 'from'")
        # A filter naming someone outside the caller's scope matches nothing.
        outside = (
            principal.role is Role.PATIENT and patient_id not in (None, principal.user_id)
        ) or (principal.role is Role.DOCTOR and doctor_id not in (None, principal.user_id))
        if principal.role is Role.PATIENT:
            patient_id = principal.user_id
        if principal.role is Role.DOCTOR:
            doctor_id = principal.user_id
        async with self._pool.acquire() as conn:
            found = (
                []
                if outside
                else await store.list_appointments(
                    conn,
                    start=start,
                    end=end,
                    clinic_id=principal.clinic_id,
                    doctor_id=doctor_id,
                    patient_id=patient_id,
                    statuses=statuses,
                    after=after,
                    limit=limit,
                )
            )
            await self._audit.record(
                AuditEvent(
                    action="appointment.list",
                    actor_id=principal.user_id,
                    actor_role=principal.role.value,
                    clinic_id=principal.clinic_id,
                    object_type="appointment_list",
                    ip=ip,
                    detail={"results": len(found)},
                ),
                conn,
            )
        return found

    async def agenda(
        self, principal: Principal, day: date, doctor_id: UUID | None, *, ip: str | None
    ) -> list[Appointment]:
        """The clinic's (or one doctor's) appointments on a day of the clinic's calendar."""
        clinic = await accounts.get_clinic(self._pool, principal.clinic_id)
        assert clinic is not None
        tz = ZoneInfo(clinic.timezone)
        start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
        end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
        return await self.list_visible(
            principal,
            start=start,
            end=end,
            doctor_id=doctor_id,
            patient_id=None,
            statuses=None,
            after=None,
            limit=500,
            ip=ip,
        )

    # --- changes --------------------------------------------------------------------

    async def reschedule(
        self,
        principal: Principal,
        appointment_id: UUID,
        *,
        starts_at: datetime,
        version: int | None,
        ip: str | None,
    ) -> Booked:
        """Move an appointment in one atomic update; the old slot frees as the new is taken."""
        current = await self._load(self._pool, principal, appointment_id)
        if current.status not in ACTIVE_STATUSES - {S.IN_PROGRESS}:
            raise Conflict(
                f"a {current.status.value} appointment cannot move",
                code=ErrorCode.INVALID_TRANSITION,
            )
        doctor = await self._calendars.get_doctor(principal, current.doctor_id)
        ends_at = starts_at + (current.ends_at - current.starts_at)
        async with self._pool.acquire() as conn:
            await self._calendars.check_bookable(conn, doctor, starts_at, ends_at)
            try:
                async with conn.transaction():
                    moved = await store.reschedule(
                        conn,
                        appointment_id,
                        starts_at,
                        ends_at,
                        current.version if version is None else version,
                    )
                    if moved is None:
                        raise Conflict(
                            "the appointment changed meanwhile; reload it and try again",
                            code=ErrorCode.STALE_VERSION,
                        )
                    consultation = None
                    if moved.service in ROOM_SERVICES:
                        opens, closes = self._join_window(starts_at, ends_at)
                        consultation = await store.move_consultation_window(
                            conn, appointment_id, opens, closes
                        )
                    await outbox_store.cancel_pending(conn, appointment_id)
                    await outbox_store.enqueue(conn, self._notifications(moved, "moved"))
                    await self._audit.record(
                        self._appointment_event(
                            principal,
                            "appointment.reschedule",
                            moved,
                            ip,
                            old_start=current.starts_at.isoformat(),
                        ),
                        conn=conn,
                    )
            except SlotTaken as exc:
                raise _slot_taken(exc) from None
        return Booked(moved, consultation)

    async def cancel(
        self, principal: Principal, appointment_id: UUID, *, reason: str, ip: str | None
    ) -> Appointment:
        return await self._transition(
            principal,
            appointment_id,
            ACTIVE_STATUSES - {S.IN_PROGRESS},
            S.CANCELLED,
            "appointment.cancel",
            ip,
            reason=reason,
        )

    async def confirm(
        self, principal: Principal, appointment_id: UUID, *, ip: str | None
    ) -> Appointment:
        return await self._transition(
            principal, appointment_id, {S.REQUESTED}, S.CONFIRMED, "appointment.confirm", ip
        )

    async def start(
        self, principal: Principal, appointment_id: UUID, *, ip: str | None
    ) -> Appointment:
        return await self._transition(
            principal, appointment_id, {S.CONFIRMED}, S.IN_PROGRESS, "appointment.start", ip
        )

    async def complete(
        self, principal: Principal, appointment_id: UUID, *, ip: str | None
    ) -> Appointment:
        return await self._transition(
            principal, appointment_id, {S.IN_PROGRESS}, S.COMPLETED, "appointment.complete", ip
        )

    async def no_show(
        self, principal: Principal, appointment_id: UUID, *, ip: str | None
    ) -> Appointment:
        current = await self._load(self._pool, principal, appointment_id)
        if current.starts_at > self._now():
            raise Conflict(
                "a patient can be marked absent only once the appointment has begun",
                code=ErrorCode.INVALID_TRANSITION,
            )
        return await self._transition(
            principal,
            appointment_id,
            {S.REQUESTED, S.CONFIRMED},
            S.NO_SHOW,
            "appointment.no_show",
            ip,
        )

    async def check_in(
        self, principal: Principal, appointment_id: UUID, *, ip: str | None
    ) -> Appointment:
        await self._load(self._pool, principal, appointment_id)
        async with self._pool.acquire() as conn, conn.transaction():
            checked = await store.check_in(conn, appointment_id)
            if checked is None:
                raise Conflict(
                    "only a requested or confirmed appointment can be checked in",
                    code=ErrorCode.INVALID_TRANSITION,
                )
            await self._audit.record(
                self._appointment_event(principal, "appointment.check_in", checked, ip), conn=conn
            )
        return checked

    async def _transition(
        self,
        principal: Principal,
        appointment_id: UUID,
        allowed_from: set[AppointmentStatus] | frozenset[AppointmentStatus],
        to_status: AppointmentStatus,
        action: str,
        ip: str | None,
        *,
        reason: str | None = None,
    ) -> Appointment:
        await self._load(self._pool, principal, appointment_id)
        async with self._pool.acquire() as conn, conn.transaction():
            changed = await store.transition(
                conn, appointment_id, allowed_from, to_status, reason=reason
            )
            if changed is None:
                raise Conflict(
                    f"cannot go to {to_status.value} from the appointment's current state",
                    code=ErrorCode.INVALID_TRANSITION,
                )
            if to_status is S.CANCELLED:
                await outbox_store.cancel_pending(conn, appointment_id)
                await outbox_store.enqueue(conn, self._notifications(changed, "cancelled"))
            consultation = await store.get_consultation_for_appointment(conn, appointment_id)
            if consultation is not None:
                target = _ROOM_STATUS.get(to_status)
                if target is not None:
                    await store.set_consultation_status(
                        conn, consultation.id, _ROOM_FROM[target], target
                    )
            await self._audit.record(
                self._appointment_event(principal, action, changed, ip), conn=conn
            )
        return changed

    # --- audit ----------------------------------------------------------------------

    @staticmethod
    def _event(
        principal: Principal, action: str, object_type: str, object_id: UUID, ip: str | None
    ) -> AuditEvent:
        return AuditEvent.by(principal, action, object_type, object_id, ip=ip)

    @classmethod
    def _appointment_event(
        cls,
        principal: Principal,
        action: str,
        appointment: Appointment,
        ip: str | None,
        **detail: str,
    ) -> AuditEvent:
        return cls._appointment_event_of(
            principal,
            action,
            appointment_id=appointment.id,
            clinic_id=appointment.clinic_id,
            patient_id=appointment.patient_id,
            status=appointment.status,
            ip=ip,
            **detail,
        )

    @staticmethod
    def _appointment_event_of(
        principal: Principal,
        action: str,
        *,
        appointment_id: UUID,
        clinic_id: UUID,
        patient_id: UUID,
        status: AppointmentStatus,
        ip: str | None,
        **detail: str,
    ) -> AuditEvent:
        """The event of an appointment's read or change, also before its row exists."""
        facts = {"patient_id": str(patient_id), "status": status.value}
        return AuditEvent.by(
            principal,
            action,
            "appointment",
            appointment_id,
            clinic_id=clinic_id,
            ip=ip,
            detail=facts | detail,
        )


_ROOM_STATUS: dict[AppointmentStatus, ConsultationStatus] = {
    S.CANCELLED: "cancelled",
    S.NO_SHOW: "cancelled",
    S.IN_PROGRESS: "open",
    S.COMPLETED: "ended",
}
_ROOM_FROM: dict[ConsultationStatus, tuple[ConsultationStatus, ...]] = {
    "cancelled": ("scheduled", "open"),
    "open": ("scheduled",),
    "ended": ("scheduled", "open"),
}


def _slot_taken(exc: SlotTaken) -> Conflict:
    return Conflict(
        f"that time is taken: the {exc.which} already has an appointment",
        code=ErrorCode.SLOT_TAKEN,
    )
