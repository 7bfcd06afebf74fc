"""Scheduling store on the real database: no double-booking, atomic moves, the outbox."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from uuid import UUID

import asyncpg
import pytest

from teleconsult.accounts import store as accounts
from teleconsult.core.db import create_pool
from teleconsult.core.identity import Role
from teleconsult.notifications import store as outbox_store
from teleconsult.scheduling import feed_store, store
from teleconsult.scheduling.records import (
    Appointment,
    AppointmentStatus,
    NewNotification,
    OutboxItem,
    ServiceKind,
)
from tests.world import make_user

MONDAY_9 = datetime(2031, 3, 3, 9, 0, tzinfo=UTC)
HALF_HOUR = timedelta(minutes=30)
BUFFER = timedelta(minutes=10)
# Outbox tests run their own clock far in the past: nothing another test
# enqueues for real times is due then, and what they leave is withdrawn.
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
LEASE = timedelta(minutes=5)

ACTIVE = ("requested", "confirmed", "in_progress")
OVERLAPS = """
SELECT a.id, b.id FROM appointments a
JOIN appointments b ON a.id < b.id AND (
    (a.doctor_id = b.doctor_id
     AND appointment_busy_range(a.starts_at, a.ends_at, a.buffer_minutes)
         && appointment_busy_range(b.starts_at, b.ends_at, b.buffer_minutes))
    OR (a.patient_id = b.patient_id
        AND tstzrange(a.starts_at, a.ends_at) && tstzrange(b.starts_at, b.ends_at)))
WHERE a.status = ANY($1::text[]) AND b.status = ANY($1::text[])
"""


@dataclass
class Practice:
    pool: asyncpg.Pool
    clinic_id: UUID
    doctor_id: UUID
    other_doctor_id: UUID
    patients: list[UUID] = field(default_factory=list)

    async def patient(self) -> UUID:
        account = await make_user(self.pool, self.clinic_id, Role.PATIENT, tag="sched")
        self.patients.append(account.user_id)
        return account.user_id

    async def book(
        self,
        patient_id: UUID,
        start: datetime = MONDAY_9,
        *,
        doctor_id: UUID | None = None,
        conn: store.Conn | None = None,
    ) -> Appointment:
        return await store.insert_appointment(
            conn or self.pool,
            clinic_id=self.clinic_id,
            doctor_id=doctor_id or self.doctor_id,
            patient_id=patient_id,
            service=ServiceKind.VIDEO,
            starts_at=start,
            ends_at=start + HALF_HOUR,
            created_by=patient_id,
        )


async def _doctor(pool: asyncpg.Pool, clinic_id: UUID) -> UUID:
    account = await make_user(pool, clinic_id, Role.DOCTOR, tag="sched")
    profile = await store.upsert_doctor_profile(
        pool,
        user_id=account.user_id,
        clinic_id=clinic_id,
        specialties=["general practice"],
        languages=["en", "sw"],
        consultation_minutes=30,
        buffer_minutes=10,
        fee_cents=150000,
        currency="KES",
        services=[ServiceKind.VIDEO, ServiceKind.AUDIO],
    )
    assert profile is not None
    return profile.user_id


@pytest.fixture
async def practice(pool: asyncpg.Pool) -> AsyncIterator[Practice]:
    clinic = await accounts.insert_clinic(
        pool, name=f"Scheduling {secrets.token_hex(3)}", timezone="Africa/Nairobi"
    )
    yield Practice(
        pool=pool,
        clinic_id=clinic.id,
        doctor_id=await _doctor(pool, clinic.id),
        other_doctor_id=await _doctor(pool, clinic.id),
    )
    # Leave no notification due at EPOCH for a later test's worker to send.
    await pool.execute(
        "UPDATE notification_outbox SET cancelled_at = now() "
        "WHERE sent_at IS NULL AND cancelled_at IS NULL AND appointment_id IN "
        "(SELECT id FROM appointments WHERE clinic_id = $1)",
        clinic.id,
    )


@pytest.fixture
async def appointment(practice: Practice) -> Appointment:
    return await practice.book(await practice.patient())


def reminder(appointment_id: UUID, due_at: datetime, kind: str = "reminder_1h") -> NewNotification:
    return NewNotification(
        kind=kind, appointment_id=appointment_id, due_at=due_at, payload={"v": 1}
    )


def own(items: list[OutboxItem], appointment_id: UUID) -> list[OutboxItem]:
    return [item for item in items if item.appointment_id == appointment_id]


# --- double-booking --------------------------------------------------------------------


async def test_fifty_concurrent_bookings_of_one_slot_admit_exactly_one(
    practice: Practice, database_url: str
) -> None:
    patients = [await practice.patient() for _ in range(50)]
    wide_pool = await create_pool(database_url, min_size=10, max_size=20)
    try:
        outcomes = await asyncio.gather(
            *(practice.book(patient, conn=wide_pool) for patient in patients),
            return_exceptions=True,
        )
    finally:
        await wide_pool.close()
    booked = [o for o in outcomes if isinstance(o, Appointment)]
    refused = [o for o in outcomes if isinstance(o, store.SlotTaken)]
    assert len(booked) == 1
    assert len(refused) == 49
    assert {error.which for error in refused} == {"doctor"}
    assert await practice.pool.fetch(OVERLAPS, list(ACTIVE)) == []


async def test_a_patient_cannot_hold_overlapping_appointments_with_two_doctors(
    practice: Practice,
) -> None:
    patient = await practice.patient()
    await practice.book(patient)
    with pytest.raises(store.SlotTaken) as caught:
        await practice.book(
            patient, MONDAY_9 + timedelta(minutes=15), doctor_id=practice.other_doctor_id
        )
    assert caught.value.which == "patient"


async def test_a_booking_starting_within_the_buffer_after_another_conflicts(
    practice: Practice, appointment: Appointment
) -> None:
    assert appointment.buffer_minutes == 10
    with pytest.raises(store.SlotTaken) as caught:
        await practice.book(await practice.patient(), appointment.ends_at + BUFFER / 2)
    assert caught.value.which == "doctor"


async def test_a_booking_starting_exactly_one_buffer_after_another_succeeds(
    practice: Practice, appointment: Appointment
) -> None:
    later = await practice.book(await practice.patient(), appointment.ends_at + BUFFER)
    assert later.starts_at == appointment.ends_at + BUFFER


async def test_a_booking_refused_inside_a_transaction_leaves_it_usable(
    practice: Practice, appointment: Appointment
) -> None:
    async with practice.pool.acquire() as conn, conn.transaction():
        with pytest.raises(store.SlotTaken):
            await practice.book(await practice.patient(), conn=conn)
        moved = await practice.book(
            await practice.patient(), MONDAY_9 + timedelta(hours=2), conn=conn
        )
    assert await store.get_appointment(practice.pool, moved.id) == moved


async def test_a_cancelled_appointment_frees_its_slot(
    practice: Practice, appointment: Appointment
) -> None:
    cancelled = await store.transition(
        practice.pool,
        appointment.id,
        [AppointmentStatus.REQUESTED],
        AppointmentStatus.CANCELLED,
        reason="patient asked",
    )
    assert cancelled is not None and cancelled.cancel_reason == "patient asked"
    again = await practice.book(await practice.patient())
    assert again.starts_at == appointment.starts_at


async def test_cancelling_without_a_reason_is_refused_by_the_table(
    practice: Practice, appointment: Appointment
) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="appointments_cancel_reason"):
        await store.transition(
            practice.pool,
            appointment.id,
            [AppointmentStatus.REQUESTED],
            AppointmentStatus.CANCELLED,
        )
    assert await store.get_appointment(practice.pool, appointment.id) == appointment


async def test_busy_ranges_include_appointments_whose_buffer_reaches_the_window(
    practice: Practice, appointment: Appointment
) -> None:
    window_start = appointment.ends_at + BUFFER / 2
    busy = await store.list_busy(
        practice.pool, practice.doctor_id, window_start, window_start + HALF_HOUR
    )
    assert busy == [(appointment.starts_at, appointment.ends_at, appointment.buffer_minutes)]


# --- reschedule and transitions --------------------------------------------------------


async def test_rescheduling_into_a_taken_slot_raises_and_keeps_the_original(
    practice: Practice, appointment: Appointment
) -> None:
    taken = await practice.book(await practice.patient(), MONDAY_9 + timedelta(hours=1))
    with pytest.raises(store.SlotTaken):
        await store.reschedule(
            practice.pool, appointment.id, taken.starts_at, taken.ends_at, appointment.version
        )
    assert await store.get_appointment(practice.pool, appointment.id) == appointment


async def test_rescheduling_into_a_free_slot_moves_it_in_one_step(
    practice: Practice, appointment: Appointment
) -> None:
    # Overlaps its own old time: only other appointments may block a move.
    new_start = appointment.starts_at + timedelta(minutes=15)
    moved = await store.reschedule(
        practice.pool, appointment.id, new_start, new_start + HALF_HOUR, appointment.version
    )
    assert moved is not None
    assert (moved.starts_at, moved.version) == (new_start, appointment.version + 1)
    assert await store.get_appointment(practice.pool, appointment.id) == moved


async def test_rescheduling_with_a_stale_version_changes_nothing(
    practice: Practice, appointment: Appointment
) -> None:
    new_start = appointment.starts_at + timedelta(hours=3)
    moved = await store.reschedule(
        practice.pool, appointment.id, new_start, new_start + HALF_HOUR, appointment.version - 1
    )
    assert moved is None
    assert await store.get_appointment(practice.pool, appointment.id) == appointment


async def test_a_transition_from_a_state_not_allowed_changes_nothing(
    practice: Practice, appointment: Appointment
) -> None:
    started = await store.transition(
        practice.pool,
        appointment.id,
        [AppointmentStatus.CONFIRMED],
        AppointmentStatus.IN_PROGRESS,
    )
    assert started is None
    assert await store.get_appointment(practice.pool, appointment.id) == appointment


async def test_a_transition_from_an_allowed_state_bumps_the_version(
    practice: Practice, appointment: Appointment
) -> None:
    confirmed = await store.transition(
        practice.pool,
        appointment.id,
        [AppointmentStatus.REQUESTED],
        AppointmentStatus.CONFIRMED,
        expected_version=appointment.version,
    )
    assert confirmed is not None
    assert (confirmed.status, confirmed.version) == ("confirmed", appointment.version + 1)


async def test_a_check_in_is_stamped_once(practice: Practice, appointment: Appointment) -> None:
    arrived = await store.check_in(practice.pool, appointment.id)
    assert arrived is not None and arrived.checked_in_at is not None
    assert await store.check_in(practice.pool, appointment.id) is None


async def test_an_agenda_pages_through_a_doctors_appointments_in_time_order(
    practice: Practice,
) -> None:
    starts = [MONDAY_9 + timedelta(hours=h) for h in (2, 0, 1)]
    for start in starts:
        await practice.book(await practice.patient(), start)
    end = MONDAY_9 + timedelta(days=1)
    first = await store.list_appointments(
        practice.pool, start=MONDAY_9, end=end, doctor_id=practice.doctor_id, limit=2
    )
    rest = await store.list_appointments(
        practice.pool,
        start=MONDAY_9,
        end=end,
        doctor_id=practice.doctor_id,
        after=(first[-1].starts_at, first[-1].id),
    )
    assert [a.starts_at for a in first + rest] == sorted(starts)


# --- consultations and feeds -----------------------------------------------------------


async def test_a_consultation_is_found_by_its_opaque_room_id(
    practice: Practice, appointment: Appointment
) -> None:
    created = await store.insert_consultation(
        practice.pool,
        appointment_id=appointment.id,
        join_opens_at=appointment.starts_at - timedelta(minutes=15),
        join_closes_at=appointment.ends_at + HALF_HOUR,
    )
    assert str(appointment.id) not in created.room_id
    assert await store.get_consultation_by_room(practice.pool, created.room_id) == created


async def test_a_revoked_calendar_feed_is_no_longer_found(practice: Practice) -> None:
    token_hash = hashlib.sha256(secrets.token_bytes(32)).digest()
    feed = await feed_store.create_calendar_feed(
        practice.pool, doctor_id=practice.doctor_id, token_hash=token_hash
    )
    assert await feed_store.find_calendar_feed(practice.pool, token_hash) == feed
    assert await feed_store.revoke_calendar_feed(
        practice.pool, doctor_id=practice.doctor_id, feed_id=feed.id
    )
    assert await feed_store.find_calendar_feed(practice.pool, token_hash) is None


# --- notification outbox ---------------------------------------------------------------


async def test_enqueueing_the_same_notification_twice_keeps_one_row(
    practice: Practice, appointment: Appointment
) -> None:
    assert await outbox_store.enqueue(practice.pool, [reminder(appointment.id, EPOCH)]) == 1
    assert await outbox_store.enqueue(practice.pool, [reminder(appointment.id, EPOCH)]) == 0
    assert len(await outbox_store.list_outbox(practice.pool, appointment.id)) == 1


async def test_concurrent_claimers_never_get_the_same_item(
    practice: Practice, appointment: Appointment
) -> None:
    due = [reminder(appointment.id, EPOCH + timedelta(seconds=i)) for i in range(40)]
    assert await outbox_store.enqueue(practice.pool, due) == 40

    async def drain(worker_id: str) -> list[int]:
        claimed: list[int] = []
        while batch := await outbox_store.claim_due(
            practice.pool, now=EPOCH + LEASE, lease=LEASE, limit=3, worker_id=worker_id
        ):
            claimed += [item.id for item in own(batch, appointment.id)]
        return claimed

    per_worker = await asyncio.gather(*(drain(f"worker-{n}") for n in range(4)))
    every_claim = [item_id for claimed in per_worker for item_id in claimed]
    assert len(every_claim) == len(set(every_claim)) == 40


async def test_an_item_is_not_claimed_again_while_its_lease_runs(
    practice: Practice, appointment: Appointment
) -> None:
    await outbox_store.enqueue(practice.pool, [reminder(appointment.id, EPOCH)])
    first = await outbox_store.claim_due(
        practice.pool, now=EPOCH, lease=LEASE, limit=50, worker_id="a"
    )
    assert len(own(first, appointment.id)) == 1
    again = await outbox_store.claim_due(
        practice.pool, now=EPOCH + LEASE / 2, lease=LEASE, limit=50, worker_id="b"
    )
    assert own(again, appointment.id) == []


async def test_an_item_whose_worker_died_is_claimed_again_after_its_lease(
    practice: Practice, appointment: Appointment
) -> None:
    await outbox_store.enqueue(practice.pool, [reminder(appointment.id, EPOCH)])
    await outbox_store.claim_due(practice.pool, now=EPOCH, lease=LEASE, limit=50, worker_id="dies")
    later = EPOCH + LEASE + timedelta(seconds=1)
    retaken = own(
        await outbox_store.claim_due(
            practice.pool, now=later, lease=LEASE, limit=50, worker_id="b"
        ),
        appointment.id,
    )
    assert [(item.claimed_by, item.attempts) for item in retaken] == [("b", 2)]


async def test_mark_sent_by_a_worker_whose_lease_was_taken_over_does_nothing(
    practice: Practice, appointment: Appointment
) -> None:
    await outbox_store.enqueue(practice.pool, [reminder(appointment.id, EPOCH)])
    await outbox_store.claim_due(practice.pool, now=EPOCH, lease=LEASE, limit=50, worker_id="slow")
    later = EPOCH + LEASE + timedelta(seconds=1)
    await outbox_store.claim_due(practice.pool, now=later, lease=LEASE, limit=50, worker_id="b")
    [item] = await outbox_store.list_outbox(practice.pool, appointment.id)
    assert not await outbox_store.mark_sent(practice.pool, item.id, "slow")
    [unchanged] = await outbox_store.list_outbox(practice.pool, appointment.id)
    assert (unchanged.sent_at, unchanged.claimed_by) == (None, "b")


async def test_a_withdrawn_notification_is_not_claimed(
    practice: Practice, appointment: Appointment
) -> None:
    await outbox_store.enqueue(practice.pool, [reminder(appointment.id, EPOCH)])
    assert await outbox_store.cancel_pending(practice.pool, appointment.id) == 1
    claimed = await outbox_store.claim_due(
        practice.pool, now=EPOCH, lease=LEASE, limit=50, worker_id="a"
    )
    assert own(claimed, appointment.id) == []


async def test_simultaneous_bookings_of_one_slot_never_fail_with_a_deadlock(
    practice: Practice, database_url: str
) -> None:
    # Conflicting inserts that run the exclusion check at the same moment can
    # wait on each other; PostgreSQL then aborts one as a deadlock after
    # deadlock_timeout. A short timeout makes that show within a few rounds.
    if not await practice.pool.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = user"):
        pytest.skip("setting deadlock_timeout needs a superuser")
    patients = [await practice.patient() for _ in range(16)]
    fast_pool = await asyncpg.create_pool(
        database_url, min_size=16, max_size=16, server_settings={"deadlock_timeout": "10ms"}
    )
    try:
        for hour in range(25):
            start = MONDAY_9 + timedelta(days=1, hours=hour)
            outcomes = await asyncio.gather(
                *(practice.book(patient, start, conn=fast_pool) for patient in patients),
                return_exceptions=True,
            )
            kinds = sorted(type(outcome).__name__ for outcome in outcomes)
            assert kinds == ["Appointment"] + ["SlotTaken"] * 15
    finally:
        await fast_pool.close()


async def test_a_failed_item_waits_for_its_retry_time(
    practice: Practice, appointment: Appointment
) -> None:
    await outbox_store.enqueue(practice.pool, [reminder(appointment.id, EPOCH)])
    [item] = own(
        await outbox_store.claim_due(
            practice.pool, now=EPOCH, lease=LEASE, limit=50, worker_id="a"
        ),
        appointment.id,
    )
    retry_at = EPOCH + timedelta(minutes=1)
    assert await outbox_store.mark_failed(
        practice.pool, item.id, "a", error="provider timeout", retry_at=retry_at
    )
    early = await outbox_store.claim_due(
        practice.pool, now=retry_at - timedelta(seconds=1), lease=LEASE, limit=50, worker_id="b"
    )
    assert own(early, appointment.id) == []
    due = await outbox_store.claim_due(
        practice.pool, now=retry_at, lease=LEASE, limit=50, worker_id="b"
    )
    assert [i.last_error for i in own(due, appointment.id)] == ["provider timeout"]


async def test_a_user_who_is_not_a_doctor_gets_no_profile(practice: Practice) -> None:
    patient = await practice.patient()
    profile = await store.upsert_doctor_profile(
        practice.pool,
        user_id=patient,
        clinic_id=practice.clinic_id,
        specialties=[],
        languages=["en"],
        consultation_minutes=30,
        buffer_minutes=0,
        fee_cents=0,
        currency="KES",
        services=[ServiceKind.CHAT],
    )
    assert profile is None


async def test_a_doctor_can_delete_only_their_own_availability_rules(
    practice: Practice,
) -> None:
    rule = await store.add_availability_rule(
        practice.pool,
        doctor_id=practice.doctor_id,
        weekday=0,
        start_time=time(9),
        end_time=time(17),
    )
    assert not await store.delete_availability_rule(
        practice.pool, doctor_id=practice.other_doctor_id, rule_id=rule.id
    )
    assert await store.list_availability_rules(practice.pool, practice.doctor_id) == [rule]


async def test_opening_a_consultation_stamps_its_start_once(
    practice: Practice, appointment: Appointment
) -> None:
    created = await store.insert_consultation(
        practice.pool,
        appointment_id=appointment.id,
        join_opens_at=appointment.starts_at - timedelta(minutes=15),
        join_closes_at=appointment.ends_at + HALF_HOUR,
    )
    opened = await store.set_consultation_status(practice.pool, created.id, ["scheduled"], "open")
    assert opened is not None and opened.started_at is not None
    assert (
        await store.set_consultation_status(practice.pool, created.id, ["scheduled"], "open")
        is None
    )
