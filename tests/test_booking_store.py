"""The booking's two statements on the real database: the read, and the all-or-nothing write."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from uuid import UUID, uuid4

import asyncpg
import pytest

from teleconsult.accounts import store as accounts
from teleconsult.audit import AuditEvent
from teleconsult.core.identity import Principal, Role
from teleconsult.notifications import store as outbox_store
from teleconsult.scheduling import booking_store, store
from teleconsult.scheduling.booking_store import Room
from teleconsult.scheduling.overlap import SlotTaken
from teleconsult.scheduling.records import (
    Appointment,
    AppointmentStatus,
    Consultation,
    NewNotification,
    ServiceKind,
)
from tests.world import make_user

MONDAY_9 = datetime(2031, 3, 3, 9, 0, tzinfo=UTC)  # far ahead: no worker finds it due
HALF_HOUR = timedelta(minutes=30)


@dataclass
class Practice:
    pool: asyncpg.Pool
    clinic_id: UUID
    doctor_id: UUID

    async def patient(self) -> UUID:
        return (await make_user(self.pool, self.clinic_id, Role.PATIENT, tag="booking")).user_id

    async def book(
        self,
        patient_id: UUID,
        start: datetime = MONDAY_9,
        *,
        conn: booking_store.Conn | None = None,
        doctor_id: UUID | None = None,
        appointment_id: UUID | None = None,
    ) -> tuple[Appointment, Consultation | None]:
        appointment_id = appointment_id or uuid4()
        principal = Principal(
            user_id=patient_id, clinic_id=self.clinic_id, role=Role.PATIENT, session_id=uuid4()
        )
        return await booking_store.insert_booking(
            conn or self.pool,
            appointment_id=appointment_id,
            clinic_id=self.clinic_id,
            doctor_id=doctor_id or self.doctor_id,
            patient_id=patient_id,
            service=ServiceKind.VIDEO,
            starts_at=start,
            ends_at=start + HALF_HOUR,
            status=AppointmentStatus.REQUESTED,
            created_by=patient_id,
            room=Room(store.new_room_id(), start - HALF_HOUR, start + 2 * HALF_HOUR),
            notifications=[
                NewNotification("appointment_booked", appointment_id, start, {"change": "booked"}),
                NewNotification("reminder_60m", appointment_id, start - 2 * HALF_HOUR, {}),
            ],
            event=AuditEvent.by(
                principal,
                "appointment.create",
                "appointment",
                appointment_id,
                detail={"patient_id": str(patient_id), "status": "requested"},
            ),
        )

    async def left_behind(self, appointment_id: UUID) -> tuple[int, int, int, int]:
        """Rows of (appointments, consultations, outbox, audit events) of this id."""
        row = await self.pool.fetchrow(
            """
            SELECT (SELECT count(*) FROM appointments WHERE id = $1),
                   (SELECT count(*) FROM consultations WHERE appointment_id = $1),
                   (SELECT count(*) FROM notification_outbox WHERE appointment_id = $1),
                   (SELECT count(*) FROM audit_intake WHERE object_id = $1::text)
                   + (SELECT count(*) FROM audit_log WHERE object_id = $1::text)
            """,
            appointment_id,
        )
        assert row is not None
        return (row[0], row[1], row[2], row[3])


@pytest.fixture
async def practice(pool: asyncpg.Pool) -> AsyncIterator[Practice]:
    clinic = await accounts.insert_clinic(
        pool, name=f"Booking {secrets.token_hex(3)}", timezone="Africa/Nairobi"
    )
    doctor = await make_user(pool, clinic.id, Role.DOCTOR, tag="booking")
    profile = await store.upsert_doctor_profile(
        pool,
        user_id=doctor.user_id,
        clinic_id=clinic.id,
        specialties=["general practice"],
        languages=["en"],
        consultation_minutes=30,
        buffer_minutes=10,
        fee_cents=0,
        currency="KES",
        services=[ServiceKind.VIDEO],
    )
    assert profile is not None
    yield Practice(pool=pool, clinic_id=clinic.id, doctor_id=doctor.user_id)
    await pool.execute(
        "UPDATE notification_outbox SET cancelled_at = now() "
        "WHERE sent_at IS NULL AND cancelled_at IS NULL AND appointment_id IN "
        "(SELECT id FROM appointments WHERE clinic_id = $1)",
        clinic.id,
    )


async def test_a_booking_writes_appointment_room_notifications_and_audit_event_at_once(
    practice: Practice,
) -> None:
    patient = await practice.patient()
    appointment_id = uuid4()
    appointment, consultation = await practice.book(patient, appointment_id=appointment_id)
    assert appointment.id == appointment_id
    assert appointment.buffer_minutes == 10  # copied from the profile
    assert (appointment.status, appointment.version) == (AppointmentStatus.REQUESTED, 1)
    assert consultation is not None
    assert consultation.appointment_id == appointment_id
    assert consultation.status == "scheduled"
    assert await practice.left_behind(appointment_id) == (1, 1, 2, 1)
    outbox = await outbox_store.list_outbox(practice.pool, appointment_id)
    assert [(o.kind, o.due_at, o.payload) for o in outbox] == [
        ("appointment_booked", MONDAY_9, {"change": "booked"}),
        ("reminder_60m", MONDAY_9 - 2 * HALF_HOUR, {}),
    ]


async def test_a_taken_slot_writes_nothing_and_names_whom(practice: Practice) -> None:
    first, second = await practice.patient(), await practice.patient()
    await practice.book(first)
    refused = uuid4()
    with pytest.raises(SlotTaken) as caught:
        await practice.book(second, MONDAY_9 + HALF_HOUR, appointment_id=refused)
    assert caught.value.which == "doctor"  # the buffer keeps the doctor busy until 09:40
    assert await practice.left_behind(refused) == (0, 0, 0, 0)
    with pytest.raises(SlotTaken) as caught:
        await practice.book(
            first,
            MONDAY_9 + timedelta(minutes=15),
            doctor_id=await _other(practice),
            appointment_id=refused,
        )
    assert caught.value.which == "patient"
    assert await practice.left_behind(refused) == (0, 0, 0, 0)


async def _other(practice: Practice) -> UUID:
    doctor = await make_user(practice.pool, practice.clinic_id, Role.DOCTOR, tag="booking")
    await store.upsert_doctor_profile(
        practice.pool,
        user_id=doctor.user_id,
        clinic_id=practice.clinic_id,
        specialties=[],
        languages=[],
        consultation_minutes=30,
        buffer_minutes=0,
        fee_cents=0,
        currency="KES",
        services=[ServiceKind.VIDEO],
    )
    return doctor.user_id


async def test_a_doctor_without_a_profile_in_the_clinic_writes_nothing(
    practice: Practice,
) -> None:
    nobody = (await make_user(practice.pool, practice.clinic_id, Role.NURSE)).user_id
    refused = uuid4()
    with pytest.raises(store.NoDoctorProfile):
        await practice.book(await practice.patient(), doctor_id=nobody, appointment_id=refused)
    assert await practice.left_behind(refused) == (0, 0, 0, 0)


async def test_the_write_refuses_to_run_inside_a_transaction(practice: Practice) -> None:
    patient = await practice.patient()
    async with practice.pool.acquire() as conn, conn.transaction():
        with pytest.raises(RuntimeError):
            await practice.book(patient, conn=conn)


async def test_simultaneous_bookings_of_one_slot_never_deadlock(
    practice: Practice, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Without the locks, conflicting inserts running the exclusion check at the
    # same moment wait on each other and one is aborted as a deadlock after
    # deadlock_timeout; a short timeout makes that show within a few rounds.
    if not await practice.pool.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = user"):
        pytest.skip("setting deadlock_timeout needs a superuser")
    patients = [await practice.patient() for _ in range(16)]
    fast_pool = await asyncpg.create_pool(
        database_url, min_size=16, max_size=16, server_settings={"deadlock_timeout": "10ms"}
    )
    try:
        with caplog.at_level(logging.WARNING, logger="teleconsult.scheduling.overlap"):
            for hour in range(20):
                start = MONDAY_9 + timedelta(days=1, hours=hour)
                outcomes = await asyncio.gather(
                    *(practice.book(patient, start, conn=fast_pool) for patient in patients),
                    return_exceptions=True,
                )
                kinds = sorted(type(outcome).__name__ for outcome in outcomes)
                assert kinds == ["SlotTaken"] * 15 + ["tuple"]
    finally:
        await fast_pool.close()
    assert not [r for r in caplog.records if "deadlocked" in r.getMessage()]


async def test_the_read_has_the_doctor_the_calendar_around_the_time_and_the_patient(
    practice: Practice,
) -> None:
    patient = await practice.patient()
    pool, doctor = practice.pool, practice.doctor_id
    for weekday in range(7):
        await store.add_availability_rule(
            pool, doctor_id=doctor, weekday=weekday, start_time=time(8), end_time=time(18)
        )
    await store.add_availability_rule(
        pool, doctor_id=doctor, weekday=0, start_time=time(12), end_time=time(13), kind="break"
    )
    # Two days before, the day before, the day itself, a day after the end, further on.
    for days in (-2, -1, 0, 1, 3):
        at = MONDAY_9 + timedelta(days=days)
        await store.add_availability_exception(
            pool, doctor_id=doctor, starts_at=at, ends_at=at + HALF_HOUR, kind="unavailable"
        )
    found = await booking_store.booking_context(
        pool, doctor_id=doctor, patient_id=patient, starts_at=MONDAY_9
    )
    assert found.doctor == await store.get_doctor_profile(pool, doctor)
    assert found.timezone == "Africa/Nairobi"
    stored = await store.list_availability_rules(pool, doctor)
    assert sorted(found.rules) == sorted(
        (r.weekday, r.start_time, r.end_time, r.valid_from, r.valid_until, r.kind) for r in stored
    )
    assert ("break", time(12)) in {(r.kind, r.start_time) for r in found.rules}
    margin = timedelta(days=1)
    dated = await store.list_availability_exceptions(
        pool, doctor, MONDAY_9 - margin, MONDAY_9 + HALF_HOUR + margin
    )
    assert sorted(found.exceptions) == [(x.starts_at, x.ends_at, x.kind) for x in dated]
    assert [x.starts_at for x in sorted(found.exceptions)] == [
        MONDAY_9 + timedelta(days=d) for d in (-1, 0, 1)
    ]
    assert (found.patient_clinic_id, found.patient_role) == (practice.clinic_id, Role.PATIENT)

    unknown = await booking_store.booking_context(
        pool, doctor_id=uuid4(), patient_id=None, starts_at=MONDAY_9
    )
    assert (unknown.doctor, unknown.timezone, unknown.rules, unknown.exceptions) == (
        None,
        None,
        [],
        [],
    )
    assert (unknown.patient_clinic_id, unknown.patient_role) == (None, None)
