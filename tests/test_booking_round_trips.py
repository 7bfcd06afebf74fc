"""Round trips of a booking (POST /api/v1/appointments), counted as statements.

A booking is: the request's authentication (one query), one read (the doctor,
the clinic's time zone, the calendar around the requested time and, when staff
book, the patient) and one write (a CTE that takes the locks and inserts the
appointment, its consultation, its notifications and its audit event). The
counts below are exact on purpose: a change that adds a round trip fails here.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from tests.auditkit import chained
from tests.querylog import QueryLog, counting
from tests.world import Account, Tenant, assert_problem, login, make_user

NAIROBI = ZoneInfo("Africa/Nairobi")  # the tenant fixture's clinic zone

# authentication + the read + the write
BOOKING_STATEMENTS = 3


def _next_week_at(hour: int) -> datetime:
    day = date.today() + timedelta(days=7)
    return datetime.combine(day, time(hour), tzinfo=NAIROBI).astimezone(UTC)


async def _open_calendar(client: TestClient[Any, Any], tenant: Tenant, doctor: Account) -> None:
    """A profile and 08:00-18:00 every day, lunch 12:00-13:00."""
    admin = tenant[Role.ADMIN].headers
    resp = await client.put(
        f"/api/v1/doctors/{doctor.user_id}/profile",
        json={
            "specialties": ["General practice"],
            "languages": ["en"],
            "consultation_minutes": 30,
            "buffer_minutes": 10,
            "fee_cents": 150000,
            "currency": "KES",
            "services": ["video", "in_person"],
        },
        headers=admin,
    )
    assert resp.status == 200, await resp.text()
    for weekday in range(7):
        for kind, start, end in (("work", "08:00", "18:00"), ("break", "12:00", "13:00")):
            rule = await client.post(
                f"/api/v1/doctors/{doctor.user_id}/availability/rules",
                json={"weekday": weekday, "start_time": start, "end_time": end, "kind": kind},
                headers=admin,
            )
            assert rule.status == 201, await rule.text()


@pytest.fixture
async def doctor(client: TestClient[Any, Any], tenant: Tenant) -> Account:
    await _open_calendar(client, tenant, tenant[Role.DOCTOR])
    return tenant[Role.DOCTOR]


async def _book(
    client: TestClient[Any, Any],
    who: Account,
    doctor: Account,
    start: datetime,
    *,
    service: str = "video",
    patient: Account | None = None,
) -> Any:
    body = {"doctor_id": str(doctor.user_id), "service": service, "starts_at": start.isoformat()}
    if patient is not None:
        body["patient_id"] = str(patient.user_id)
    return await client.post("/api/v1/appointments", json=body, headers=who.headers)


def _assert_shape(log: QueryLog) -> None:
    """Authentication, then one read, then one write; no transaction statements."""
    statements = log.statements
    assert len(statements) == BOOKING_STATEMENTS, "\n".join(statements)
    assert "auth_sessions" in statements[0], statements[0]
    assert statements[1].startswith(("SELECT", "WITH")), statements[1]
    assert "availability_rules" in statements[1], statements[1]
    assert "INSERT INTO appointments" in statements[2], statements[2]
    assert "audit_intake" in statements[2], statements[2]


async def _written(pool: asyncpg.Pool, patient_id: UUID) -> dict[str, int]:
    """What bookings of this patient left behind, after the audit trail caught up."""
    await chained(pool)
    row = await pool.fetchrow(
        """
        SELECT
          (SELECT count(*) FROM appointments WHERE patient_id = $1) AS appointments,
          (SELECT count(*) FROM consultations c JOIN appointments a ON a.id = c.appointment_id
            WHERE a.patient_id = $1) AS consultations,
          (SELECT count(*) FROM notification_outbox o JOIN appointments a
            ON a.id = o.appointment_id WHERE a.patient_id = $1) AS notifications,
          (SELECT count(*) FROM audit_log WHERE action = 'appointment.create'
            AND detail ->> 'patient_id' = $1::text) AS audit_events
        """,
        patient_id,
    )
    assert row is not None
    return dict(row)


async def test_a_patient_books_with_authentication_one_read_and_one_write(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant, doctor: Account
) -> None:
    patient = tenant[Role.PATIENT]
    start = _next_week_at(10)
    async with counting(app_pool) as log:
        resp = await _book(client, patient, doctor, start)
    assert resp.status == 201, await resp.text()
    _assert_shape(log)
    body = await resp.json()
    assert body["status"] == "requested"
    assert body["patient_id"] == str(patient.user_id)
    assert body["consultation"]["status"] == "scheduled"
    assert await _written(app_pool, patient.user_id) == {
        "appointments": 1,
        "consultations": 1,
        "notifications": 3,  # the booking's own message and two reminders
        "audit_events": 1,
    }
    audit = await app_pool.fetchrow(
        "SELECT actor_id, actor_role, clinic_id, object_type, detail::text AS detail "
        "FROM audit_log WHERE action = 'appointment.create' AND object_id = $1",
        body["id"],
    )
    assert audit is not None
    assert (audit["actor_id"], audit["actor_role"]) == (patient.user_id, "patient")
    assert (audit["clinic_id"], audit["object_type"]) == (tenant.clinic_id, "appointment")


async def test_staff_book_with_authentication_one_read_and_one_write(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant, doctor: Account
) -> None:
    desk, patient = tenant[Role.RECEPTIONIST], tenant[Role.PATIENT]
    async with counting(app_pool) as log:
        resp = await _book(
            client, desk, doctor, _next_week_at(9), service="in_person", patient=patient
        )
    assert resp.status == 201, await resp.text()
    _assert_shape(log)
    assert "users" in log.statements[1]
    body = await resp.json()
    assert body["status"] == "confirmed"
    assert body["consultation"] is None  # no room for an in-person visit
    assert await _written(app_pool, patient.user_id) == {
        "appointments": 1,
        "consultations": 0,
        "notifications": 3,
        "audit_events": 1,
    }


async def test_a_taken_slot_is_refused_in_the_same_statements_and_leaves_nothing(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant, doctor: Account
) -> None:
    desk = tenant[Role.RECEPTIONIST]
    first, second = tenant[Role.PATIENT], tenant.other_patient
    assert second is not None
    start = _next_week_at(11)
    taken = await _book(client, desk, doctor, start, patient=first)
    assert taken.status == 201, await taken.text()
    async with counting(app_pool) as log:
        refused = await _book(client, desk, doctor, start + timedelta(minutes=15), patient=second)
    body = await assert_problem(refused, 409, "slot_taken")
    assert "doctor" in body["detail"]
    _assert_shape(log)
    assert await _written(app_pool, second.user_id) == {
        "appointments": 0,
        "consultations": 0,
        "notifications": 0,
        "audit_events": 0,
    }


async def test_the_patient_being_busy_names_the_patient(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant, doctor: Account
) -> None:
    """An appointment with another doctor at the same time keeps the patient busy."""
    patient = tenant[Role.PATIENT]
    colleague = await login(client, await make_user(app_pool, tenant.clinic_id, Role.DOCTOR))
    await _open_calendar(client, tenant, colleague)
    start = _next_week_at(15)
    assert (await _book(client, patient, doctor, start)).status == 201
    async with counting(app_pool) as log:
        refused = await _book(client, patient, colleague, start)
    body = await assert_problem(refused, 409, "slot_taken")
    assert "the patient already has an appointment" in body["detail"]
    _assert_shape(log)
    assert await _written(app_pool, patient.user_id) == {
        "appointments": 1,
        "consultations": 1,
        "notifications": 3,
        "audit_events": 1,
    }


async def test_refusals_before_the_write_take_authentication_and_the_read_only(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant, doctor: Account
) -> None:
    patient = tenant[Role.PATIENT]
    async with counting(app_pool) as log:
        lunch = await _book(client, patient, doctor, _next_week_at(12))
    await assert_problem(lunch, 422, "outside_availability")
    assert len(log.statements) == 2, "\n".join(log.statements)
    assert (await _written(app_pool, patient.user_id))["appointments"] == 0
