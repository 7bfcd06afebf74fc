"""Scheduling routes, called by every role, against a written policy.

The second table of the authorization matrix: ``tests/test_authz_matrix.py`` holds
the first one, the helpers used here, and the route-coverage tests, which read both
tables. Like that one, SCHEDULING is written by hand and does not import
``teleconsult.core.policy``; docs/policy.md is its prose.

Target kinds, per kind of route:

* doctor routes (and slot searches, whose doctor is a query parameter):
  ``own`` is the clinic's doctor, for a doctor caller themself;
  ``same_clinic_other_doctor`` a colleague in the same clinic; ``other_tenant`` the
  other clinic's doctor;
* appointment routes: ``own`` is an appointment of the clinic's patient (the
  patient caller) with the clinic's doctor (the doctor caller);
  ``same_clinic_other_patient`` another patient's appointment with that doctor;
  ``same_clinic_other_doctor`` that patient's appointment with the colleague;
  ``other_tenant`` an appointment in the other clinic;
* booking: the doctor and patient of the body, as for appointments, except that
  ``other_tenant`` books the other clinic's doctor for the clinic's patient and
  ``other_tenant_patient`` the clinic's doctor for the other clinic's patient.

Every mutation gets a fresh object in the state the operation needs (a requested
appointment to confirm, an in-progress one to complete, a confirmed one that has
already begun to mark as a no-show), so an allowed caller gets 2xx, never 409.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any, cast
from uuid import UUID

import asyncpg
import pytest

from teleconsult.core.identity import Role
from tests.authzkit import (
    APPOINTMENT_OBJECT,
    SchedulingWorld,
    scheduling_world,
)
from tests.test_authz_matrix import (
    NO_ID,
    ROLES,
    A,
    Client,
    Expect,
    F,
    N,
    Prepared,
    Probe,
    Rule,
    Target,
    assert_malformed_ids_not_found,
    assert_route_follows_policy,
    public,
    read,
    row,
)
from tests.world import Account, Tenant, assert_problem

DOCTOR_OBJECT = (Target.OWN, Target.SAME_CLINIC_OTHER_DOCTOR, Target.OTHER_TENANT)
BOOKING = (*APPOINTMENT_OBJECT, Target.OTHER_TENANT_PATIENT)
DOCTOR = "/api/v1/doctors/{doctor_id}"
APPOINTMENT = "/api/v1/appointments/{appointment_id}"

# The written policy. Columns: patient, doctor, nurse, receptionist, admin; inside each,
# one answer per target kind, in the order of the row's target tuple (see above).
# fmt: off
SCHEDULING: dict[str, Rule] = {
    "getCalendarFeed": public("GET /api/v1/calendar/{token}"),
    # Doctors: own doctor (the doctor caller themself) / a colleague / other clinic.
    #   patient    doctor     nurse      reception. admin
    "listDoctors": row("GET /api/v1/doctors", NO_ID,
        (A,),      (A,),      (A,),      (A,),      (A,)),
    "getDoctor": row(f"GET {DOCTOR}", DOCTOR_OBJECT,
        (A, A, N), (A, A, N), (A, A, N), (A, A, N), (A, A, N)),
    "fhirReadSchedule": row("GET /fhir/R4/Schedule/{doctor_id}", DOCTOR_OBJECT,
        (A, A, N), (A, A, N), (A, A, N), (A, A, N), (A, A, N)),
    "setDoctorProfile": row(f"PUT {DOCTOR}/profile", DOCTOR_OBJECT,
        (F, F, F), (A, F, N), (F, F, F), (F, F, F), (A, A, N)),
    "getAvailability": row(f"GET {DOCTOR}/availability", DOCTOR_OBJECT,
        (F, F, F), (A, A, N), (A, A, N), (A, A, N), (A, A, N)),
    "addAvailabilityRule": row(f"POST {DOCTOR}/availability/rules", DOCTOR_OBJECT,
        (F, F, F), (A, F, N), (F, F, F), (A, A, N), (A, A, N)),
    "deleteAvailabilityRule": row(f"DELETE {DOCTOR}/availability/rules/{{rule_id}}",
        DOCTOR_OBJECT,
        (F, F, F), (A, F, N), (F, F, F), (A, A, N), (A, A, N)),
    "addAvailabilityException": row(f"POST {DOCTOR}/availability/exceptions", DOCTOR_OBJECT,
        (F, F, F), (A, F, N), (F, F, F), (A, A, N), (A, A, N)),
    "deleteAvailabilityException": row(
        f"DELETE {DOCTOR}/availability/exceptions/{{exception_id}}", DOCTOR_OBJECT,
        (F, F, F), (A, F, N), (F, F, F), (A, A, N), (A, A, N)),
    "searchSlots": row("GET /api/v1/slots", DOCTOR_OBJECT,
        (A, A, N), (A, A, N), (A, A, N), (A, A, N), (A, A, N)),
    "fhirSearchSlots": row("GET /fhir/R4/Slot", DOCTOR_OBJECT,
        (A, A, N), (A, A, N), (A, A, N), (A, A, N), (A, A, N)),
    "createCalendarFeed": row(f"POST {DOCTOR}/calendar-feeds", DOCTOR_OBJECT,
        (F, F, F), (A, F, N), (F, F, F), (F, F, F), (A, A, N)),
    "listCalendarFeeds": row(f"GET {DOCTOR}/calendar-feeds", DOCTOR_OBJECT,
        (F, F, F), (A, F, N), (F, F, F), (F, F, F), (A, A, N)),
    "revokeCalendarFeed": row(f"DELETE {DOCTOR}/calendar-feeds/{{feed_id}}", DOCTOR_OBJECT,
        (F, F, F), (A, F, N), (F, F, F), (F, F, F), (A, A, N)),
    # Booking: own / other patient / colleague / other clinic's doctor / other clinic's patient.
    #   patient          doctor           nurse            reception.       admin
    "bookAppointment": row("POST /api/v1/appointments", BOOKING,
        (A, F, A, N, F), (A, A, A, N, N), (F, F, F, F, F), (A, A, A, N, N), (A, A, A, N, N)),
    # Appointments: own / other patient's / colleague's / other clinic's. Lists show
    # only what the caller may read (test_appointment_lists_show_only_what_may_be_read).
    #   patient       doctor        nurse         reception.    admin
    "listAppointments": row("GET /api/v1/appointments", NO_ID,
        (A,),         (A,),         (A,),         (A,),         (A,)),
    "fhirSearchAppointments": row("GET /fhir/R4/Appointment", NO_ID,
        (A,),         (A,),         (A,),         (A,),         (A,)),
    "getAgenda": row("GET /api/v1/agenda", NO_ID,
        (F,),         (A,),         (A,),         (A,),         (A,)),
    "getAppointment": row(f"GET {APPOINTMENT}", APPOINTMENT_OBJECT,
        (A, N, A, N), (A, A, N, N), (A, A, A, N), (A, A, A, N), (A, A, A, N)),
    # --- join links (issue 12 follow-up): a room resolves to its appointment, read alike ---
    "getRoomAppointment": row("GET /api/v1/rooms/{room_id}", APPOINTMENT_OBJECT,
        (A, N, A, N), (A, A, N, N), (A, A, A, N), (A, A, A, N), (A, A, A, N)),
    "fhirReadAppointment": row("GET /fhir/R4/Appointment/{appointment_id}", APPOINTMENT_OBJECT,
        (A, N, A, N), (A, A, N, N), (A, A, A, N), (A, A, A, N), (A, A, A, N)),
    "rescheduleAppointment": row(f"POST {APPOINTMENT}/reschedule", APPOINTMENT_OBJECT,
        (A, N, A, N), (A, A, N, N), (F, F, F, F), (A, A, A, N), (A, A, A, N)),
    "cancelAppointment": row(f"POST {APPOINTMENT}/cancel", APPOINTMENT_OBJECT,
        (A, N, A, N), (A, A, N, N), (F, F, F, F), (A, A, A, N), (A, A, A, N)),
    "confirmAppointment": row(f"POST {APPOINTMENT}/confirm", APPOINTMENT_OBJECT,
        (F, F, F, F), (A, A, N, N), (F, F, F, F), (A, A, A, N), (A, A, A, N)),
    "startAppointment": row(f"POST {APPOINTMENT}/start", APPOINTMENT_OBJECT,
        (F, F, F, F), (A, A, N, N), (F, F, F, F), (F, F, F, F), (F, F, F, F)),
    "completeAppointment": row(f"POST {APPOINTMENT}/complete", APPOINTMENT_OBJECT,
        (F, F, F, F), (A, A, N, N), (F, F, F, F), (F, F, F, F), (F, F, F, F)),
    "checkInAppointment": row(f"POST {APPOINTMENT}/check-in", APPOINTMENT_OBJECT,
        (F, F, F, F), (A, A, N, N), (A, A, A, N), (A, A, A, N), (A, A, A, N)),
    "markNoShow": row(f"POST {APPOINTMENT}/no-show", APPOINTMENT_OBJECT,
        (F, F, F, F), (A, A, N, N), (A, A, A, N), (A, A, A, N), (A, A, A, N)),
}
# fmt: on
AUTHENTICATED = sorted(op for op, r in SCHEDULING.items() if not r.public)

# The status each appointment mutation needs its appointment in.
PREPARED_STATUS = {
    "rescheduleAppointment": "confirmed",
    "cancelAppointment": "confirmed",
    "confirmAppointment": "requested",
    "startAppointment": "confirmed",
    "completeAppointment": "in_progress",
    "checkInAppointment": "confirmed",
    "markNoShow": "confirmed",  # and already begun: see SchedulingWorld.past_slot
}


@pytest.fixture
async def world(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> SchedulingWorld:
    """One confirmed appointment per target kind on ``first_day``."""
    world = await scheduling_world(SchedulingWorld, client, app_pool, tenant, other_tenant)
    for target in APPOINTMENT_OBJECT:
        world.appointments[target] = await world.appointment(target)
    return world


def appointment_state(pool: asyncpg.Pool, appointment_id: UUID) -> Probe:
    return read(
        pool,
        "SELECT concat_ws('|', status, starts_at, ends_at, checked_in_at, cancel_reason, "
        "version) FROM appointments WHERE id = $1",
        appointment_id,
    )


def iso(instant: datetime) -> str:
    return instant.isoformat()


async def prepare(world: SchedulingWorld, op: str, role: Role | None, target: Target) -> Prepared:
    """Build the request for ``op`` as ``role`` (None: no token) on ``target``."""
    pool = world.pool
    caller = world.own[role] if role is not None else None
    prep = Prepared(caller, {})
    start, end = world.window()
    if target in DOCTOR_OBJECT and "{doctor_id}" in SCHEDULING[op].path:
        prep.params["doctor_id"] = world.doctor(target).user_id
    match op:
        case "listDoctors" | "getDoctor" | "fhirReadSchedule" | "listCalendarFeeds":
            pass
        case "getAvailability":
            prep.query = {"from": iso(start), "to": iso(end)}
        case "setDoctorProfile":
            bio = f"Updated {secrets.token_hex(4)}"
            prep.body = {
                "consultation_minutes": 30,
                "buffer_minutes": 10,
                "currency": "KES",
                "services": ["video", "in_person"],
                "bio": bio,
            }
            prep.probe = read(
                pool, "SELECT bio FROM doctor_profiles WHERE user_id = $1", prep.params["doctor_id"]
            )
        case "addAvailabilityRule":
            prep.body = {"weekday": 6, "start_time": "19:00", "end_time": "20:00"}
            prep.probe = read(
                pool,
                "SELECT count(*) FROM availability_rules WHERE doctor_id = $1",
                prep.params["doctor_id"],
            )
        case "deleteAvailabilityRule":
            rule_id = prep.params["rule_id"] = await world.rule(world.doctor(target))
            prep.probe = read(
                pool, "SELECT count(*) FROM availability_rules WHERE id = $1", rule_id
            )
        case "addAvailabilityException":
            leave = world.next_slot()
            prep.body = {
                "starts_at": iso(leave),
                "ends_at": iso(leave + timedelta(hours=1)),
                "kind": "unavailable",
            }
            prep.probe = read(
                pool,
                "SELECT count(*) FROM availability_exceptions WHERE doctor_id = $1",
                prep.params["doctor_id"],
            )
        case "deleteAvailabilityException":
            leave_id = prep.params["exception_id"] = await world.leave(world.doctor(target))
            prep.probe = read(
                pool, "SELECT count(*) FROM availability_exceptions WHERE id = $1", leave_id
            )
        case "createCalendarFeed":
            prep.probe = read(
                pool,
                "SELECT count(*) FROM calendar_feeds WHERE doctor_id = $1",
                prep.params["doctor_id"],
            )
        case "revokeCalendarFeed":
            feed_id = prep.params["feed_id"] = await world.feed(world.doctor(target))
            prep.probe = read(
                pool, "SELECT revoked_at IS NULL FROM calendar_feeds WHERE id = $1", feed_id
            )
        case "searchSlots":
            doctor = str(world.doctor(target).user_id)
            prep.query = {
                "doctor": doctor,
                "from": iso(start),
                "to": iso(start + timedelta(days=1)),
            }
        case "fhirSearchSlots":
            doctor = str(world.doctor(target).user_id)
            prep.query = {
                "schedule": doctor,
                "start": iso(start),
                "end": iso(start + timedelta(days=1)),
            }
        case "listAppointments":
            prep.query = {"from": iso(start), "to": iso(end)}
        case "fhirSearchAppointments":
            prep.query = {"start": iso(start), "end": iso(end)}
        case "getAgenda":
            prep.query = {"day": world.first_day.isoformat()}
        case "bookAppointment":
            doc, patient = world.booking(target)
            when = world.next_slot()
            prep.body = {
                "doctor_id": str(doc.user_id),
                "patient_id": str(patient.user_id),
                "service": "video",
                "starts_at": iso(when),
            }
            prep.probe = read(
                pool,
                "SELECT count(*) FROM appointments WHERE doctor_id = $1 AND starts_at = $2",
                doc.user_id,
                when,
            )
        case "getAppointment" | "fhirReadAppointment":
            prep.params["appointment_id"] = world.appointments[target]
        # --- join links (issue 12 follow-up): the room of that appointment ---
        case "getRoomAppointment":
            appointment_id = world.appointments[target]
            room_id: str = await pool.fetchval(
                "INSERT INTO consultations (appointment_id, room_id, join_opens_at,"
                " join_closes_at) SELECT id, $2, starts_at, ends_at FROM appointments"
                " WHERE id = $1 ON CONFLICT (appointment_id) DO UPDATE"
                " SET room_id = consultations.room_id RETURNING room_id",
                appointment_id,
                secrets.token_urlsafe(24),
            )
            prep.params["room_id"] = cast(UUID, room_id)  # an opaque string, not a UUID
            if str(appointment_id) in world.foreign:
                world.foreign.add(room_id)
        case _ if op in PREPARED_STATUS:
            begun = world.past_slot() if op == "markNoShow" else None
            appointment_id = await world.appointment(target, PREPARED_STATUS[op], begun)
            prep.params["appointment_id"] = appointment_id
            prep.probe = appointment_state(pool, appointment_id)
            if op == "rescheduleAppointment":
                prep.body = {"starts_at": iso(world.next_slot())}
            elif op == "cancelAppointment":
                prep.body = {"reason": "The patient asked to cancel."}
        case _:
            raise AssertionError(f"no request factory for operation {op}")
    return prep


# --- the matrix ----------------------------------------------------------------------


@pytest.mark.parametrize("op", AUTHENTICATED)
async def test_route_answers_every_role_as_the_policy_says(op: str, world: SchedulingWorld) -> None:
    await assert_route_follows_policy(world, op, SCHEDULING[op], prepare)


async def test_malformed_path_id_is_not_found(world: SchedulingWorld) -> None:
    await assert_malformed_ids_not_found(world, SCHEDULING, prepare)


# --- lists ---------------------------------------------------------------------------


def readable(world: SchedulingWorld, role: Role) -> set[str]:
    """The world's appointments ``role`` may read, by the written getAppointment row."""
    cells = SCHEDULING["getAppointment"].cells[role]
    return {str(world.appointments[t]) for t in APPOINTMENT_OBJECT if cells[t] is Expect.ALLOW}


async def listed(
    world: SchedulingWorld, caller: Account, op: str, query: dict[str, str]
) -> set[str]:
    rule = SCHEDULING[op]
    resp = await world.client.get(rule.path, params=query, headers=caller.headers)
    assert resp.status == 200, f"{op} as {caller.role.value}: {await resp.text()}"
    body: dict[str, Any] = await resp.json(content_type=None)
    if op == "fhirSearchAppointments":
        return {entry["resource"]["id"] for entry in body["entry"]}
    return {item["id"] for item in body["items"]}


def list_queries(world: SchedulingWorld, role: Role) -> list[tuple[str, dict[str, str]]]:
    start, end = world.window()
    rest = {"from": iso(start), "to": iso(end)}
    fhir = {"start": iso(start), "end": iso(end)}
    queries = [("listAppointments", rest), ("fhirSearchAppointments", fhir)]
    if SCHEDULING["getAgenda"].cells[role][Target.OWN] is Expect.ALLOW:
        queries.append(("getAgenda", {"day": world.first_day.isoformat()}))
    return queries


async def test_appointment_lists_show_only_what_may_be_read(world: SchedulingWorld) -> None:
    """Unfiltered, each list shows exactly the appointments the caller may read."""
    problems = []
    for role in ROLES:
        want = readable(world, role)
        for op, query in list_queries(world, role):
            got = await listed(world, world.own[role], op, query)
            if got != want:
                problems.append(f"{op} as {role.value}: extra {got - want}, missing {want - got}")
    assert problems == [], "\n".join(problems)


async def test_list_filters_never_widen_what_a_caller_sees(world: SchedulingWorld) -> None:
    """Filters naming someone else's patient or doctor, here or in the other clinic."""
    own, other = world.own, world.other
    assert own.other_patient is not None
    strangers = [
        ("patient", own.other_patient),
        ("patient", other[Role.PATIENT]),
        ("doctor", world.colleague),
        ("doctor", other[Role.DOCTOR]),
    ]
    fhir_name = {"patient": "patient", "doctor": "practitioner"}
    problems = []
    for role in ROLES:
        allowed = readable(world, role)
        for op, base in list_queries(world, role):
            for kind, who in strangers:
                if op == "getAgenda" and kind == "patient":
                    continue  # the agenda filters by doctor only
                name = fhir_name[kind] if op.startswith("fhir") else kind
                got = await listed(world, world.own[role], op, base | {name: str(who.user_id)})
                if not got <= allowed:
                    problems.append(f"{op} as {role.value} with {name}: sees {got - allowed}")
    assert problems == [], "\n".join(problems)


# --- single behaviours ---------------------------------------------------------------


async def test_calendar_feed_needs_no_token_and_shows_only_its_doctor(
    world: SchedulingWorld,
) -> None:
    assert sorted(op for op, r in SCHEDULING.items() if r.public) == ["getCalendarFeed"]
    client, doctor = world.client, world.own[Role.DOCTOR]
    created = await client.post(
        f"/api/v1/doctors/{doctor.user_id}/calendar-feeds", headers=doctor.headers
    )
    assert created.status == 201, await created.text()
    feed = await created.json()
    path = "/api/v1/calendar/" + feed["url"].rsplit("/api/v1/calendar/", 1)[1]

    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/calendar"
    text = await resp.text()
    mine = {Target.OWN, Target.SAME_CLINIC_OTHER_PATIENT}
    for target, appointment_id in world.appointments.items():
        assert (str(appointment_id) in text) == (target in mine), target
    assert no_patient_mentioned(world, text)

    await assert_problem(
        await client.get("/api/v1/calendar/" + secrets.token_urlsafe(32)), 404, "not_found"
    )
    revoked = await client.delete(
        f"/api/v1/doctors/{doctor.user_id}/calendar-feeds/{feed['id']}", headers=doctor.headers
    )
    assert revoked.status == 204
    await assert_problem(await client.get(path), 404, "not_found")


def no_patient_mentioned(world: SchedulingWorld, text: str) -> bool:
    """The feed is for calendar apps: no patient id of either clinic."""
    patients = [world.own[Role.PATIENT], world.own.other_patient, world.other[Role.PATIENT]]
    return not any(str(p.user_id) in text for p in patients if p is not None)


async def test_child_ids_must_belong_to_the_doctor_in_the_path(world: SchedulingWorld) -> None:
    """An admin may manage every doctor of the clinic, but a rule, leave or feed is only
    reached through its own doctor's path: another doctor's id there is 404, no change."""
    admin, doctor = world.own[Role.ADMIN], world.own[Role.DOCTOR]
    base = f"/api/v1/doctors/{doctor.user_id}"
    problems = []
    for owner in (world.colleague, world.other[Role.DOCTOR]):
        children = [
            ("availability/rules", await world.rule(owner), "availability_rules", "count(*)"),
            (
                "availability/exceptions",
                await world.leave(owner),
                "availability_exceptions",
                "count(*)",
            ),
            ("calendar-feeds", await world.feed(owner), "calendar_feeds", "count(revoked_at)"),
        ]
        for kind, child, table, state in children:
            sql = f"SELECT {state} FROM {table} WHERE id = $1"
            before = await world.pool.fetchval(sql, child)
            resp = await world.client.delete(f"{base}/{kind}/{child}", headers=admin.headers)
            if resp.status != 404:
                problems.append(f"{kind} of {owner.email} via another doctor: {resp.status}")
            if await world.pool.fetchval(sql, child) != before:
                problems.append(f"{kind} of {owner.email} via another doctor: CHANGED")
    assert problems == [], "\n".join(problems)


async def test_only_doctors_are_doctors_and_only_patients_are_booked(
    world: SchedulingWorld,
) -> None:
    """Ids of the clinic's other users are not doctors (or patients) to anyone: 404."""
    client, own = world.client, world.own
    nurse = own[Role.NURSE]
    resp = await client.get(f"/api/v1/doctors/{nurse.user_id}", headers=own[Role.PATIENT].headers)
    await assert_problem(resp, 404, "not_found")
    profile = {"consultation_minutes": 30, "services": ["video"]}
    resp = await client.put(
        f"/api/v1/doctors/{nurse.user_id}/profile", json=profile, headers=own[Role.ADMIN].headers
    )
    await assert_problem(resp, 404, "not_found")
    profiles = "SELECT count(*) FROM doctor_profiles WHERE user_id = $1"
    assert await world.pool.fetchval(profiles, nurse.user_id) == 0
    booking = {
        "doctor_id": str(own[Role.DOCTOR].user_id),
        "patient_id": str(nurse.user_id),
        "service": "video",
        "starts_at": iso(world.next_slot()),
    }
    resp = await client.post(
        "/api/v1/appointments", json=booking, headers=own[Role.RECEPTIONIST].headers
    )
    await assert_problem(resp, 404, "not_found")
    booked = "SELECT count(*) FROM appointments WHERE patient_id = $1"
    assert await world.pool.fetchval(booked, nurse.user_id) == 0
