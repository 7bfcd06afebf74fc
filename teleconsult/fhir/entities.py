"""FHIR R4 (4.0.1) views of people, the clinic and visits (pure, no I/O).

``Patient`` and ``Practitioner`` come from the clinic's user accounts, the
``Organization`` is the clinic, and an ``Encounter`` is an appointment that took
place (or is taking place): ``in_progress`` → ``in-progress``, ``completed`` →
``finished``. Requested, confirmed, cancelled and no-show appointments are not
encounters: FHIR keeps those on the ``Appointment`` alone. Ids are the database
UUIDs (valid FHIR ids); an Encounter has its appointment's id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from teleconsult.accounts.records import ClinicRecord, UserRecord
from teleconsult.fhir.views import instant, service_type
from teleconsult.scheduling.records import Appointment, AppointmentStatus, ServiceKind

# http://terminology.hl7.org/CodeSystem/v3-ActCode (R4's Encounter.class binding)
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ENCOUNTER_CLASS = {
    ServiceKind.VIDEO: ("VR", "virtual"),
    ServiceKind.AUDIO: ("VR", "virtual"),
    ServiceKind.CHAT: ("VR", "virtual"),
    ServiceKind.IN_PERSON: ("AMB", "ambulatory"),
}
ENCOUNTER_STATUSES = {
    AppointmentStatus.IN_PROGRESS: "in-progress",
    AppointmentStatus.COMPLETED: "finished",
}
# http://terminology.hl7.org/CodeSystem/v3-ParticipationType
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


@dataclass(frozen=True)
class Visit:
    """An appointment that became an encounter, with its video consultation's times."""

    appointment: Appointment
    started_at: datetime | None = None
    ended_at: datetime | None = None


def is_encounter(appt: Appointment) -> bool:
    return appt.status in ENCOUNTER_STATUSES


def _meta(updated_at: datetime) -> dict[str, Any]:
    return {"lastUpdated": instant(updated_at)}


def patient_resource(user: UserRecord) -> dict[str, Any]:
    """An R4 ``Patient``: the account's name, contact points and birth date."""
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": str(user.id),
        "meta": _meta(user.updated_at),
        "active": user.status == "active",
        "name": [{"text": user.full_name}],
    }
    telecom = []
    if user.phone:
        telecom.append({"system": "phone", "value": user.phone, "use": "mobile"})
    telecom.append({"system": "email", "value": user.email})
    resource["telecom"] = telecom
    if user.date_of_birth is not None:
        resource["birthDate"] = user.date_of_birth.isoformat()
    resource["managingOrganization"] = {"reference": f"Organization/{user.clinic_id}"}
    return resource


def practitioner_resource(user: UserRecord) -> dict[str, Any]:
    """An R4 ``Practitioner`` for a doctor or nurse: name and work e-mail only."""
    return {
        "resourceType": "Practitioner",
        "id": str(user.id),
        "meta": _meta(user.updated_at),
        "active": user.status == "active",
        "name": [{"text": user.full_name}],
        "telecom": [{"system": "email", "value": user.email, "use": "work"}],
    }


def organization_resource(clinic: ClinicRecord) -> dict[str, Any]:
    """An R4 ``Organization``: the clinic (a healthcare provider)."""
    return {
        "resourceType": "Organization",
        "id": str(clinic.id),
        "meta": _meta(clinic.created_at),
        "active": True,
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": "prov",
                        "display": "Healthcare Provider",
                    }
                ]
            }
        ],
        "name": clinic.name,
    }


def encounter_resource(visit: Visit) -> dict[str, Any]:
    """An R4 ``Encounter`` for an in-progress or completed appointment."""
    appt = visit.appointment
    status = ENCOUNTER_STATUSES.get(appt.status)
    if status is None:
        raise ValueError(f"appointment {appt.id} ({appt.status}) is not an encounter")
    code, display = ENCOUNTER_CLASS[appt.service]
    start = visit.started_at or appt.starts_at
    period: dict[str, str] = {"start": instant(start)}
    if status == "finished":
        end = visit.ended_at or appt.ends_at
        period["end"] = instant(max(end, start))
    return {
        "resourceType": "Encounter",
        "id": str(appt.id),
        "meta": _meta(appt.updated_at),
        "status": status,
        "class": {"system": ACT_CODE, "code": code, "display": display},
        "serviceType": service_type(appt.service),
        "subject": {"reference": f"Patient/{appt.patient_id}", "type": "Patient"},
        "participant": [
            {
                "type": [
                    {
                        "coding": [
                            {
                                "system": PARTICIPATION_TYPE,
                                "code": "PPRF",
                                "display": "primary performer",
                            }
                        ]
                    }
                ],
                "individual": {
                    "reference": f"Practitioner/{appt.doctor_id}",
                    "type": "Practitioner",
                },
            }
        ],
        "appointment": [{"reference": f"Appointment/{appt.id}"}],
        "period": period,
        "serviceProvider": {"reference": f"Organization/{appt.clinic_id}"},
    }
