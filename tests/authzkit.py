"""What several tables of the authorization matrix share, beside the helpers of
``tests/test_authz_matrix.py``: the scheduling world (two clinics, a colleague doctor,
open calendars, appointments of every target kind), which the scheduling, messaging,
rtc, recordings and FHIR tables build on.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, TypeVar
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg

from teleconsult.core.identity import Role
from tests.test_authz_matrix import Client, Target, World
from tests.world import Account, Tenant, make_user

NAIROBI = ZoneInfo("Africa/Nairobi")  # both tenants' clinic zone
APPOINTMENT_OBJECT = (
    Target.OWN,
    Target.SAME_CLINIC_OTHER_PATIENT,
    Target.SAME_CLINIC_OTHER_DOCTOR,
    Target.OTHER_TENANT,
)
SLOTS_PER_DAY = 9  # 08:00 to 16:00 on the hour; the doctors work 08:00-18:00


@dataclass
class SchedulingWorld(World):
    """The two clinics, a colleague of the clinic's doctor, and (``scheduling_world``)
    calendars for all three doctors."""

    colleague: Account
    first_day: date
    past_base: datetime
    appointments: dict[Target, UUID] = field(default_factory=dict)
    foreign: set[str] = field(default_factory=set)
    _slots: int = 0
    _past: int = 0

    @property
    def foreign_ids(self) -> set[str]:
        return super().foreign_ids | self.foreign

    def doctor(self, target: Target) -> Account:
        return {
            Target.OWN: self.own[Role.DOCTOR],
            Target.SAME_CLINIC_OTHER_DOCTOR: self.colleague,
            Target.OTHER_TENANT: self.other[Role.DOCTOR],
        }[target]

    def parties(self, target: Target) -> tuple[Tenant, Account, Account]:
        """An appointment of ``target`` kind: its clinic, doctor and patient."""
        own, other = self.own, self.other
        assert own.other_patient is not None
        return {
            Target.OWN: (own, own[Role.DOCTOR], own[Role.PATIENT]),
            Target.SAME_CLINIC_OTHER_PATIENT: (own, own[Role.DOCTOR], own.other_patient),
            Target.SAME_CLINIC_OTHER_DOCTOR: (own, self.colleague, own[Role.PATIENT]),
            Target.OTHER_TENANT: (other, other[Role.DOCTOR], other[Role.PATIENT]),
        }[target]

    def booking(self, target: Target) -> tuple[Account, Account]:
        """A booking of ``target`` kind: the doctor and the patient of the body."""
        own, other = self.own, self.other
        assert own.other_patient is not None
        return {
            Target.OWN: (own[Role.DOCTOR], own[Role.PATIENT]),
            Target.SAME_CLINIC_OTHER_PATIENT: (own[Role.DOCTOR], own.other_patient),
            Target.SAME_CLINIC_OTHER_DOCTOR: (self.colleague, own[Role.PATIENT]),
            Target.OTHER_TENANT: (other[Role.DOCTOR], own[Role.PATIENT]),
            Target.OTHER_TENANT_PATIENT: (own[Role.DOCTOR], other[Role.PATIENT]),
        }[target]

    def next_slot(self) -> datetime:
        """A bookable start, different at each call: 30 minutes plus the 10 minute
        buffer fit in the hour, so no two of them overlap."""
        k = self._slots
        self._slots += 1
        day = self.first_day + timedelta(days=k // SLOTS_PER_DAY)
        return datetime.combine(day, time(8 + k % SLOTS_PER_DAY), tzinfo=NAIROBI).astimezone(UTC)

    def past_slot(self) -> datetime:
        """A start that has already passed, different at each call."""
        self._past += 1
        return self.past_base + timedelta(hours=self._past)

    def window(self) -> tuple[datetime, datetime]:
        start = datetime.combine(self.first_day, time(0), tzinfo=NAIROBI)
        return start, start + timedelta(days=30)

    def _note_foreign(self, clinic: Tenant, object_id: UUID) -> UUID:
        if clinic is self.other:
            self.foreign.add(str(object_id))
        return object_id

    async def appointment(
        self, target: Target, status: str = "confirmed", starts_at: datetime | None = None
    ) -> UUID:
        """An appointment written straight to the database (no availability checks)."""
        clinic, doctor, patient = self.parties(target)
        start = starts_at or self.next_slot()
        appointment_id: UUID = await self.pool.fetchval(
            """
            INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at,
                                      ends_at, buffer_minutes, status)
            VALUES ($1, $2, $3, 'in_person', $4, $5, 10, $6) RETURNING id
            """,
            clinic.clinic_id,
            doctor.user_id,
            patient.user_id,
            start,
            start + timedelta(minutes=30),
            status,
        )
        return self._note_foreign(clinic, appointment_id)

    def _clinic_of(self, doctor: Account) -> Tenant:
        return self.other if doctor.clinic_id == self.other.clinic_id else self.own

    async def rule(self, doctor: Account) -> UUID:
        rule_id: UUID = await self.pool.fetchval(
            "INSERT INTO availability_rules (doctor_id, weekday, start_time, end_time) "
            "VALUES ($1, 6, '19:00', '20:00') RETURNING id",
            doctor.user_id,
        )
        return self._note_foreign(self._clinic_of(doctor), rule_id)

    async def leave(self, doctor: Account) -> UUID:
        start = self.next_slot()
        exception_id: UUID = await self.pool.fetchval(
            "INSERT INTO availability_exceptions (doctor_id, starts_at, ends_at, kind) "
            "VALUES ($1, $2, $3, 'unavailable') RETURNING id",
            doctor.user_id,
            start,
            start + timedelta(hours=1),
        )
        return self._note_foreign(self._clinic_of(doctor), exception_id)

    async def feed(self, doctor: Account) -> UUID:
        feed_id: UUID = await self.pool.fetchval(
            "INSERT INTO calendar_feeds (doctor_id, token_hash) VALUES ($1, $2) RETURNING id",
            doctor.user_id,
            secrets.token_bytes(32),
        )
        return self._note_foreign(self._clinic_of(doctor), feed_id)


async def open_calendar(pool: asyncpg.Pool, doctor: Account) -> None:
    """A profile (30 minute video or in-person visits, 10 minute buffer) and
    08:00-18:00 every day."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO doctor_profiles (user_id, clinic_id, consultation_minutes, "
            "buffer_minutes, currency, services) "
            "VALUES ($1, $2, 30, 10, 'KES', '{video,in_person}')",
            doctor.user_id,
            doctor.clinic_id,
        )
        await conn.execute(
            "INSERT INTO availability_rules (doctor_id, weekday, start_time, end_time) "
            "SELECT $1, weekday, '08:00', '18:00' FROM generate_series(0, 6) AS weekday",
            doctor.user_id,
        )


SW = TypeVar("SW", bound=SchedulingWorld)


async def scheduling_world(
    cls: type[SW],
    client: Client,
    pool: asyncpg.Pool,
    tenant: Tenant,
    other_tenant: Tenant,
    **fields: Any,
) -> SW:
    """A ``cls`` world (``fields`` are its own) with a colleague doctor in ``tenant``,
    bookings from a week ahead, and the three doctors' calendars open."""
    colleague = await make_user(pool, tenant.clinic_id, Role.DOCTOR, tag="colleague")
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    world = cls(
        client,
        pool,
        tenant,
        other_tenant,
        colleague=colleague,
        first_day=datetime.now(NAIROBI).date() + timedelta(days=8),
        past_base=now - timedelta(days=2),
        **fields,
    )
    for doctor in (tenant[Role.DOCTOR], colleague, other_tenant[Role.DOCTOR]):
        await open_calendar(pool, doctor)
    return world
