"""FHIR R4 read, search and ``Patient/$everything`` (``/fhir/R4/...``; transport only).

Patient, Practitioner, Organization, Encounter, Observation, Consent, Condition,
AllergyIntolerance, MedicationRequest, MedicationStatement, DocumentReference and
Invoice are read and searched here (Appointment, Schedule and Slot are in
``routes.py``). Common parameters:
``_id``, ``_lastUpdated`` (prefixes eq, ge, gt, le, lt; repeatable), ``_count``
(at most 500) and, where the type has them, ``patient``/``subject``, ``date`` and
``code`` (Observation: LOINC, ``[system|]code``, comma-separated).
Searches page by id with an opaque ``_cursor`` in the Bundle's ``next`` link.
Unknown parameters are ignored (FHIR's lenient handling). Errors are
OperationOutcomes (``outcome.py``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.fhir import params as p
from teleconsult.fhir import views as fhir
from teleconsult.fhir.service import EVERYTHING_TYPES, FhirService, SearchQuery
from teleconsult.fhir.store import Filter
from teleconsult.scheduling.routes import PUBLIC_URL

api = Api()
FHIR = web.AppKey("fhir", FhirService)


def base_url(req: ApiRequest) -> str:
    return f"{req.request.app[PUBLIC_URL]}/fhir/R4"


def fhir_response(resource: dict[str, Any], *, status: int = 200) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(resource).encode(), content_type=fhir.CONTENT_TYPE
    )


class CommonSearch(BaseModel):
    """Documented for clients and fuzzers; the handler reads repeated values itself."""

    model_config = ConfigDict(populate_by_name=True)

    id_: str | None = Field(default=None, alias="_id", description="Comma-separated ids")
    last_updated: str | None = Field(
        default=None, alias="_lastUpdated", description="e.g. ge2024-01-01 (repeatable)"
    )
    count: str | None = Field(default=None, alias="_count", description="page size, max 500")
    cursor: str | None = Field(default=None, alias="_cursor", description="from a next link")


class EncounterSearch(CommonSearch):
    patient: str | None = Field(default=None, description="Patient/<id> or <id>")
    subject: str | None = Field(default=None, description="Patient/<id> or <id>")
    date: str | None = Field(default=None, description="e.g. ge2024-05-01 (repeatable)")


class ObservationSearch(EncounterSearch):
    code: str | None = Field(default=None, description="LOINC code, e.g. 8867-4")


class ConsentSearch(CommonSearch):
    patient: str | None = Field(default=None, description="Patient/<id> or <id>")
    date: str | None = Field(default=None, description="when granted, e.g. ge2024-05-01")


# --- records and invoices (issues 14 and 15) ---
class PatientSearch(CommonSearch):
    patient: str | None = Field(default=None, description="Patient/<id> or <id>")


class SubjectSearch(PatientSearch):
    subject: str | None = Field(default=None, description="Patient/<id> or <id>")


class MedicationRequestSearch(PatientSearch):
    subject: str | None = Field(default=None, description="Patient/<id> or <id>")
    status: str | None = Field(default=None, description="active, cancelled or completed")
    authoredon: str | None = Field(default=None, description="e.g. ge2024-05-01")


class MedicationStatementSearch(PatientSearch):
    subject: str | None = Field(default=None, description="Patient/<id> or <id>")
    status: str | None = Field(default=None, description="active or stopped")


class DocumentReferenceSearch(PatientSearch):
    subject: str | None = Field(default=None, description="Patient/<id> or <id>")
    date: str | None = Field(default=None, description="e.g. ge2024-05-01")
    type: str | None = Field(default=None, description="lab_result, image, report, other")


class InvoiceSearch(CommonSearch):
    patient: str | None = Field(default=None, description="Patient/<id> or <id>")
    subject: str | None = Field(default=None, description="Patient/<id> or <id>")
    status: str | None = Field(default=None, description="issued, balanced or cancelled")
    date: str | None = Field(default=None, description="when issued, e.g. ge2024-05-01")


# Per type: its patient parameters, whether it has `date`, whether it has `code`.
PATIENT_PARAMS = {
    "Encounter": ("patient", "subject"),
    "Observation": ("patient", "subject"),
    "Consent": ("patient",),
    "Condition": ("patient", "subject"),
    "AllergyIntolerance": ("patient",),
    "MedicationRequest": ("patient", "subject"),
    "MedicationStatement": ("patient", "subject"),
    "DocumentReference": ("patient", "subject"),
    "Invoice": ("patient", "subject"),
}
# Per type, the name of its date parameter.
DATE_PARAMS = {
    "Encounter": "date",
    "Observation": "date",
    "Consent": "date",
    "MedicationRequest": "authoredon",
    "MedicationStatement": "effective",
    "DocumentReference": "date",
    "Invoice": "date",
}
LOINC = "http://loinc.org"
# Per type, its token parameter and that parameter's code system.
CODE_PARAMS = {
    "Observation": ("code", LOINC),
    "DocumentReference": ("type", "https://teleconsult.dev/fhir/document-category"),
}
STATUS_TYPES = frozenset({"MedicationRequest", "MedicationStatement", "Invoice"})
COMPOSITE_ID_TYPES = frozenset({"Condition", "AllergyIntolerance", "MedicationRequest"})


class EverythingQuery(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    since: str | None = Field(default=None, alias="_since", description="an instant")
    type_: str | None = Field(default=None, alias="_type", description="Comma-separated types")


def _search_query(req: web.Request, resource_type: str) -> SearchQuery:
    q = req.query
    ids = p.parse_ids("_id", q.getall("_id")) if "_id" in q else None
    exact_ids: frozenset[str] | None = None
    if resource_type in COMPOSITE_ID_TYPES and "_id" in q:
        exact_ids = frozenset(
            part.strip() for v in q.getall("_id") for part in v.split(",") if part.strip()
        )
        ids = p.parse_ids("_id", [i[:36] for i in exact_ids])
    cursor = q.get("_cursor")
    after_id = None
    if cursor is not None:
        try:
            after_id = UUID(cursor)
        except ValueError:
            raise p.SearchParamError("_cursor", "not a cursor this server issued") from None
    patient = None
    given = False
    for name in PATIENT_PARAMS.get(resource_type, ()):
        for value in q.getall(name, []):
            ref = p.parse_reference(name, value, "Patient")
            if given and ref != patient:
                ref = None  # two different patients: nothing matches both
            patient, given = ref, True
    date_name = DATE_PARAMS.get(resource_type)
    date = p.parse_bounds(date_name, q.getall(date_name, [])) if date_name else None
    codes: list[str] | None = None
    code_name, system = CODE_PARAMS.get(resource_type, ("", ""))
    if code_name and code_name in q:
        codes = [c for v in q.getall(code_name) for c in p.parse_token(code_name, v, system)]
    statuses: list[str] | None = None
    if resource_type in STATUS_TYPES and "status" in q:
        statuses = [s.strip() for v in q.getall("status") for s in v.split(",") if s.strip()]
    return SearchQuery(
        ids=ids,
        last_updated=p.parse_bounds("_lastUpdated", q.getall("_lastUpdated", [])),
        date=date or p.Bounds(),
        patient=patient,
        patient_given=given,
        count=p.parse_count(q.get("_count")),
        after_id=after_id,
        codes=codes,
        statuses=statuses,
        exact_ids=exact_ids,
    )


def _next_link(req: web.Request, base: str, resource_type: str, after: UUID) -> str:
    pairs = [(k, v) for k, v in req.query.items() if k != "_cursor"]
    pairs.append(("_cursor", str(after)))
    return f"{base}/{resource_type}?{urlencode(pairs)}"


def _declare(
    resource_type: str, action: Action, query: type[BaseModel], *, string_id: bool = False
) -> None:
    id_name = f"{resource_type.lower()}_id"

    async def read(req: ApiRequest) -> web.Response:
        ident = req.request.match_info[id_name] if string_id else req.params[id_name]
        resource = await req.request.app[FHIR].read(req.principal, resource_type, ident, ip=req.ip)
        return fhir_response(resource)

    async def search(req: ApiRequest) -> web.Response:
        query = _search_query(req.request, resource_type)
        page = await req.request.app[FHIR].search(req.principal, resource_type, query, ip=req.ip)
        base = base_url(req)
        qs = req.request.query_string
        self_link = f"{base}/{resource_type}" + (f"?{qs}" if qs else "")
        next_link = (
            None
            if page.next_after is None
            else _next_link(req.request, base, resource_type, page.next_after)
        )
        return fhir_response(
            fhir.bundle(page.resources, base_url=base, self_link=self_link, next_link=next_link)
        )

    read.__doc__ = f"An R4 {resource_type} by id (404 OperationOutcome when not visible)."
    search.__doc__ = f"A searchset Bundle of the {resource_type} resources the caller may see."
    api.op(
        "GET",
        f"/fhir/R4/{resource_type}/{{{id_name}}}",
        operation_id=f"fhirRead{resource_type}",
        summary=f"FHIR R4 {resource_type}",
        tag="fhir",
        action=action,
        media_type=fhir.CONTENT_TYPE,
        string_params=(id_name,) if string_id else (),
    )(read)
    api.op(
        "GET",
        f"/fhir/R4/{resource_type}",
        operation_id=f"fhirSearch{resource_type}",
        summary=f"FHIR R4 {resource_type} search",
        tag="fhir",
        action=action,
        query=query,
        media_type=fhir.CONTENT_TYPE,
    )(search)


@api.op(
    "GET",
    "/fhir/R4/Patient/{patient_id}/$everything",
    operation_id="fhirPatientEverything",
    summary="FHIR R4 Patient/$everything: the patient's resources the caller may see",
    tag="fhir",
    action=Action.FHIR_EVERYTHING,
    query=EverythingQuery,
    media_type=fhir.CONTENT_TYPE,
)
async def patient_everything(req: ApiRequest) -> web.Response:
    """A searchset Bundle: the Patient, the clinic, their appointments and encounters and
    the practitioners these reference. The patient themself, or a doctor with a care
    relationship; ``_since`` and ``_type`` narrow it."""
    q = req.request.query
    since = p.parse_instant("_since", q["_since"]) if "_since" in q else None
    types = tuple(
        p.parse_types("_type", q["_type"], EVERYTHING_TYPES) if "_type" in q else EVERYTHING_TYPES
    )
    patient_id = req.params["patient_id"]
    resources = await req.request.app[FHIR].everything(
        req.principal, patient_id, flt=Filter(updated_after=since), types=types, ip=req.ip
    )
    base = base_url(req)
    qs = req.request.query_string
    self_link = f"{base}/Patient/{patient_id}/$everything" + (f"?{qs}" if qs else "")
    return fhir_response(
        fhir.bundle(resources, base_url=base, self_link=self_link, next_link=None, total=None)
    )


# Registered after $everything so that its path wins over /Patient/{patient_id}.
_declare("Patient", Action.FHIR_PATIENT_READ, CommonSearch)
_declare("Practitioner", Action.FHIR_DIRECTORY_READ, CommonSearch)
_declare("Organization", Action.FHIR_DIRECTORY_READ, CommonSearch)
_declare("Encounter", Action.FHIR_ENCOUNTER_READ, EncounterSearch)
_declare("Observation", Action.FHIR_CLINICAL_READ, ObservationSearch)
_declare("Consent", Action.FHIR_CLINICAL_READ, ConsentSearch)
# --- records and invoices (issues 14 and 15) ---
_declare("Condition", Action.FHIR_CLINICAL_READ, SubjectSearch, string_id=True)
_declare("AllergyIntolerance", Action.FHIR_CLINICAL_READ, PatientSearch, string_id=True)
_declare("MedicationRequest", Action.FHIR_CLINICAL_READ, MedicationRequestSearch, string_id=True)
_declare("MedicationStatement", Action.FHIR_CLINICAL_READ, MedicationStatementSearch)
_declare("DocumentReference", Action.FHIR_CLINICAL_READ, DocumentReferenceSearch)
_declare("Invoice", Action.INVOICE_READ, InvoiceSearch)
