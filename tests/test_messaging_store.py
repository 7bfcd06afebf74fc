"""Messaging store on the real database: gapless order, deduplication, resume, receipts."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import pytest
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from teleconsult.accounts import store as accounts
from teleconsult.core.db import create_pool
from teleconsult.core.identity import Role
from teleconsult.messaging import message_store, store
from teleconsult.messaging.records import (
    AppendResult,
    AppointmentHasThread,
    ConflictingDuplicate,
    Device,
    DeviceKeyInUse,
    DeviceNotUsable,
    InvalidMembers,
    NotAMember,
    NotInClinic,
    Thread,
    ThreadKind,
)
from teleconsult.scheduling import store as scheduling
from teleconsult.scheduling.records import ServiceKind
from tests.world import make_user


def public_keys() -> tuple[bytes, bytes]:
    """A device's (X25519, Ed25519) public keys; the private halves stay here."""
    return (
        bytes(PrivateKey.generate().public_key),
        bytes(SigningKey.generate().verify_key),
    )


async def new_device(pool: asyncpg.Pool, user_id: UUID) -> Device:
    x25519, ed25519 = public_keys()
    return await store.register_device(
        pool, user_id=user_id, x25519_public=x25519, ed25519_public=ed25519, label="phone"
    )


def client_id() -> str:
    return secrets.token_urlsafe(12)


@dataclass
class Ward:
    """A clinic with a doctor, a patient and a nurse, each with a device, and a
    direct thread between the doctor and the patient."""

    pool: asyncpg.Pool
    clinic_id: UUID
    doctor: UUID
    patient: UUID
    nurse: UUID
    devices: dict[UUID, Device]
    thread: Thread

    async def send(
        self,
        client_msg_id: str | None = None,
        envelope: bytes = b"\x00ciphertext\xff",
        *,
        sender: UUID | None = None,
        conn: store.Conn | None = None,
    ) -> AppendResult:
        user = sender or self.doctor
        return await message_store.append_message(
            conn or self.pool,
            thread_id=self.thread.id,
            client_msg_id=client_msg_id or client_id(),
            sender_user_id=user,
            sender_device_id=self.devices[user].id,
            envelope=envelope,
        )

    async def last_seq(self) -> int:
        thread = await store.get_thread(self.pool, self.thread.id)
        assert thread is not None
        return thread.last_seq

    async def stored_seqs(self) -> list[int]:
        rows = await self.pool.fetch(
            "SELECT seq FROM messages WHERE thread_id = $1 ORDER BY seq", self.thread.id
        )
        return [row["seq"] for row in rows]


async def make_ward(pool: asyncpg.Pool) -> Ward:
    clinic = await accounts.insert_clinic(
        pool, name=f"Messaging {secrets.token_hex(3)}", timezone="Africa/Nairobi"
    )
    people = [
        (await make_user(pool, clinic.id, role, tag="msg")).user_id
        for role in (Role.DOCTOR, Role.PATIENT, Role.NURSE)
    ]
    devices = {user_id: await new_device(pool, user_id) for user_id in people}
    doctor, patient, nurse = people
    thread = await store.create_thread(
        pool,
        clinic_id=clinic.id,
        kind=ThreadKind.DIRECT,
        created_by=doctor,
        members=[(doctor, "doctor"), (patient, "patient")],
    )
    return Ward(pool, clinic.id, doctor, patient, nurse, devices, thread)


@pytest.fixture
async def ward(pool: asyncpg.Pool) -> Ward:
    return await make_ward(pool)


@pytest.fixture
async def wide_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Enough connections for every concurrent sender to hold one."""
    db_pool = await create_pool(database_url, min_size=20, max_size=20)
    yield db_pool
    await db_pool.close()


async def care_team(ward: Ward) -> Thread:
    return await store.create_thread(
        ward.pool,
        clinic_id=ward.clinic_id,
        kind=ThreadKind.CARE_TEAM,
        created_by=ward.doctor,
        members=[(ward.doctor, "lead"), (ward.nurse, "member")],
    )


# --- order and deduplication ------------------------------------------------------------


async def test_two_hundred_concurrent_appends_are_numbered_one_to_two_hundred_without_gaps(
    ward: Ward, wide_pool: asyncpg.Pool
) -> None:
    async def sender(task: int) -> list[int]:
        user = ward.doctor if task % 2 else ward.patient
        return [(await ward.send(sender=user, conn=wide_pool)).seq for _ in range(10)]

    per_task = await asyncio.gather(*(sender(task) for task in range(20)))

    every_seq = [seq for seqs in per_task for seq in seqs]
    assert sorted(every_seq) == list(range(1, 201))
    assert all(seqs == sorted(seqs) for seqs in per_task)
    assert await ward.stored_seqs() == list(range(1, 201))
    assert await ward.last_seq() == 200


async def test_one_client_message_id_sent_ten_times_at_once_is_stored_once(
    ward: Ward, wide_pool: asyncpg.Pool
) -> None:
    await ward.send()
    same = client_id()

    results = await asyncio.gather(*(ward.send(same, conn=wide_pool) for _ in range(10)))

    assert {result.seq for result in results} == {2}
    assert sorted(result.duplicate for result in results) == [False] + [True] * 9
    assert await ward.stored_seqs() == [1, 2]
    assert await ward.last_seq() == 2
    assert (await ward.send()).seq == 3


async def test_a_resend_returns_the_original_seq_and_time(ward: Ward) -> None:
    first = await ward.send("resent")
    await ward.send()

    again = await ward.send("resent")

    assert again == AppendResult(seq=first.seq, duplicate=True, created_at=first.created_at)
    assert await ward.last_seq() == 2


async def test_a_client_message_id_replayed_with_other_bytes_is_refused(ward: Ward) -> None:
    await ward.send("replayed", b"original")

    with pytest.raises(ConflictingDuplicate) as caught:
        await ward.send("replayed", b"tampered")

    assert caught.value.seq == 1
    page, _ = await message_store.messages_after(ward.pool, ward.thread.id, 0, 10)
    assert [message.envelope for message in page] == [b"original"]
    assert await ward.last_seq() == 1


async def test_a_client_message_id_replayed_by_another_sender_is_refused(ward: Ward) -> None:
    await ward.send("taken", sender=ward.doctor)

    with pytest.raises(ConflictingDuplicate):
        await ward.send("taken", sender=ward.patient)

    assert await ward.stored_seqs() == [1]


async def test_a_sender_who_left_still_gets_their_stored_message_acknowledged(
    ward: Ward,
) -> None:
    first = await ward.send("before-leaving", sender=ward.patient)
    assert await store.remove_member(ward.pool, ward.thread.id, ward.patient)

    again = await ward.send("before-leaving", sender=ward.patient)

    assert (again.seq, again.duplicate) == (first.seq, True)


async def test_a_duplicate_inside_a_callers_transaction_leaves_it_usable(ward: Ward) -> None:
    await ward.send("once")
    async with ward.pool.acquire() as conn, conn.transaction():
        assert (await ward.send("once", conn=conn)).duplicate
        assert (await ward.send("next", conn=conn)).seq == 2
    assert await ward.stored_seqs() == [1, 2]


async def test_envelopes_come_back_byte_for_byte(ward: Ward) -> None:
    envelope = bytes(range(256)) * 4
    await ward.send("opaque", envelope)

    page, _ = await message_store.messages_after(ward.pool, ward.thread.id, 0, 1)

    assert page[0].envelope == envelope
    assert page[0].client_msg_id == "opaque"
    assert page[0].sender_device_id == ward.devices[ward.doctor].id


# --- who may send -----------------------------------------------------------------------


async def test_a_user_outside_the_thread_cannot_send(ward: Ward) -> None:
    with pytest.raises(NotAMember):
        await ward.send(sender=ward.nurse)
    assert await ward.last_seq() == 0


async def test_a_revoked_device_cannot_send(ward: Ward) -> None:
    device = ward.devices[ward.doctor]
    assert await store.revoke_device(ward.pool, ward.doctor, device.id)

    with pytest.raises(DeviceNotUsable):
        await ward.send()
    assert await ward.last_seq() == 0


async def test_a_member_cannot_send_from_another_users_device(ward: Ward) -> None:
    with pytest.raises(DeviceNotUsable):
        await message_store.append_message(
            ward.pool,
            thread_id=ward.thread.id,
            client_msg_id=client_id(),
            sender_user_id=ward.patient,
            sender_device_id=ward.devices[ward.doctor].id,
            envelope=b"x",
        )


# --- resume -----------------------------------------------------------------------------


async def test_a_page_short_of_the_newest_message_is_not_complete(ward: Ward) -> None:
    for _ in range(5):
        await ward.send()

    page, complete = await message_store.messages_after(ward.pool, ward.thread.id, 0, 4)

    assert [message.seq for message in page] == [1, 2, 3, 4]
    assert not complete


async def test_a_page_ending_exactly_at_the_newest_message_is_complete(ward: Ward) -> None:
    for _ in range(5):
        await ward.send()

    page, complete = await message_store.messages_after(ward.pool, ward.thread.id, 2, 3)

    assert [message.seq for message in page] == [3, 4, 5]
    assert complete


async def test_after_the_last_seq_the_page_is_empty_and_complete(ward: Ward) -> None:
    for _ in range(3):
        await ward.send()

    assert await message_store.messages_after(ward.pool, ward.thread.id, 3, 10) == ([], True)


# --- receipts ---------------------------------------------------------------------------


async def test_a_lower_receipt_does_not_lower_the_markers(ward: Ward) -> None:
    for _ in range(5):
        await ward.send()
    await store.update_receipt(
        ward.pool, thread_id=ward.thread.id, user_id=ward.patient, delivered_seq=4, read_seq=3
    )

    receipt = await store.update_receipt(
        ward.pool, thread_id=ward.thread.id, user_id=ward.patient, delivered_seq=2, read_seq=1
    )

    assert (receipt.delivered_seq, receipt.read_seq) == (4, 3)


async def test_reading_raises_delivered(ward: Ward) -> None:
    for _ in range(5):
        await ward.send()
    await store.update_receipt(
        ward.pool, thread_id=ward.thread.id, user_id=ward.patient, delivered_seq=2
    )

    receipt = await store.update_receipt(
        ward.pool, thread_id=ward.thread.id, user_id=ward.patient, read_seq=4
    )

    assert (receipt.delivered_seq, receipt.read_seq) == (4, 4)


async def test_receipts_stop_at_the_last_seq(ward: Ward) -> None:
    for _ in range(3):
        await ward.send()

    receipt = await store.update_receipt(
        ward.pool, thread_id=ward.thread.id, user_id=ward.patient, delivered_seq=99, read_seq=50
    )

    assert (receipt.delivered_seq, receipt.read_seq) == (3, 3)


async def test_a_non_member_has_no_receipt(ward: Ward) -> None:
    with pytest.raises(NotAMember):
        await store.update_receipt(
            ward.pool, thread_id=ward.thread.id, user_id=ward.nurse, read_seq=0
        )


# --- threads and members ----------------------------------------------------------------


async def test_the_database_refuses_a_member_from_another_clinic(ward: Ward) -> None:
    stranger = await make_ward(ward.pool)

    with pytest.raises(asyncpg.ForeignKeyViolationError, match="thread_members_user_clinic"):
        await ward.pool.execute(
            "INSERT INTO thread_members (thread_id, clinic_id, user_id, role) "
            "VALUES ($1, $2, $3, 'member')",
            ward.thread.id,
            ward.clinic_id,
            stranger.patient,
        )


async def test_a_thread_with_a_member_from_another_clinic_is_not_created(ward: Ward) -> None:
    stranger = await make_ward(ward.pool)

    with pytest.raises(NotInClinic):
        await store.create_thread(
            ward.pool,
            clinic_id=ward.clinic_id,
            kind=ThreadKind.CARE_TEAM,
            created_by=ward.doctor,
            members=[(ward.doctor, "lead"), (stranger.nurse, "member")],
        )
    assert await store.threads_for_user(ward.pool, stranger.nurse) == []


async def test_a_member_from_another_clinic_cannot_be_added(ward: Ward) -> None:
    stranger = await make_ward(ward.pool)
    team = await care_team(ward)

    with pytest.raises(NotInClinic):
        await store.add_member(ward.pool, thread_id=team.id, user_id=stranger.nurse, role="member")


async def test_a_direct_thread_has_exactly_two_members(ward: Ward) -> None:
    with pytest.raises(InvalidMembers):
        await store.create_thread(
            ward.pool,
            clinic_id=ward.clinic_id,
            kind=ThreadKind.DIRECT,
            created_by=ward.doctor,
            members=[(ward.doctor, "doctor"), (ward.patient, "patient"), (ward.nurse, "nurse")],
        )


async def test_a_member_who_left_is_no_longer_a_member(ward: Ward) -> None:
    assert await store.is_member(ward.pool, ward.thread.id, ward.patient)

    assert await store.remove_member(ward.pool, ward.thread.id, ward.patient)

    assert not await store.is_member(ward.pool, ward.thread.id, ward.patient)
    members = await store.list_members(ward.pool, ward.thread.id)
    assert [member.user_id for member in members] == [ward.doctor]


async def test_a_member_who_left_can_rejoin_a_care_team(ward: Ward) -> None:
    team = await care_team(ward)
    await store.remove_member(ward.pool, team.id, ward.nurse)

    await store.add_member(ward.pool, thread_id=team.id, user_id=ward.nurse, role="member")

    assert await store.is_member(ward.pool, team.id, ward.nurse)


async def test_threads_for_a_user_carry_their_last_seq(ward: Ward) -> None:
    team = await care_team(ward)
    for _ in range(2):
        await ward.send()

    threads = await store.threads_for_user(ward.pool, ward.doctor)

    assert {(thread.id, thread.last_seq) for thread in threads} == {
        (ward.thread.id, 2),
        (team.id, 0),
    }


async def test_an_appointment_has_one_thread(ward: Ward) -> None:
    await scheduling.upsert_doctor_profile(
        ward.pool,
        user_id=ward.doctor,
        clinic_id=ward.clinic_id,
        specialties=[],
        languages=["en"],
        consultation_minutes=30,
        buffer_minutes=0,
        fee_cents=0,
        currency="KES",
        services=[ServiceKind.CHAT],
    )
    starts_at = datetime(2032, 5, 3, 9, 0, tzinfo=UTC)
    appointment = await scheduling.insert_appointment(
        ward.pool,
        clinic_id=ward.clinic_id,
        doctor_id=ward.doctor,
        patient_id=ward.patient,
        service=ServiceKind.CHAT,
        starts_at=starts_at,
        ends_at=starts_at + timedelta(minutes=30),
        created_by=ward.doctor,
    )

    async def open_thread() -> Thread:
        return await store.create_thread(
            ward.pool,
            clinic_id=ward.clinic_id,
            kind=ThreadKind.DIRECT,
            created_by=ward.doctor,
            members=[(ward.doctor, "doctor"), (ward.patient, "patient")],
            appointment_id=appointment.id,
        )

    first = await open_thread()
    with pytest.raises(AppointmentHasThread) as caught:
        await open_thread()
    assert caught.value.thread_id == first.id


# --- devices ----------------------------------------------------------------------------


async def test_revoked_devices_are_not_listed(ward: Ward) -> None:
    spare = await new_device(ward.pool, ward.patient)
    assert await store.revoke_device(ward.pool, ward.patient, ward.devices[ward.patient].id)

    listed = await store.list_devices(ward.pool, [ward.patient, ward.doctor])

    assert {device.id for device in listed} == {spare.id, ward.devices[ward.doctor].id}


async def test_a_user_cannot_revoke_another_users_device(ward: Ward) -> None:
    assert not await store.revoke_device(ward.pool, ward.patient, ward.devices[ward.doctor].id)
    device = await store.get_device(ward.pool, ward.devices[ward.doctor].id)
    assert device is not None and device.revoked_at is None


async def test_a_retried_registration_returns_the_same_device(ward: Ward) -> None:
    x25519, ed25519 = public_keys()
    first = await store.register_device(
        ward.pool, user_id=ward.nurse, x25519_public=x25519, ed25519_public=ed25519
    )

    again = await store.register_device(
        ward.pool, user_id=ward.nurse, x25519_public=x25519, ed25519_public=ed25519
    )

    assert again == first


async def test_another_users_signing_key_is_refused(ward: Ward) -> None:
    taken = ward.devices[ward.doctor]
    with pytest.raises(DeviceKeyInUse):
        await store.register_device(
            ward.pool,
            user_id=ward.nurse,
            x25519_public=taken.x25519_public,
            ed25519_public=taken.ed25519_public,
        )


async def test_the_devices_of_a_thread_are_its_current_members_current_devices(
    ward: Ward,
) -> None:
    devices = await store.thread_devices(ward.pool, ward.thread.id)

    assert {device.user_id for device in devices} == {ward.doctor, ward.patient}
