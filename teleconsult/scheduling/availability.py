"""Doctors, their availability and free slots (reads and changes of calendars).

Domain rules only; no HTTP. Booking and the appointment lifecycle, which use
these calendars, are in ``service.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg

from teleconsult.accounts import store as accounts
from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.core.errors import BadRequest, ErrorCode, NotFound, Unprocessable
from teleconsult.core.identity import Principal, Role
from teleconsult.core.policy import Scope, ensure_in_scope, ensure_self_or_any
from teleconsult.scheduling import store
from teleconsult.scheduling.records import (
    AvailabilityException,
    AvailabilityRule,
    DoctorProfile,
    ExceptionKind,
    ServiceKind,
)
from teleconsult.scheduling.slots import (
    Busy,
    DatedException,
    Slot,
    SlotPolicy,
    WeeklyBreak,
    WeeklyRule,
    fits_availability,
    free_slots,
)

Clock = Callable[[], datetime]
MAX_SEARCH_DAYS = 31


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Calendar:
    """A doctor's calendar as the slot computation takes it (slots.py)."""

    tz: ZoneInfo
    work: list[WeeklyRule]
    pauses: list[WeeklyBreak]
    dated: list[DatedException]


class StoredRule(Protocol):
    """What a calendar takes of a weekly rule: an AvailabilityRule, or a lighter record."""

    @property
    def weekday(self) -> int: ...
    @property
    def start_time(self) -> time: ...
    @property
    def end_time(self) -> time: ...
    @property
    def valid_from(self) -> date | None: ...
    @property
    def valid_until(self) -> date | None: ...
    @property
    def kind(self) -> str: ...


class StoredException(Protocol):
    """What a calendar takes of a dated exception."""

    @property
    def starts_at(self) -> datetime: ...
    @property
    def ends_at(self) -> datetime: ...
    @property
    def kind(self) -> ExceptionKind: ...


def calendar_of(
    timezone: str, rules: Sequence[StoredRule], exceptions: Sequence[StoredException]
) -> Calendar:
    """The calendar from the clinic's time zone and the doctor's stored rules and exceptions."""
    return Calendar(
        tz=ZoneInfo(timezone),
        work=[_weekly(WeeklyRule, r) for r in rules if r.kind == "work"],
        pauses=[_weekly(WeeklyBreak, r) for r in rules if r.kind == "break"],
        dated=[DatedException(x.starts_at, x.ends_at, x.kind) for x in exceptions],
    )


def visible_doctor(principal: Principal, doctor: DoctorProfile | None) -> DoctorProfile:
    """``doctor`` if the principal may see it (their clinic's); 404 ``not_found`` otherwise."""
    ensure_in_scope(
        principal, Scope(doctor.clinic_id, principal.user_id) if doctor else None, "doctor"
    )
    assert doctor is not None
    return doctor


class AvailabilityService:
    """Safe to call concurrently."""

    def __init__(self, *, pool: asyncpg.Pool, audit: AuditTrail, clock: Clock = utc_now) -> None:
        self._pool = pool
        self._audit = audit
        self._now = clock

    # --- doctors --------------------------------------------------------------------

    async def list_doctors(
        self, principal: Principal, service: ServiceKind | None
    ) -> list[DoctorProfile]:
        return await store.list_doctors(self._pool, principal.clinic_id, service=service)

    async def get_doctor(self, principal: Principal, doctor_id: UUID) -> DoctorProfile:
        return visible_doctor(principal, await store.get_doctor_profile(self._pool, doctor_id))

    async def set_doctor_profile(
        self, principal: Principal, doctor_id: UUID, fields: dict[str, Any], *, ip: str | None
    ) -> DoctorProfile:
        user = await accounts.get_user(self._pool, doctor_id)
        visible = user is not None and user.role is Role.DOCTOR
        ensure_in_scope(
            principal,
            Scope(user.clinic_id, principal.user_id) if user and visible else None,
            "doctor",
        )
        ensure_self_or_any(principal, doctor_id, self_only=Role.DOCTOR)
        async with self._pool.acquire() as conn, conn.transaction():
            profile = await store.upsert_doctor_profile(
                conn, user_id=doctor_id, clinic_id=principal.clinic_id, **fields
            )
            if profile is None:
                raise NotFound("doctor not found")
            await self._audit.record(
                self._event(principal, "doctor.profile.update", "doctor", doctor_id, ip),
                conn=conn,
            )
        return profile

    # --- availability ---------------------------------------------------------------

    async def _doctor_for_calendar(
        self, principal: Principal, doctor_id: UUID, *, write: bool
    ) -> DoctorProfile:
        doctor = await self.get_doctor(principal, doctor_id)
        if write:
            ensure_self_or_any(principal, doctor_id, self_only=Role.DOCTOR)
        return doctor

    async def availability(
        self, principal: Principal, doctor_id: UUID, start: datetime, end: datetime
    ) -> tuple[list[AvailabilityRule], list[AvailabilityException]]:
        await self._doctor_for_calendar(principal, doctor_id, write=False)
        rules = await store.list_availability_rules(self._pool, doctor_id)
        exceptions = await store.list_availability_exceptions(self._pool, doctor_id, start, end)
        return rules, exceptions

    async def add_rule(
        self, principal: Principal, doctor_id: UUID, **fields: Any
    ) -> AvailabilityRule:
        await self._doctor_for_calendar(principal, doctor_id, write=True)
        if fields["start_time"] >= fields["end_time"]:
            raise BadRequest("start_time must be before end_time")
        return await store.add_availability_rule(self._pool, doctor_id=doctor_id, **fields)

    async def delete_rule(self, principal: Principal, doctor_id: UUID, rule_id: UUID) -> None:
        await self._doctor_for_calendar(principal, doctor_id, write=True)
        if not await store.delete_availability_rule(
            self._pool, doctor_id=doctor_id, rule_id=rule_id
        ):
            raise NotFound("rule not found")

    async def add_exception(
        self, principal: Principal, doctor_id: UUID, **fields: Any
    ) -> AvailabilityException:
        await self._doctor_for_calendar(principal, doctor_id, write=True)
        if fields["starts_at"] >= fields["ends_at"]:
            raise BadRequest("starts_at must be before ends_at")
        return await store.add_availability_exception(self._pool, doctor_id=doctor_id, **fields)

    async def delete_exception(
        self, principal: Principal, doctor_id: UUID, exception_id: UUID
    ) -> None:
        await self._doctor_for_calendar(principal, doctor_id, write=True)
        if not await store.delete_availability_exception(
            self._pool, doctor_id=doctor_id, exception_id=exception_id
        ):
            raise NotFound("exception not found")

    # --- slots ----------------------------------------------------------------------

    async def _calendar(
        self, conn: Any, doctor: DoctorProfile, start: datetime, end: datetime
    ) -> Calendar:
        clinic = await accounts.get_clinic(conn, doctor.clinic_id)
        assert clinic is not None
        rules = await store.list_availability_rules(conn, doctor.user_id)
        # booking_store.booking_context reads the same margin.
        margin = timedelta(days=1)
        exceptions = await store.list_availability_exceptions(
            conn, doctor.user_id, start - margin, end + margin
        )
        return calendar_of(clinic.timezone, rules, exceptions)

    async def search_slots(
        self,
        principal: Principal,
        *,
        doctor_id: UUID,
        start: datetime,
        end: datetime,
        service: ServiceKind | None,
    ) -> list[Slot]:
        if end <= start:
            raise BadRequest("'to' must be after 'from'")
        if end - start > timedelta(days=MAX_SEARCH_DAYS):
            raise BadRequest(f"search at most {MAX_SEARCH_DAYS} days at once")
        doctor = await self.get_doctor(principal, doctor_id)
        if service is not None and service not in doctor.services:
            return []
        calendar = await self._calendar(self._pool, doctor, start, end)
        buffer = timedelta(minutes=doctor.buffer_minutes)
        busy = await store.list_busy(self._pool, doctor_id, start - buffer, end + buffer)
        return free_slots(
            tz=calendar.tz,
            rules=calendar.work,
            breaks=calendar.pauses,
            exceptions=calendar.dated,
            busy=[Busy(s, e, timedelta(minutes=b)) for s, e, b in busy],
            policy=SlotPolicy(
                duration=timedelta(minutes=doctor.consultation_minutes), buffer=buffer
            ),
            window_start=start,
            window_end=end,
            now=self._now(),
        )

    async def check_bookable(
        self, conn: Any, doctor: DoctorProfile, starts_at: datetime, ends_at: datetime
    ) -> None:
        """Refuse a time in the past or outside the doctor's working time (422)."""
        self.ensure_not_past(starts_at)
        calendar = await self._calendar(conn, doctor, starts_at, ends_at)
        ensure_available(calendar, starts_at, ends_at)

    def ensure_not_past(self, starts_at: datetime) -> None:
        """Refuse a time that has already begun (422 ``in_the_past``)."""
        if starts_at <= self._now():
            raise Unprocessable("that time has already passed", code=ErrorCode.IN_THE_PAST)

    @staticmethod
    def _event(
        principal: Principal, action: str, object_type: str, object_id: UUID, ip: str | None
    ) -> AuditEvent:
        return AuditEvent.by(principal, action, object_type, object_id, ip=ip)


def ensure_available(calendar: Calendar, starts_at: datetime, ends_at: datetime) -> None:
    """Refuse a time outside the doctor's working time (422 ``outside_availability``)."""
    if not fits_availability(
        starts_at,
        ends_at,
        tz=calendar.tz,
        rules=calendar.work,
        breaks=calendar.pauses,
        exceptions=calendar.dated,
    ):
        raise Unprocessable(
            "the doctor is not available at that time", code=ErrorCode.OUTSIDE_AVAILABILITY
        )


def _weekly(kind: type[WeeklyRule] | type[WeeklyBreak], rule: StoredRule) -> Any:
    return kind(
        weekday=rule.weekday,
        start=rule.start_time,
        end=rule.end_time,
        valid_from=rule.valid_from,
        valid_until=rule.valid_until,
    )
