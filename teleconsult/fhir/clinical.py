"""FHIR R4 (4.0.1) views of clinical records (pure, no I/O): Observation and Consent.

* ``Observation``: a vital sign (migration 0016 ``vital_signs``), category
  ``vital-signs``, coded with LOINC and valued in UCUM as the records code table
  (``records/vitals/codes.py``) has it. Blood pressure is the LOINC panel 85354-9
  with systolic (8480-6) and diastolic (8462-4) components. The performer is the
  Patient when the patient recorded it, a Practitioner otherwise.
* ``Consent``: a patient's consent to share their record (``consents``), a
  ``patient-privacy`` opt-in (``OPTIN``) permitting its grantee (a Practitioner or
  an Organization) for the period granted; ``inactive`` once revoked or expired.
  The records scope (summary, vitals, notes, medications, all) is a code of the
  local system :data:`CONSENT_SCOPE_SYSTEM`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from teleconsult.fhir.views import instant
from teleconsult.records.vitals.codes import BLOOD_PRESSURE_PANEL, KINDS

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_CATEGORY_LOINC = "59284-0"  # Patient Consent
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CONSENT_SCOPE_SYSTEM = "https://teleconsult.dev/fhir/record-scope"


def _number(value: Decimal | float | int) -> float | int:
    number = Decimal(value)
    return int(number) if number == number.to_integral_value() else float(number)


def _quantity(value: Decimal | float, unit: str) -> dict[str, Any]:
    return {"value": _number(value), "unit": unit, "system": UCUM, "code": unit}


def _loinc(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}


def observation_resource(row: Mapping[str, Any]) -> dict[str, Any]:
    """An R4 vital-signs ``Observation`` from a ``vital_signs`` row."""
    kind = KINDS.get(row["kind"])
    unit = row["unit"]
    code = kind.units.get(unit) if kind is not None else None
    display = code.display if code is not None else row["kind"].replace("_", " ")
    patient_id: UUID = row["patient_id"]
    recorder: UUID = row["recorded_by"]
    performer = (
        f"Patient/{recorder}" if recorder == patient_id or row["source"] == "patient" else None
    ) or f"Practitioner/{recorder}"
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": str(row["id"]),
        "meta": {"lastUpdated": instant(row["created_at"])},
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": OBSERVATION_CATEGORY,
                        "code": "vital-signs",
                        "display": "Vital Signs",
                    }
                ]
            }
        ],
    }
    if kind is not None and kind.panel == BLOOD_PRESSURE_PANEL and kind.second is not None:
        resource["code"] = _loinc(
            BLOOD_PRESSURE_PANEL, "Blood pressure panel with all children optional"
        )
    else:
        resource["code"] = _loinc(row["loinc"], display)
    resource["subject"] = {"reference": f"Patient/{patient_id}", "type": "Patient"}
    resource["effectiveDateTime"] = instant(row["measured_at"])
    resource["issued"] = instant(row["created_at"])
    resource["performer"] = [{"reference": performer}]
    if kind is not None and kind.panel == BLOOD_PRESSURE_PANEL and kind.second is not None:
        first = next(iter(kind.units.values()))
        components = [
            {
                "code": _loinc(first.loinc, first.display),
                "valueQuantity": _quantity(row["value"], unit),
            }
        ]
        if row["value2"] is not None:
            components.append(
                {
                    "code": _loinc(kind.second.loinc, kind.second.display),
                    "valueQuantity": _quantity(row["value2"], unit),
                }
            )
        resource["component"] = components
    else:
        resource["valueQuantity"] = _quantity(row["value"], unit)
    return resource


def consent_status(row: Mapping[str, Any], now: datetime) -> str:
    if row["revoked_at"] is not None or row["expires_at"] <= now:
        return "inactive"
    return "active"


def consent_resource(row: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """An R4 ``Consent`` (patient-privacy opt-in) from a ``consents`` row."""
    grantee = (
        f"Practitioner/{row['grantee_user_id']}"
        if row["grantee_user_id"] is not None
        else f"Organization/{row['grantee_clinic_id']}"
    )
    updated = row["revoked_at"] or row["granted_at"]
    end = min(row["revoked_at"] or row["expires_at"], row["expires_at"])
    return {
        "resourceType": "Consent",
        "id": str(row["id"]),
        "meta": {"lastUpdated": instant(updated)},
        "status": consent_status(row, now),
        "scope": {
            "coding": [
                {"system": CONSENT_SCOPE, "code": "patient-privacy", "display": "Privacy Consent"}
            ]
        },
        "category": [_loinc(CONSENT_CATEGORY_LOINC, "Patient Consent")],
        "patient": {"reference": f"Patient/{row['patient_id']}", "type": "Patient"},
        "dateTime": instant(row["granted_at"]),
        "performer": [{"reference": f"Patient/{row['granted_by']}"}],
        "organization": [{"reference": f"Organization/{row['clinic_id']}"}],
        "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN", "display": "opt-in"}]},
        "provision": {
            "type": "permit",
            "period": {
                "start": instant(row["granted_at"]),
                "end": instant(max(end, row["granted_at"])),
            },
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": PARTICIPATION_TYPE,
                                "code": "IRCP",
                                "display": "information recipient",
                            }
                        ]
                    },
                    "reference": {"reference": grantee},
                }
            ],
            "code": [
                {
                    "coding": [{"system": CONSENT_SCOPE_SYSTEM, "code": row["scope"]}],
                    "text": f"record scope: {row['scope']}",
                }
            ],
        },
    }
