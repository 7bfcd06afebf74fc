from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from tests.test_scheduling_api import _open_calendar
from tests.world import Tenant

EXTREMES = [
    ("0001-01-01T00:00:00Z", "0001-01-02T00:00:00Z"),
    ("0001-01-01T00:00:00+05:00", "0001-01-02T00:00:00+05:00"),
    ("0001-01-01T00:00:00-05:00", "0001-01-02T00:00:00-05:00"),
    ("9999-12-30T00:00:00Z", "9999-12-31T23:59:59Z"),
    ("9999-12-31T00:00:00-05:00", "9999-12-31T23:59:59-05:00"),
    ("9999-12-31T00:00:00+05:00", "9999-12-31T23:59:59+05:00"),
    ("2030-01-01T00:00:00Z", "2029-01-01T00:00:00Z"),
    ("2030-01-01T00:00:00+23:59", "2030-01-02T00:00:00-23:59"),
]


async def test_probe(client: TestClient[Any, Any], tenant: Tenant) -> None:
    doctor = tenant[Role.DOCTOR]
    await _open_calendar(client, tenant, doctor)
    d = str(doctor.user_id)
    problems = []
    for who in (Role.ADMIN, Role.PATIENT, Role.DOCTOR):
        h = tenant[who].headers
        # a real appointment
        booked = await client.post(
            "/api/v1/appointments",
            json={"doctor_id": d, "service": "video", "starts_at": "2031-01-06T08:00:00+03:00"}
            | ({} if who is Role.PATIENT else {"patient_id": str(tenant[Role.PATIENT].user_id)}),
            headers=h,
        )
        appt = (await booked.json())["id"] if booked.status == 201 else None
        for a, b in EXTREMES:
            for url, params in (
                ("/api/v1/slots", {"doctor": d, "from": a, "to": b}),
                (f"/api/v1/doctors/{d}/availability", {"from": a, "to": b}),
                ("/api/v1/appointments", {"from": a, "to": b}),
                ("/fhir/R4/Appointment", {"start": a, "end": b}),
                ("/fhir/R4/Slot", {"schedule": d, "start": a, "end": b}),
                ("/api/v1/agenda", {"day": a[:10]}),
                ("/api/v1/agenda", {"day": b[:10]}),
            ):
                r = await client.get(url, params=params, headers=h)
                if r.status >= 500:
                    problems.append((who, url, params, r.status))
            for url, body in (
                ("/api/v1/appointments", {"doctor_id": d, "service": "video", "starts_at": a}),
                ("/api/v1/appointments", {"doctor_id": d, "service": "video", "starts_at": b}),
                (
                    f"/api/v1/doctors/{d}/availability/exceptions",
                    {"starts_at": a, "ends_at": b, "kind": "extra"},
                ),
                (f"/api/v1/appointments/{appt}/reschedule", {"starts_at": a}),
                (f"/api/v1/appointments/{appt}/reschedule", {"starts_at": b}),
            ):
                if (
                    "patient_id" not in body
                    and "appointments" == url.split("/")[-1]
                    and who is not Role.PATIENT
                ):
                    body = body | {"patient_id": str(tenant[Role.PATIENT].user_id)}
                r = await client.post(url, json=body, headers=h)
                if r.status >= 500:
                    problems.append((who, url, body, r.status))
    for p in problems:
        print(p)
    assert not problems
