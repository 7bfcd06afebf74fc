"""FHIR R4 (4.0.1) JSON views of scheduling records (pure, no I/O).

Each function returns a plain ``dict`` ready for ``json.dumps`` and served as
``application/fhir+json``. Resources reference people by id only
(``Practitioner/<user id>``, ``Patient/<user id>``, relative to the FHIR base);
no patient name, e-mail or phone is ever written.

Appointment status mapping
--------------------------
FHIR R4 ``Appointment.status`` has no "in progress" code (a running visit is an
``Encounter``), so the mapping is:

============================  ===============
teleconsult                   FHIR R4
============================  ===============
requested                     ``pending``
confirmed                     ``booked``
confirmed, ``checked_in_at``  ``checked-in``
in_progress                   ``arrived``
completed                     ``fulfilled``
cancelled                     ``cancelled``
no_show                       ``noshow``
============================  ===============

A checked-in appointment that is still only *requested* stays ``pending``: the
practitioner has not accepted it yet, which is what ``pending`` says. For the
same reason the practitioner's participant status is ``needs-action`` while the
appointment is requested and ``accepted`` otherwise; the patient, who asked for
the appointment, is always ``accepted``. ``in_progress`` maps to ``arrived``
(the patient is present and being seen) rather than ``checked-in``, which is
kept for "checked in, waiting to be seen".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from teleconsult.scheduling.records import (
    Appointment,
    AppointmentStatus,
    DoctorProfile,
    ServiceKind,
)
from teleconsult.scheduling.slots import Slot

CONTENT_TYPE = "application/fhir+json"
FHIR_VERSION = "4.0.1"
SERVICE_KIND_SYSTEM = "https://teleconsult.dev/fhir/service-kind"

FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")

SERVICE_DISPLAY: Mapping[ServiceKind, str] = {
    ServiceKind.VIDEO: "Video consultation",
    ServiceKind.AUDIO: "Audio consultation",
    ServiceKind.CHAT: "Chat consultation",
    ServiceKind.IN_PERSON: "In-person appointment",
}

APPOINTMENT_STATUSES: Mapping[AppointmentStatus, str] = {
    AppointmentStatus.REQUESTED: "pending",
    AppointmentStatus.CONFIRMED: "booked",
    AppointmentStatus.IN_PROGRESS: "arrived",
    AppointmentStatus.COMPLETED: "fulfilled",
    AppointmentStatus.CANCELLED: "cancelled",
    AppointmentStatus.NO_SHOW: "noshow",
}

# R4 value set http://hl7.org/fhir/issue-type
IssueCode = Literal[
    "invalid",
    "structure",
    "required",
    "value",
    "invariant",
    "security",
    "login",
    "unknown",
    "expired",
    "forbidden",
    "suppressed",
    "processing",
    "not-supported",
    "duplicate",
    "multiple-matches",
    "not-found",
    "deleted",
    "too-long",
    "code-invalid",
    "extension",
    "too-costly",
    "business-rule",
    "conflict",
    "transient",
    "lock-error",
    "no-store",
    "exception",
    "timeout",
    "incomplete",
    "throttled",
    "informational",
]
IssueSeverity = Literal["fatal", "error", "warning", "information"]
ISSUE_CODES: frozenset[str] = frozenset(get_args(IssueCode))
ISSUE_SEVERITIES: frozenset[str] = frozenset(get_args(IssueSeverity))


def instant(value: datetime) -> str:
    """A FHIR ``instant`` in UTC with ``Z``; milliseconds only when present."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"FHIR instants must be timezone-aware, got naive {value!r}")
    utc = value.astimezone(UTC)
    spec = "milliseconds" if utc.microsecond else "seconds"
    return utc.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def is_fhir_id(value: str) -> bool:
    """Whether ``value`` is a valid FHIR logical id (``[A-Za-z0-9\\-.]{1,64}``)."""
    return FHIR_ID.fullmatch(value) is not None


def _require_id(value: str) -> str:
    if not is_fhir_id(value):
        raise ValueError(f"not a valid FHIR id: {value!r}")
    return value


def service_type(service: ServiceKind) -> dict[str, Any]:
    """The CodeableConcept for a service kind (local code system)."""
    display = SERVICE_DISPLAY[service]
    return {
        "coding": [{"system": SERVICE_KIND_SYSTEM, "code": service.value, "display": display}],
        "text": display,
    }


def appointment_status(appt: Appointment) -> str:
    """The FHIR R4 ``Appointment.status`` code; see the module docstring."""
    if appt.status is AppointmentStatus.CONFIRMED and appt.checked_in_at is not None:
        return "checked-in"
    return APPOINTMENT_STATUSES[appt.status]


def appointment_resource(appt: Appointment, *, base_url: str) -> dict[str, Any]:
    """An R4 ``Appointment``; ``base_url`` (the FHIR base) is recorded as ``meta.source``."""
    start, end = instant(appt.starts_at), instant(appt.ends_at)
    practitioner_status = (
        "needs-action" if appt.status is AppointmentStatus.REQUESTED else "accepted"
    )
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": _require_id(str(appt.id)),
        "meta": {
            "versionId": str(appt.version),
            "lastUpdated": instant(appt.updated_at),
            "source": base_url.rstrip("/"),
        },
        "status": appointment_status(appt),
    }
    # app-4: a cancellation reason only on cancelled (or no-show) appointments.
    if appt.status is AppointmentStatus.CANCELLED and appt.cancel_reason:
        resource["cancelationReason"] = {"text": appt.cancel_reason}
    resource["serviceType"] = [service_type(appt.service)]
    resource["start"] = start
    resource["end"] = end
    minutes = int((appt.ends_at - appt.starts_at).total_seconds() // 60)
    if minutes >= 1:  # positiveInt
        resource["minutesDuration"] = minutes
    resource["created"] = instant(appt.created_at)
    resource["participant"] = [
        {
            "actor": {"reference": f"Practitioner/{appt.doctor_id}", "type": "Practitioner"},
            "required": "required",
            "status": practitioner_status,
        },
        {
            "actor": {"reference": f"Patient/{appt.patient_id}", "type": "Patient"},
            "required": "required",
            "status": "accepted",
        },
    ]
    return resource


def doctor_schedule_id(doctor: DoctorProfile) -> str:
    """Each doctor has one schedule, identified by the doctor's user id."""
    return str(doctor.user_id)


def schedule_resource(
    doctor: DoctorProfile, *, horizon_start: datetime, horizon_end: datetime
) -> dict[str, Any]:
    """An R4 ``Schedule`` for the doctor over ``[horizon_start, horizon_end]``."""
    if not horizon_start < horizon_end:
        raise ValueError("horizon_end must be after horizon_start")
    resource: dict[str, Any] = {
        "resourceType": "Schedule",
        "id": _require_id(doctor_schedule_id(doctor)),
        "meta": {"lastUpdated": instant(doctor.updated_at)},
        "active": True,
    }
    if doctor.services:
        resource["serviceType"] = [service_type(s) for s in doctor.services]
    specialties = [s for s in doctor.specialties if s.strip()]
    if specialties:
        # Free-text specialties: CodeableConcepts with text only, no invented codes.
        resource["specialty"] = [{"text": s} for s in specialties]
    resource["actor"] = [
        {
            "reference": f"Practitioner/{doctor.user_id}",
            "type": "Practitioner",
            "display": doctor.full_name,
        }
    ]
    resource["planningHorizon"] = {"start": instant(horizon_start), "end": instant(horizon_end)}
    return resource


def slot_id(schedule_id: str, starts_at: datetime) -> str:
    """Deterministic slot id ``<schedule id>-<unix start seconds>``."""
    if starts_at.tzinfo is None or starts_at.utcoffset() is None:
        raise ValueError(f"slot start must be timezone-aware, got naive {starts_at!r}")
    return _require_id(f"{schedule_id}-{int(starts_at.timestamp())}")


def slot_resource(slot: Slot, *, schedule_id: str, service: ServiceKind) -> dict[str, Any]:
    """An R4 ``Slot`` (``free``) of the schedule ``schedule_id``."""
    return {
        "resourceType": "Slot",
        "id": slot_id(schedule_id, slot.starts_at),
        "serviceType": [service_type(service)],
        "schedule": {"reference": f"Schedule/{_require_id(schedule_id)}"},
        "status": "free",
        "start": instant(slot.starts_at),
        "end": instant(slot.ends_at),
    }


def bundle(
    resources: Sequence[Mapping[str, Any]],
    *,
    base_url: str,
    self_link: str,
    next_link: str | None,
    total: int | None = None,
) -> dict[str, Any]:
    """A ``searchset`` Bundle of ``resources``; ``total`` is omitted when unknown.

    An ``OperationOutcome`` entry (warnings about the search) gets
    ``search.mode: outcome`` and no ``fullUrl``; every other entry is a match
    with ``fullUrl`` ``<base_url>/<type>/<id>``.
    """
    base = base_url.rstrip("/")
    links = [{"relation": "self", "url": self_link}]
    if next_link is not None:
        links.append({"relation": "next", "url": next_link})
    result: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        if total < 0:
            raise ValueError("total must not be negative")
        result["total"] = total
    result["link"] = links
    result["entry"] = list(_entries(resources, base))
    return result


def _entries(resources: Iterable[Mapping[str, Any]], base: str) -> Iterable[dict[str, Any]]:
    seen: set[str] = set()
    for resource in resources:
        kind = resource.get("resourceType")
        if not isinstance(kind, str) or not kind:
            raise ValueError("bundle entries need a resourceType")
        if kind == "OperationOutcome":
            yield {"resource": dict(resource), "search": {"mode": "outcome"}}
            continue
        ident = resource.get("id")
        if not isinstance(ident, str) or not is_fhir_id(ident):
            raise ValueError(f"bundle entry {kind} needs a valid id, got {ident!r}")
        full_url = f"{base}/{kind}/{ident}"
        if full_url in seen:  # bdl-7: fullUrl must be unique
            raise ValueError(f"duplicate bundle entry {full_url}")
        seen.add(full_url)
        yield {"fullUrl": full_url, "resource": dict(resource), "search": {"mode": "match"}}


def operation_outcome(code: str, diagnostics: str, *, severity: str = "error") -> dict[str, Any]:
    """An ``OperationOutcome`` with one issue; ``code`` is an R4 issue-type code."""
    if code not in ISSUE_CODES:
        raise ValueError(f"not an R4 issue-type code: {code!r}")
    if severity not in ISSUE_SEVERITIES:
        raise ValueError(f"not an R4 issue severity: {severity!r}")
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }
