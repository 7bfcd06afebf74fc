"""FHIR views: every resource validates against the R4 structure definitions (pure, no I/O).

Validation uses ``fhir.resources``' ``R4B`` (4.3.0) models. fhir.resources 8 has
no 4.0.1 package (its default is R5; 6.x was R4 but needs pydantic 1), and
R4B's Appointment, Schedule, Slot, Bundle and OperationOutcome have exactly the
R4 elements, so a resource the R4B model accepts is a valid R4 resource. R5-only
elements (``Appointment.virtualService`` ...) are rejected as extra fields.
The models do not check required bindings, so the status code sets are checked
here against the R4 value sets.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B import __fhir_version__ as r4b_version
from fhir.resources.R4B.appointment import Appointment as FhirAppointment
from fhir.resources.R4B.bundle import Bundle as FhirBundle
from fhir.resources.R4B.operationoutcome import OperationOutcome as FhirOperationOutcome
from fhir.resources.R4B.schedule import Schedule as FhirSchedule
from fhir.resources.R4B.slot import Slot as FhirSlot

from teleconsult.accounts.records import UserRecord
from teleconsult.core.identity import Role
from teleconsult.fhir.views import (
    CONTENT_TYPE,
    SERVICE_KIND_SYSTEM,
    appointment_resource,
    appointment_status,
    bundle,
    instant,
    is_fhir_id,
    operation_outcome,
    schedule_resource,
    slot_id,
    slot_resource,
)
from teleconsult.scheduling.records import (
    Appointment,
    AppointmentStatus,
    DoctorProfile,
    ServiceKind,
)
from teleconsult.scheduling.slots import Slot

BASE = "https://api.teleconsult.dev/fhir"
NOW = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
START = datetime(2026, 6, 2, 9, 0, tzinfo=UTC)
CLINIC_ID = uuid4()
DOCTOR_ID = uuid4()

# http://hl7.org/fhir/R4/valueset-appointmentstatus.html
R4_APPOINTMENT_STATUS = {
    "proposed",
    "pending",
    "booked",
    "arrived",
    "fulfilled",
    "cancelled",
    "noshow",
    "entered-in-error",
    "checked-in",
    "waitlist",
}
# http://hl7.org/fhir/R4/valueset-participationstatus.html
R4_PARTICIPATION_STATUS = {"accepted", "declined", "tentative", "needs-action"}
R4_SLOT_STATUS = {"busy", "free", "busy-unavailable", "busy-tentative", "entered-in-error"}
FHIR_INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")

PATIENT = UserRecord(
    id=uuid4(),
    clinic_id=CLINIC_ID,
    email="jane.patient@example.org",
    role=Role.PATIENT,
    full_name="Jane Patient",
    phone="+44 7700 900123",
    date_of_birth=date(1980, 5, 17),
    status="active",
    created_at=NOW,
    updated_at=NOW,
)
DOCTOR = DoctorProfile(
    user_id=DOCTOR_ID,
    clinic_id=CLINIC_ID,
    full_name="Dr. Ada Example",
    specialties=("General practice", "Dermatology"),
    languages=("en", "de"),
    consultation_minutes=30,
    buffer_minutes=5,
    fee_cents=5000,
    currency="EUR",
    services=(ServiceKind.VIDEO, ServiceKind.IN_PERSON),
    bio=None,
    created_at=NOW - timedelta(days=30),
    updated_at=NOW - timedelta(days=1),
)


def make_appointment(
    *,
    status: AppointmentStatus = AppointmentStatus.CONFIRMED,
    service: ServiceKind = ServiceKind.VIDEO,
    checked_in_at: datetime | None = None,
    starts_at: datetime = START,
    patient_id: UUID = PATIENT.id,
) -> Appointment:
    return Appointment(
        id=uuid4(),
        clinic_id=CLINIC_ID,
        doctor_id=DOCTOR_ID,
        patient_id=patient_id,
        service=service,
        starts_at=starts_at,
        ends_at=starts_at + timedelta(minutes=30),
        buffer_minutes=5,
        status=status,
        cancel_reason="Doctor unavailable" if status is AppointmentStatus.CANCELLED else None,
        checked_in_at=checked_in_at,
        created_by=None,
        created_at=NOW - timedelta(days=2),
        updated_at=NOW - timedelta(minutes=5, microseconds=250_000),
        version=3,
    )


def valid_appointment(resource: dict[str, Any]) -> FhirAppointment:
    # Through JSON, as served: no Python objects may hide in the dict.
    return FhirAppointment.model_validate_json(json.dumps(resource))


def test_validating_models_are_r4_family() -> None:
    assert r4b_version.startswith("4.")
    assert CONTENT_TYPE == "application/fhir+json"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (AppointmentStatus.REQUESTED, "pending"),
        (AppointmentStatus.CONFIRMED, "booked"),
        (AppointmentStatus.IN_PROGRESS, "arrived"),
        (AppointmentStatus.COMPLETED, "fulfilled"),
        (AppointmentStatus.CANCELLED, "cancelled"),
        (AppointmentStatus.NO_SHOW, "noshow"),
    ],
)
def test_appointment_validates_for_every_status(status: AppointmentStatus, expected: str) -> None:
    resource = appointment_resource(make_appointment(status=status), base_url=BASE)

    model = valid_appointment(resource)

    assert model.status == expected
    assert expected in R4_APPOINTMENT_STATUS


def test_confirmed_and_checked_in_is_checked_in() -> None:
    appt = make_appointment(checked_in_at=START - timedelta(minutes=3))

    resource = appointment_resource(appt, base_url=BASE)

    assert valid_appointment(resource).status == "checked-in"
    assert appointment_status(appt) == "checked-in"


def test_requested_and_checked_in_stays_pending() -> None:
    appt = make_appointment(
        status=AppointmentStatus.REQUESTED, checked_in_at=START - timedelta(minutes=3)
    )

    assert appointment_resource(appt, base_url=BASE)["status"] == "pending"


@pytest.mark.parametrize("service", list(ServiceKind))
def test_appointment_validates_for_every_service(service: ServiceKind) -> None:
    resource = appointment_resource(make_appointment(service=service), base_url=BASE)

    model = valid_appointment(resource)

    assert model.serviceType is not None
    (concept,) = model.serviceType
    assert concept.coding is not None
    (coding,) = concept.coding
    assert (coding.system, coding.code) == (SERVICE_KIND_SYSTEM, service.value)


def test_appointment_fields() -> None:
    appt = make_appointment(starts_at=START.astimezone(ZoneInfo("America/New_York")))

    resource = appointment_resource(appt, base_url=BASE + "/")

    assert resource["id"] == str(appt.id)
    assert resource["start"] == "2026-06-02T09:00:00Z"
    assert resource["end"] == "2026-06-02T09:30:00Z"
    assert resource["minutesDuration"] == 30
    assert resource["created"] == "2026-05-30T08:00:00Z"
    assert resource["meta"] == {
        "versionId": "3",
        "lastUpdated": "2026-06-01T07:54:59.750Z",
        "source": BASE,
    }
    assert "cancelationReason" not in resource


def test_appointment_participants_are_references_by_id() -> None:
    appt = make_appointment()

    resource = appointment_resource(appt, base_url=BASE)

    actors = [p["actor"]["reference"] for p in resource["participant"]]
    assert actors == [f"Practitioner/{DOCTOR_ID}", f"Patient/{PATIENT.id}"]
    assert [p["status"] for p in resource["participant"]] == ["accepted", "accepted"]
    for participant in resource["participant"]:
        assert set(participant["actor"]) == {"reference", "type"}


@pytest.mark.parametrize("status", list(AppointmentStatus))
def test_participant_statuses_are_r4_codes(status: AppointmentStatus) -> None:
    resource = appointment_resource(make_appointment(status=status), base_url=BASE)

    statuses = [p["status"] for p in resource["participant"]]
    assert set(statuses) <= R4_PARTICIPATION_STATUS
    expected = "needs-action" if status is AppointmentStatus.REQUESTED else "accepted"
    assert statuses[0] == expected


def test_cancelled_appointment_has_cancelation_reason() -> None:
    appt = make_appointment(status=AppointmentStatus.CANCELLED)

    model = valid_appointment(appointment_resource(appt, base_url=BASE))

    assert model.cancelationReason is not None
    assert model.cancelationReason.text == "Doctor unavailable"


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        appointment_resource(make_appointment(starts_at=datetime(2026, 6, 2, 9)), base_url=BASE)


def test_instant_format() -> None:
    assert instant(datetime(2026, 6, 2, 11, 0, tzinfo=ZoneInfo("Europe/Berlin"))) == (
        "2026-06-02T09:00:00Z"
    )
    assert instant(datetime(2026, 6, 2, 9, 0, 0, 123456, tzinfo=UTC)) == "2026-06-02T09:00:00.123Z"


def test_schedule_validates() -> None:
    resource = schedule_resource(DOCTOR, horizon_start=NOW, horizon_end=NOW + timedelta(days=28))

    model = FhirSchedule.model_validate_json(json.dumps(resource))

    assert model.id == str(DOCTOR_ID)
    assert model.active is True
    assert [a.reference for a in model.actor] == [f"Practitioner/{DOCTOR_ID}"]
    assert model.planningHorizon is not None
    assert resource["planningHorizon"] == {
        "start": "2026-06-01T08:00:00Z",
        "end": "2026-06-29T08:00:00Z",
    }
    assert [c["coding"][0]["code"] for c in resource["serviceType"]] == ["video", "in_person"]
    assert resource["specialty"] == [{"text": "General practice"}, {"text": "Dermatology"}]


def test_schedule_without_services_or_specialties_validates() -> None:
    doctor = replace(DOCTOR, services=(), specialties=())

    resource = schedule_resource(doctor, horizon_start=NOW, horizon_end=NOW + timedelta(days=1))

    FhirSchedule.model_validate_json(json.dumps(resource))
    assert "serviceType" not in resource
    assert "specialty" not in resource


def test_schedule_horizon_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="horizon_end"):
        schedule_resource(DOCTOR, horizon_start=NOW, horizon_end=NOW)


@pytest.mark.parametrize("service", list(ServiceKind))
def test_slot_validates(service: ServiceKind) -> None:
    slot = Slot(START, START + timedelta(minutes=30))

    resource = slot_resource(slot, schedule_id=str(DOCTOR_ID), service=service)

    model = FhirSlot.model_validate_json(json.dumps(resource))
    assert model.status == "free"
    assert model.status in R4_SLOT_STATUS
    assert model.schedule.reference == f"Schedule/{DOCTOR_ID}"
    assert resource["start"] == "2026-06-02T09:00:00Z"
    assert resource["end"] == "2026-06-02T09:30:00Z"


def test_slot_ids_are_valid_deterministic_and_distinct() -> None:
    starts = [START + n * timedelta(minutes=35) for n in range(50)]
    slots = [Slot(s, s + timedelta(minutes=30)) for s in starts]
    schedule = str(DOCTOR_ID)

    ids = [slot_resource(s, schedule_id=schedule, service=ServiceKind.VIDEO)["id"] for s in slots]

    assert all(is_fhir_id(i) for i in ids)
    assert all(re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert ids[0] == f"{DOCTOR_ID}-{int(START.timestamp())}"
    again = slot_resource(slots[0], schedule_id=schedule, service=ServiceKind.AUDIO)["id"]
    assert again == ids[0]


def test_slot_id_refuses_invalid_schedule_ids() -> None:
    with pytest.raises(ValueError, match="FHIR id"):
        slot_id("x" * 60, START)
    with pytest.raises(ValueError, match="FHIR id"):
        slot_id("bad/id", START)


@pytest.mark.parametrize(
    "value", ["a", "A-1.b", "x" * 64, str(uuid4())], ids=["one", "dots", "64", "uuid"]
)
def test_is_fhir_id_accepts(value: str) -> None:
    assert is_fhir_id(value)


@pytest.mark.parametrize("value", ["", "x" * 65, "a_b", "a/b", "a b", "é"])
def test_is_fhir_id_rejects(value: str) -> None:
    assert not is_fhir_id(value)


def search_results() -> list[dict[str, Any]]:
    appointments = [
        appointment_resource(make_appointment(status=s), base_url=BASE) for s in AppointmentStatus
    ]
    slot = slot_resource(
        Slot(START, START + timedelta(minutes=30)),
        schedule_id=str(DOCTOR_ID),
        service=ServiceKind.VIDEO,
    )
    schedule = schedule_resource(DOCTOR, horizon_start=NOW, horizon_end=NOW + timedelta(days=7))
    return [*appointments, schedule, slot]


def test_bundle_validates() -> None:
    resources = search_results()

    resource = bundle(
        resources,
        base_url=BASE,
        self_link=f"{BASE}/Appointment?practitioner=x",
        next_link=f"{BASE}/Appointment?practitioner=x&_page=2",
    )

    model = FhirBundle.model_validate_json(json.dumps(resource))
    assert model.type == "searchset"
    assert model.total is None
    assert model.link is not None
    assert [(link.relation, link.url) for link in model.link] == [
        ("self", f"{BASE}/Appointment?practitioner=x"),
        ("next", f"{BASE}/Appointment?practitioner=x&_page=2"),
    ]
    assert model.entry is not None
    assert len(model.entry) == len(resources)
    for entry, original in zip(resource["entry"], resources, strict=True):
        assert entry["fullUrl"] == f"{BASE}/{original['resourceType']}/{original['id']}"
        assert entry["search"] == {"mode": "match"}
        assert entry["resource"] == original


def test_bundle_last_page_has_no_next_link_and_may_carry_total() -> None:
    resource = bundle([], base_url=BASE, self_link=BASE + "/Slot", next_link=None, total=0)

    model = FhirBundle.model_validate_json(json.dumps(resource))
    assert model.total == 0
    assert [link["relation"] for link in resource["link"]] == ["self"]


def test_bundle_outcome_entry_has_outcome_mode() -> None:
    warning = operation_outcome("too-costly", "results truncated", severity="warning")

    resource = bundle([warning], base_url=BASE, self_link=BASE + "/Slot", next_link=None)

    FhirBundle.model_validate_json(json.dumps(resource))
    assert resource["entry"] == [{"resource": warning, "search": {"mode": "outcome"}}]


def test_bundle_refuses_duplicate_or_unidentified_entries() -> None:
    slot = search_results()[-1]
    with pytest.raises(ValueError, match="duplicate"):
        bundle([slot, slot], base_url=BASE, self_link=BASE, next_link=None)
    with pytest.raises(ValueError, match="valid id"):
        bundle([{"resourceType": "Slot"}], base_url=BASE, self_link=BASE, next_link=None)


def test_operation_outcome_validates() -> None:
    resource = operation_outcome("not-found", "Appointment not found")

    model = FhirOperationOutcome.model_validate_json(json.dumps(resource))

    (issue,) = model.issue
    assert (issue.severity, issue.code, issue.diagnostics) == (
        "error",
        "not-found",
        "Appointment not found",
    )


def test_operation_outcome_refuses_unknown_codes() -> None:
    with pytest.raises(ValueError, match="issue-type"):
        operation_outcome("oops", "x")
    with pytest.raises(ValueError, match="severity"):
        operation_outcome("invalid", "x", severity="panic")


def test_instants_are_utc_everywhere() -> None:
    def walk(value: Any) -> list[str]:
        if isinstance(value, dict):
            return [s for v in value.values() for s in walk(v)]
        if isinstance(value, list):
            return [s for v in value for s in walk(v)]
        return [value] if isinstance(value, str) and value[:4].isdigit() else []

    stamps = [s for r in search_results() for s in walk(r) if "T" in s and ":" in s]

    assert stamps
    assert all(FHIR_INSTANT.fullmatch(s) for s in stamps)


def test_no_patient_data_in_any_resource() -> None:
    text = json.dumps(bundle(search_results(), base_url=BASE, self_link=BASE, next_link=None))

    assert str(PATIENT.id) in text  # referenced by id only
    for secret in (PATIENT.full_name, "Jane", PATIENT.email, "7700", "1980-05-17"):
        assert secret not in text
