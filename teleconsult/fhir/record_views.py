"""FHIR R4 (4.0.1) views of the encrypted clinical records and of invoices (pure, no I/O).

Each function takes a row of the FHIR store's SELECT (``record_tables.py``) and, for
encrypted columns, the clinic's :class:`~teleconsult.records.fieldcrypt.ClinicKeys`;
it decrypts through the records domain's own ``open_*`` functions (never in SQL) and
returns plain dicts. Callers decrypt only rows of patients the caller has a basis for
(``records.access``), checked before the view is called.

* ``Condition`` / ``AllergyIntolerance``: one per entry of the profile's
  ``conditions`` / ``allergies`` list; the id is ``<patient id>-<12 hex>`` where the
  hex is the start of the clinic's blind index (HMAC under its index key) of the
  normalised name: stable when the list is reordered or an entry is added, and not
  guessable from a dictionary of names; a duplicate name gets ``-<n>`` appended.
* ``MedicationRequest``: one per item of a signed prescription, id
  ``<prescription id>-<item number>``, ``groupIdentifier`` the prescription number.
  Status: ``cancelled`` if cancelled, ``completed`` once expired, else ``active``.
* ``MedicationStatement``: one per statement (``active`` / ``stopped``).
* ``DocumentReference``: a document's metadata; every version is one ``content``
  whose ``attachment.url`` is the authenticated download route (never inline data).
* ``Invoice``: ``payments/fhir.py``'s view plus ``meta.lastUpdated`` and two
  extensions (:data:`PAYMENT_STATUS_URL`, :data:`AMOUNT_PAID_URL`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from teleconsult.fhir.views import instant
from teleconsult.payments.fhir import invoice_resource
from teleconsult.payments.money import Money
from teleconsult.payments.records import Invoice, InvoiceLine, Payment
from teleconsult.records.fieldcrypt import ClinicKeys, normalise
from teleconsult.records.prescriptions.service import open_medication, open_prescription
from teleconsult.records.prescriptions.store import MedicationRow, PrescriptionRow
from teleconsult.records.profiles.service import open_summary
from teleconsult.records.profiles.store import ProfileRow

Resource = dict[str, Any]

CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
UCUM = "http://unitsofmeasure.org"
PRESCRIPTION_NUMBER_SYSTEM = "https://teleconsult.dev/fhir/prescription-number"
DOCUMENT_CATEGORY_SYSTEM = "https://teleconsult.dev/fhir/document-category"
PAYMENT_STATUS_URL = "https://teleconsult.dev/fhir/StructureDefinition/invoice-payment-status"
AMOUNT_PAID_URL = "https://teleconsult.dev/fhir/StructureDefinition/invoice-amount-paid"
AMOUNT_REFUNDED_URL = "https://teleconsult.dev/fhir/StructureDefinition/invoice-amount-refunded"
DOCUMENT_CATEGORIES = {
    "lab_result": "Laboratory result",
    "image": "Image",
    "report": "Report",
    "other": "Other document",
}
MEDICATION_REQUEST_STATUS = {"active": "active", "cancelled": "cancelled", "expired": "completed"}


def _coded(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _patient(patient_id: UUID) -> dict[str, str]:
    return {"reference": f"Patient/{patient_id}", "type": "Patient"}


def _person(user_id: UUID, role: str | None) -> dict[str, str]:
    kind = "Patient" if role == "patient" else "Practitioner"
    return {"reference": f"{kind}/{user_id}", "type": kind}


def entry_ids(keys: ClinicKeys, purpose: str, patient_id: UUID, names: Sequence[str]) -> list[str]:
    """Stable ids of a profile list's entries (module doc). Keyed (the clinic's blind
    index key, kept across rotations): an id in a URL or an access log cannot be
    matched against a dictionary of condition names by someone without the key."""
    seen: dict[str, int] = {}
    ids = []
    for name in names:
        digest = keys.blind_index(purpose, name if normalise(name) else f"raw:{name}").hex()[:12]
        n = seen.get(digest, 0)
        seen[digest] = n + 1
        ids.append(f"{patient_id}-{digest}" + (f"-{n}" if n else ""))
    return ids


def _profile(row: Mapping[str, Any]) -> ProfileRow:
    return ProfileRow(
        patient_id=row["patient_id"],
        sex=None,
        national_id_ct=None,
        emergency_contacts_ct=None,
        blood_type=None,
        allergies_ct=row.get("allergies_ct"),
        conditions_ct=row.get("conditions_ct"),
        updated_at=row["updated_at"],
    )


def condition_resources(keys: ClinicKeys, row: Mapping[str, Any]) -> list[Resource]:
    """The chronic conditions of a ``patient_profiles`` row."""
    summary = open_summary(keys, _profile(row))
    patient_id: UUID = row["patient_id"]
    found = []
    names = [str(c.get("name", "")) for c in summary.conditions]
    for ident, item, name in zip(
        entry_ids(keys, "fhir-condition", patient_id, names),
        summary.conditions,
        names,
        strict=True,
    ):
        resource: Resource = {
            "resourceType": "Condition",
            "id": ident,
            "meta": {"lastUpdated": instant(row["updated_at"])},
            "clinicalStatus": _coded(CONDITION_CLINICAL, "active", "Active"),
            "verificationStatus": _coded(CONDITION_VERIFICATION, "confirmed", "Confirmed"),
            "category": [_coded(CONDITION_CATEGORY, "problem-list-item", "Problem List Item")],
            "code": {"text": name},
            "subject": _patient(patient_id),
        }
        if item.get("since"):
            resource["onsetDateTime"] = str(item["since"])
        found.append(resource)
    return found


def allergy_resources(keys: ClinicKeys, row: Mapping[str, Any]) -> list[Resource]:
    """The allergies of a ``patient_profiles`` row."""
    summary = open_summary(keys, _profile(row))
    patient_id: UUID = row["patient_id"]
    found = []
    names = [str(a.get("substance", "")) for a in summary.allergies]
    for ident, item, name in zip(
        entry_ids(keys, "fhir-allergy", patient_id, names),
        summary.allergies,
        names,
        strict=True,
    ):
        resource: Resource = {
            "resourceType": "AllergyIntolerance",
            "id": ident,
            "meta": {"lastUpdated": instant(row["updated_at"])},
            "clinicalStatus": _coded(ALLERGY_CLINICAL, "active", "Active"),
            "verificationStatus": _coded(ALLERGY_VERIFICATION, "confirmed", "Confirmed"),
            "code": {"text": name},
            "patient": _patient(patient_id),
        }
        severity = item.get("severity")
        if item.get("reaction"):
            reaction: dict[str, Any] = {"manifestation": [{"text": str(item["reaction"])}]}
            if severity in ("mild", "moderate", "severe"):
                reaction["severity"] = severity
            resource["reaction"] = [reaction]
        elif severity in ("mild", "moderate", "severe"):
            # No reaction named: R4 needs a manifestation for reaction.severity.
            resource["note"] = [{"text": f"severity: {severity}"}]
        found.append(resource)
    return found


def _prescription(row: Mapping[str, Any]) -> PrescriptionRow:
    return PrescriptionRow(**{k: row[k] for k in PrescriptionRow.__dataclass_fields__})


def medication_request_resources(keys: ClinicKeys, row: Mapping[str, Any]) -> list[Resource]:
    """One ``MedicationRequest`` per item of a signed prescription."""
    rx = open_prescription(keys, _prescription(row))
    status = MEDICATION_REQUEST_STATUS[rx.status]
    updated = rx.cancelled_at or row["created_at"]
    number = {"system": PRESCRIPTION_NUMBER_SYSTEM, "value": rx.number}
    found = []
    for n, item in enumerate(rx.document["items"], start=1):
        dosage: dict[str, Any] = {
            "sequence": 1,
            "text": f"{item['dose']}, {item['frequency']}, {item['duration_days']} days",
        }
        if item.get("instructions"):
            dosage["patientInstruction"] = item["instructions"]
        found.append(
            {
                "resourceType": "MedicationRequest",
                "id": f"{rx.id}-{n}",
                "meta": {"lastUpdated": instant(updated)},
                "identifier": [number],
                "status": status,
                "intent": "order",
                "medicationCodeableConcept": {"text": item["drug"]},
                "subject": _patient(rx.patient_id),
                "authoredOn": instant(rx.issued_at),
                "requester": {"reference": f"Practitioner/{rx.doctor_id}", "type": "Practitioner"},
                "groupIdentifier": number,
                "dosageInstruction": [dosage],
                "dispenseRequest": {
                    "validityPeriod": {
                        "start": instant(rx.issued_at),
                        "end": instant(rx.expires_at),
                    },
                    "quantity": {"value": item["quantity"]},
                    "expectedSupplyDuration": {
                        "value": item["duration_days"],
                        "unit": "days",
                        "system": UCUM,
                        "code": "d",
                    },
                },
            }
        )
    return found


def medication_statement_resources(keys: ClinicKeys, row: Mapping[str, Any]) -> list[Resource]:
    med = open_medication(
        keys, MedicationRow(**{k: row[k] for k in MedicationRow.__dataclass_fields__})
    )
    details = med.details
    resource: Resource = {
        "resourceType": "MedicationStatement",
        "id": str(med.id),
        "meta": {"lastUpdated": instant(med.created_at)},
        "status": med.status,
        "medicationCodeableConcept": {"text": str(details.get("drug", ""))},
        "subject": _patient(med.patient_id),
        "dateAsserted": instant(med.created_at),
        "informationSource": _person(med.recorded_by, row.get("recorder_role")),
    }
    dose = ", ".join(str(details[k]) for k in ("dose", "frequency") if details.get(k))
    if dose:
        resource["dosage"] = [{"text": dose}]
    if details.get("note"):
        resource["note"] = [{"text": str(details["note"])}]
    # A stop (issue 14, part RG): status "stopped" with its reason and end date.
    if med.stop is not None:
        resource["statusReason"] = [{"text": med.stop.reason}]
        resource["effectivePeriod"] = {"end": med.stop.ended_on.isoformat()}
    return [resource]


def document_reference_resources(
    keys: ClinicKeys, row: Mapping[str, Any], *, public_url: str
) -> list[Resource]:
    """A document's metadata; its versions' content stays behind the download route."""
    title = keys.decrypt("documents", "title_ct", row["id"], row["title_ct"])
    versions = sorted(_json_list(row["versions"]), key=lambda v: -int(v["version"]))
    if not versions:
        return []  # a document exists once its first version is complete
    category = row["category"]
    display = DOCUMENT_CATEGORIES.get(category, category)
    url = f"{public_url}/api/v1/patients/{row['patient_id']}/documents/{row['id']}/content"
    updated = max([row["created_at"], *(_time(v["created_at"]) for v in versions)])
    return [
        {
            "resourceType": "DocumentReference",
            "id": str(row["id"]),
            "meta": {"lastUpdated": instant(updated)},
            "status": "current",
            "type": {**_coded(DOCUMENT_CATEGORY_SYSTEM, category, display), "text": display},
            "subject": _patient(row["patient_id"]),
            "date": instant(row["created_at"]),
            "author": [_person(row["created_by"], row.get("author_role"))],
            "description": title,
            "content": [
                {
                    "attachment": {
                        "contentType": v["content_type"],
                        "url": f"{url}?version={v['version']}",
                        "size": int(v["size"]),
                        "title": f"{title} (version {v['version']})",
                        "creation": instant(_time(v["created_at"])),
                    }
                }
                for v in versions
            ],
        }
    ]


def _json_list(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    loaded = json.loads(value) if isinstance(value, str) else value
    return list(loaded)


def _time(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


_PAYMENT_UUIDS = ("id", "clinic_id", "invoice_id", "patient_id")
_PAYMENT_TIMES = ("created_at", "finalized_at", "expires_at")


def _payment(value: Mapping[str, Any]) -> Payment:
    # Only the fields given: optional ones the payments domain adds keep their defaults.
    fields = {k: value[k] for k in Payment.__dataclass_fields__ if k in value}
    for k in _PAYMENT_UUIDS:
        fields[k] = UUID(str(fields[k]))
    for k in _PAYMENT_TIMES:
        fields[k] = None if fields[k] is None else _time(fields[k])
    return Payment(**fields)


def invoice_row_resource(row: Mapping[str, Any]) -> Resource:
    """An R4 ``Invoice`` from an ``invoices`` row with its lines and payments as JSON."""
    lines = tuple(
        InvoiceLine(int(li["position"]), li["kind"], li["description"], int(li["amount"]))
        for li in _json_list(row["lines"])
    )
    given = dict(row)
    invoice = Invoice(
        **{k: given[k] for k in Invoice.__dataclass_fields__ if k != "lines" and k in given},
        lines=lines,
    )
    payments = [_payment(p) for p in _json_list(row["payments"])]
    resource = invoice_resource(invoice, payments)
    ordered: Resource = {
        "resourceType": "Invoice",
        "id": resource.pop("id"),
        "meta": {"lastUpdated": instant(invoice.updated_at)},
    }
    resource.pop("resourceType")
    ordered.update(resource)
    paid = Money(invoice.paid, invoice.currency).decimal()
    refunded = Money(invoice.refunded, invoice.currency).decimal()
    ordered["extension"] = [
        *resource.get("extension", []),
        {"url": PAYMENT_STATUS_URL, "valueCode": invoice.status},
        {
            "url": AMOUNT_PAID_URL,
            "valueMoney": {"value": float(paid), "currency": invoice.currency},
        },
        {
            "url": AMOUNT_REFUNDED_URL,
            "valueMoney": {"value": float(refunded), "currency": invoice.currency},
        },
    ]
    return ordered
