"""Scheduling through the API: booking without double-booking, the front desk's flows."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from tests.auditkit import chained
from tests.world import Account, Tenant, assert_problem, login, make_user

NAIROBI = ZoneInfo("Africa/Nairobi")  # the tenant fixture's clinic zone


def _next_weekday_at(hour: int, days_ahead: int = 7) -> datetime:
    """A local time in the clinic's zone, a week ahead (always in the future)."""
    day = date.today() + timedelta(days=days_ahead)
    return datetime.combine(day, time(hour), tzinfo=NAIROBI).astimezone(UTC)


async def _open_calendar(client: TestClient[Any, Any], tenant: Tenant, doctor: Account) -> None:
    """Give the doctor a profile and 08:00-18:00 every day, lunch 12:00-13:00."""
    admin = tenant[Role.ADMIN].headers
    resp = await client.put(
        f"/api/v1/doctors/{doctor.user_id}/profile",
        json={
            "specialties": ["General practice"],
            "languages": ["en", "sw"],
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
        for kind, start, end in (
            ("work", "08:00:00", "18:00:00"),
            ("break", "12:00:00", "13:00:00"),
        ):
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
    client: TestClient[Any, Any], who: Account, doctor: Account, start: datetime, **extra: Any
) -> Any:
    body = {"doctor_id": str(doctor.user_id), "service": "video", "starts_at": start.isoformat()}
    body.update({k: str(v) if isinstance(v, UUID) else v for k, v in extra.items()})
    return await client.post("/api/v1/appointments", json=body, headers=who.headers)


async def test_fifty_concurrent_bookings_of_one_slot_let_exactly_one_through(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant, doctor: Account
) -> None:
    patients = [await make_user(app_pool, tenant.clinic_id, Role.PATIENT) for _ in range(50)]
    start = _next_weekday_at(10)
    desk = tenant[Role.RECEPTIONIST]
    answers = await asyncio.gather(
        *(_book(client, desk, doctor, start, patient_id=p.user_id) for p in patients)
    )
    statuses = sorted(a.status for a in answers)
    assert statuses.count(201) == 1, statuses
    assert statuses.count(409) == 49, statuses
    for answer in answers:
        if answer.status == 409:
            assert (await answer.json(content_type=None))["code"] == "slot_taken"
    overlaps = await app_pool.fetchval(
        """
        SELECT count(*) FROM appointments a JOIN appointments b
          ON a.doctor_id = b.doctor_id AND a.id < b.id
         AND tstzrange(a.starts_at, a.ends_at) && tstzrange(b.starts_at, b.ends_at)
        WHERE a.status IN ('requested', 'confirmed', 'in_progress')
          AND b.status IN ('requested', 'confirmed', 'in_progress')
        """
    )
    assert overlaps == 0


async def test_front_desk_books_moves_and_cancels_a_video_call_visible_only_to_its_people(
    client: TestClient[Any, Any],
    app_pool: asyncpg.Pool,
    tenant: Tenant,
    other_tenant: Tenant,
    doctor: Account,
) -> None:
    desk, patient = tenant[Role.RECEPTIONIST], tenant[Role.PATIENT]
    booked = await _book(client, desk, doctor, _next_weekday_at(9), patient_id=patient.user_id)
    assert booked.status == 201, await booked.text()
    appointment = await booked.json()
    assert appointment["status"] == "confirmed"
    room = appointment["consultation"]
    assert room["join_url"].endswith(room["room_id"])
    assert str(patient.user_id) not in room["join_url"]
    url = f"/api/v1/appointments/{appointment['id']}"

    for viewer in (patient, doctor, desk, tenant[Role.ADMIN]):
        assert (await client.get(url, headers=viewer.headers)).status == 200
    second_doctor = await login(client, await make_user(app_pool, tenant.clinic_id, Role.DOCTOR))
    assert tenant.other_patient is not None
    for outsider in (tenant.other_patient, second_doctor, *other_tenant.users.values()):
        await assert_problem(await client.get(url, headers=outsider.headers), 404, "not_found")

    moved = await client.post(
        f"{url}/reschedule",
        json={"starts_at": _next_weekday_at(14).isoformat(), "version": appointment["version"]},
        headers=desk.headers,
    )
    assert moved.status == 200, await moved.text()
    moved_body = await moved.json()
    assert moved_body["starts_at"] == _next_weekday_at(14).isoformat().replace("+00:00", "Z")
    assert moved_body["consultation"]["room_id"] == room["room_id"]
    stale = await client.post(
        f"{url}/reschedule",
        json={"starts_at": _next_weekday_at(15).isoformat(), "version": appointment["version"]},
        headers=desk.headers,
    )
    await assert_problem(stale, 409, "stale_version")

    for listing_viewer in (patient, doctor):
        window = {"from": _next_weekday_at(0).isoformat(), "to": _next_weekday_at(23).isoformat()}
        listing = await client.get(
            "/api/v1/appointments", params=window, headers=listing_viewer.headers
        )
        assert [a["id"] for a in (await listing.json())["items"]] == [appointment["id"]]

    no_reason = await client.post(f"{url}/cancel", json={"reason": ""}, headers=desk.headers)
    await assert_problem(no_reason, 400, "validation_failed")
    cancelled = await client.post(
        f"{url}/cancel", json={"reason": "patient asked to postpone"}, headers=desk.headers
    )
    assert cancelled.status == 200
    assert (await cancelled.json())["status"] == "cancelled"
    again = await _book(client, desk, doctor, _next_weekday_at(14), patient_id=patient.user_id)
    assert again.status == 201, "a cancelled appointment frees its slot"

    await chained(app_pool)
    actions = [
        r["action"]
        for r in await app_pool.fetch(
            "SELECT action FROM audit_log WHERE object_id = $1 ORDER BY seq", appointment["id"]
        )
    ]
    assert actions[0] == "appointment.create"
    assert "appointment.reschedule" in actions and actions[-1] == "appointment.cancel"
    assert "appointment.read" in actions


async def test_booking_enqueues_confirmation_and_reminders_and_cancel_withdraws_them(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant, doctor: Account
) -> None:
    patient = tenant[Role.PATIENT]
    booked = await _book(client, patient, doctor, _next_weekday_at(11))
    assert booked.status == 201
    body = await booked.json()
    assert body["status"] == "requested"
    rows = await app_pool.fetch(
        "SELECT kind, payload, cancelled_at FROM notification_outbox WHERE appointment_id = $1",
        UUID(body["id"]),
    )
    kinds = sorted(r["kind"] for r in rows)
    assert kinds == ["appointment_booked", "reminder_1440m", "reminder_60m"]
    assert all("name" not in str(r["payload"]) for r in rows)
    await client.post(
        f"/api/v1/appointments/{body['id']}/cancel",
        json={"reason": "conflict"},
        headers=patient.headers,
    )
    pending = await app_pool.fetch(
        "SELECT kind FROM notification_outbox WHERE appointment_id = $1 AND cancelled_at IS NULL "
        "AND sent_at IS NULL",
        UUID(body["id"]),
    )
    # Unsent news of the booking is withdrawn too: the patient hears only of the cancellation.
    assert [r["kind"] for r in pending] == ["appointment_cancelled"]


async def test_booking_outside_availability_or_in_the_past_is_refused(
    client: TestClient[Any, Any], tenant: Tenant, doctor: Account
) -> None:
    patient = tenant[Role.PATIENT]
    lunch = await _book(client, patient, doctor, _next_weekday_at(12))
    await assert_problem(lunch, 422, "outside_availability")
    night = await _book(client, patient, doctor, _next_weekday_at(22))
    await assert_problem(night, 422, "outside_availability")
    past = await _book(client, patient, doctor, _next_weekday_at(10, days_ahead=-2))
    await assert_problem(past, 422, "in_the_past")
    audio = await client.post(
        "/api/v1/appointments",
        json={
            "doctor_id": str(doctor.user_id),
            "service": "audio",
            "starts_at": _next_weekday_at(10).isoformat(),
        },
        headers=patient.headers,
    )
    await assert_problem(audio, 422, "service_not_offered")


async def test_a_patient_cannot_book_for_someone_else(
    client: TestClient[Any, Any], tenant: Tenant, doctor: Account
) -> None:
    assert tenant.other_patient is not None
    resp = await _book(
        client,
        tenant[Role.PATIENT],
        doctor,
        _next_weekday_at(10),
        patient_id=tenant.other_patient.user_id,
    )
    await assert_problem(resp, 403, "forbidden")


async def test_buffer_keeps_bookings_apart(
    client: TestClient[Any, Any], tenant: Tenant, doctor: Account
) -> None:
    desk = tenant[Role.RECEPTIONIST]
    assert tenant.other_patient is not None
    first = await _book(
        client, desk, doctor, _next_weekday_at(9), patient_id=tenant[Role.PATIENT].user_id
    )
    assert first.status == 201
    too_close = _next_weekday_at(9) + timedelta(minutes=35)  # ends 09:30, buffer 10 min
    resp = await _book(client, desk, doctor, too_close, patient_id=tenant.other_patient.user_id)
    await assert_problem(resp, 409, "slot_taken")
    fine = await _book(
        client,
        desk,
        doctor,
        _next_weekday_at(9) + timedelta(minutes=40),
        patient_id=tenant.other_patient.user_id,
    )
    assert fine.status == 201


async def test_slot_search_offers_free_times_only(
    client: TestClient[Any, Any], tenant: Tenant, doctor: Account
) -> None:
    patient = tenant[Role.PATIENT]
    assert (await _book(client, patient, doctor, _next_weekday_at(8))).status == 201
    resp = await client.get(
        "/api/v1/slots",
        params={
            "doctor": str(doctor.user_id),
            "from": _next_weekday_at(0).isoformat(),
            "to": _next_weekday_at(23).isoformat(),
            "service": "video",
        },
        headers=patient.headers,
    )
    assert resp.status == 200, await resp.text()
    starts = [s["starts_at"] for s in (await resp.json())["items"]]
    as_local = [datetime.fromisoformat(s).astimezone(NAIROBI).strftime("%H:%M") for s in starts]
    assert "08:00" not in as_local and "08:40" in as_local  # 30 min + 10 min buffer grid
    assert not any("12:00" <= t < "13:00" for t in as_local)
    assert all(t < "18:00" for t in as_local)


async def test_agenda_shows_the_clinic_day_to_the_front_desk(
    client: TestClient[Any, Any], tenant: Tenant, other_tenant: Tenant, doctor: Account
) -> None:
    desk = tenant[Role.RECEPTIONIST]
    start = _next_weekday_at(10)
    booked = await _book(client, desk, doctor, start, patient_id=tenant[Role.PATIENT].user_id)
    day = start.astimezone(NAIROBI).date().isoformat()
    mine = await client.get("/api/v1/agenda", params={"day": day}, headers=desk.headers)
    assert [a["id"] for a in (await mine.json())["items"]] == [(await booked.json())["id"]]
    theirs = await client.get(
        "/api/v1/agenda", params={"day": day}, headers=other_tenant[Role.RECEPTIONIST].headers
    )
    assert (await theirs.json())["items"] == []
    patient_view = await client.get(
        "/api/v1/agenda", params={"day": day}, headers=tenant[Role.PATIENT].headers
    )
    await assert_problem(patient_view, 403, "forbidden")


async def test_lifecycle_moves_through_its_states_and_refuses_jumps(
    client: TestClient[Any, Any], tenant: Tenant, doctor: Account
) -> None:
    patient = tenant[Role.PATIENT]
    booked = await (await _book(client, patient, doctor, _next_weekday_at(16))).json()
    url = f"/api/v1/appointments/{booked['id']}"
    jump = await client.post(f"{url}/complete", headers=doctor.headers)
    await assert_problem(jump, 409, "invalid_transition")
    assert (await client.post(f"{url}/confirm", headers=doctor.headers)).status == 200
    checked = await client.post(f"{url}/check-in", headers=tenant[Role.RECEPTIONIST].headers)
    assert (await checked.json())["checked_in_at"] is not None
    started = await client.post(f"{url}/start", headers=doctor.headers)
    assert (await started.json())["status"] == "in_progress"
    done = await client.post(f"{url}/complete", headers=doctor.headers)
    assert (await done.json())["status"] == "completed"
    room = await client.get(url, headers=patient.headers)
    assert (await room.json())["consultation"]["status"] == "ended"


async def test_numbers_are_not_taken_for_dates(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    resp = await client.get("/api/v1/agenda?day=0", headers=tenant[Role.RECEPTIONIST].headers)
    body = await assert_problem(resp, 400, "validation_failed")
    assert body["errors"][0]["field"] == "query.day"


async def test_a_filter_naming_someone_else_matches_nothing(
    client: TestClient[Any, Any], tenant: Tenant, doctor: Account
) -> None:
    patient = tenant[Role.PATIENT]
    assert (await _book(client, patient, doctor, _next_weekday_at(10))).status == 201
    assert tenant.other_patient is not None
    window = {"from": _next_weekday_at(0).isoformat(), "to": _next_weekday_at(23).isoformat()}
    own = await client.get("/api/v1/appointments", params=window, headers=patient.headers)
    assert len((await own.json())["items"]) == 1
    other = await client.get(
        "/api/v1/appointments",
        params={**window, "patient": str(tenant.other_patient.user_id)},
        headers=patient.headers,
    )
    assert (await other.json())["items"] == []
