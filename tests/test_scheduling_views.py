"""Views of the schedule: the doctor's iCalendar feed and the FHIR R4 resources.

The FHIR models of fhir.resources used here are R4B (4.3.0), not R4; the resources
checked have the same elements in both. R4 validity is Medplum's (test_fhir_validate.py).
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import icalendar
from aiohttp.test_utils import TestClient
from fhir.resources.R4B.appointment import Appointment as FhirAppointment
from fhir.resources.R4B.bundle import Bundle as FhirBundle
from fhir.resources.R4B.schedule import Schedule as FhirSchedule

from teleconsult.core.identity import Role
from tests.fhirvalidate import assert_outcome
from tests.test_scheduling_api import _book, _next_weekday_at, _open_calendar
from tests.world import Tenant, assert_problem


async def _booked(client: TestClient[Any, Any], tenant: Tenant) -> dict[str, Any]:
    await _open_calendar(client, tenant, tenant[Role.DOCTOR])
    resp = await _book(
        client,
        tenant[Role.RECEPTIONIST],
        tenant[Role.DOCTOR],
        _next_weekday_at(10),
        patient_id=tenant[Role.PATIENT].user_id,
    )
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_calendar_feed_serves_the_schedule_without_patient_data_until_revoked(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    appointment = await _booked(client, tenant)
    doctor = tenant[Role.DOCTOR]
    created = await client.post(
        f"/api/v1/doctors/{doctor.user_id}/calendar-feeds", headers=doctor.headers
    )
    assert created.status == 201, await created.text()
    feed = await created.json()
    path = feed["url"].split("://", 1)[1].split("/", 1)[1]
    resp = await client.get(f"/{path}")
    assert resp.status == 200
    assert resp.content_type == "text/calendar"
    text = await resp.text()
    calendar = icalendar.Calendar.from_ical(text)
    uids = [str(event["UID"]) for event in calendar.walk("VEVENT")]
    assert uids == [f"{appointment['id']}@teleconsult"]
    patient = tenant[Role.PATIENT]
    for secret in (patient.email, "Test Patient", str(patient.user_id), "+254700000000"):
        assert secret not in text
    assert appointment["consultation"]["room_id"] in text

    listed = await client.get(
        f"/api/v1/doctors/{doctor.user_id}/calendar-feeds", headers=doctor.headers
    )
    assert "url" not in (await listed.json())["items"][0]
    revoked = await client.delete(
        f"/api/v1/doctors/{doctor.user_id}/calendar-feeds/{feed['id']}", headers=doctor.headers
    )
    assert revoked.status == 204
    await assert_problem(await client.get(f"/{path}"), 404, "not_found")


async def test_an_unknown_calendar_token_is_not_found(client: TestClient[Any, Any]) -> None:
    await assert_problem(await client.get("/api/v1/calendar/made-up-token"), 404, "not_found")


async def test_fhir_appointment_is_valid_r4_and_scoped(
    client: TestClient[Any, Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    appointment = await _booked(client, tenant)
    url = f"/fhir/R4/Appointment/{appointment['id']}"
    resp = await client.get(url, headers=tenant[Role.PATIENT].headers)
    assert resp.status == 200
    assert resp.content_type == "application/fhir+json"
    resource = FhirAppointment.model_validate_json(await resp.read())
    assert resource.status == "booked"
    references = {p.actor.reference for p in resource.participant if p.actor is not None}
    assert f"Patient/{tenant[Role.PATIENT].user_id}" in references
    assert tenant.other_patient is not None
    # FHIR errors are OperationOutcomes (issue 14, F)
    await assert_outcome(
        await client.get(url, headers=tenant.other_patient.headers), 404, "not_found"
    )
    await assert_outcome(
        await client.get(url, headers=other_tenant[Role.ADMIN].headers), 404, "not_found"
    )


async def test_fhir_searches_return_valid_bundles(
    client: TestClient[Any, Any], tenant: Tenant
) -> None:
    appointment = await _booked(client, tenant)
    doctor = tenant[Role.DOCTOR]
    found = await client.get(
        "/fhir/R4/Appointment",
        params={"patient": str(tenant[Role.PATIENT].user_id)},
        headers=tenant[Role.RECEPTIONIST].headers,
    )
    bundle = FhirBundle.model_validate_json(await found.read())
    assert bundle.type == "searchset"
    assert [e.resource.id for e in bundle.entry or [] if e.resource] == [appointment["id"]]

    schedule = await client.get(f"/fhir/R4/Schedule/{doctor.user_id}", headers=doctor.headers)
    FhirSchedule.model_validate_json(await schedule.read())

    start = _next_weekday_at(0)
    slots = await client.get(
        "/fhir/R4/Slot",
        params={
            "schedule": str(doctor.user_id),
            "start": start.isoformat(),
            "end": (start + timedelta(days=1)).isoformat(),
        },
        headers=tenant[Role.PATIENT].headers,
    )
    assert slots.status == 200, await slots.text()
    slot_bundle = FhirBundle.model_validate_json(await slots.read())
    entries = json.loads((await slots.read()).decode())["entry"]
    assert entries and all(e["resource"]["status"] == "free" for e in entries)
    assert slot_bundle.total == len(entries)


async def test_the_server_sends_due_notifications_itself(
    aiohttp_client: Any, database_url: str, tmp_path: Any
) -> None:
    from teleconsult.core.settings import load_settings
    from teleconsult.server.app import POOL, create_app
    from tests.conftest import settings_env
    from tests.world import make_tenant

    settings = load_settings(
        settings_env(database_url, tmp_path, NOTIFY_IN_SERVER="true", NOTIFY_POLL_INTERVAL="0.05")
    )
    client = await aiohttp_client(create_app(settings))
    tenant = await make_tenant(client.app[POOL], client, name="Sender")
    appointment = await _booked(client, tenant)
    for _ in range(200):
        sent = await client.app[POOL].fetchval(
            "SELECT sent_at FROM notification_outbox "
            "WHERE appointment_id = $1::uuid AND kind = 'appointment_booked'",
            appointment["id"],
        )
        if sent is not None:
            break
        await asyncio.sleep(0.05)
    assert sent is not None
