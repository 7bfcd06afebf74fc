"""FHIR reads, searches and ``Patient/$everything``: who may see what, and the audit.

Access (docs/fhir.md), resource by resource, as the REST API:

* Patient: the clinic's staff, and a patient their own and their dependants' (as a
  guardian with ``read``; PATIENT_READ);
* Practitioner, Organization: the clinic's directory, everyone of the clinic;
* Encounter (and Appointment): as appointments, a doctor their own;
* Observation, Consent, the encrypted records (Condition, AllergyIntolerance,
  MedicationRequest, MedicationStatement, DocumentReference) and
  ``Patient/$everything``: ``records.access`` decides per patient and per request,
  with no cache: the patient themself, their guardian, or a doctor or nurse with a
  care relationship, an active consent or a break-glass access. Front desk and admins
  never (the policy refuses them first). Encrypted rows are decrypted only after that
  check (``record_views.py``);
* Invoice: the payments authorization (a patient their own, front desk and admins the
  clinic's; the policy refuses clinicians).

Every read, search and ``$everything`` writes an audit event in the transaction that
read the rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import asyncpg

from teleconsult.audit.store import AuditEvent, AuditTrail
from teleconsult.core.errors import Forbidden, NotFound
from teleconsult.core.identity import Principal, Role
from teleconsult.core.policy import Action, is_allowed
from teleconsult.fhir import store
from teleconsult.fhir.params import Bounds
from teleconsult.fhir.record_tables import record_tables
from teleconsult.fhir.store import Filter, Reach, Resource, Table
from teleconsult.records.access import dependants_of, ensure_clinical_access
from teleconsult.records.fieldcrypt import ClinicKeys, FieldCrypt

# The record and billing types (issues 14 and 15), in the order they are listed and written.
RECORD_TYPES = (
    "Condition",
    "AllergyIntolerance",
    "MedicationRequest",
    "MedicationStatement",
    "DocumentReference",
    "Invoice",
)
# Types read and searched generically (Appointment, Schedule and Slot have their
# own routes through the scheduling services).
SEARCH_TYPES = (
    "Patient",
    "Practitioner",
    "Organization",
    "Encounter",
    "Observation",
    "Consent",
    *RECORD_TYPES,
)
# Clinical types and the records scope a caller needs a basis for.
CLINICAL_SCOPES = {
    "Observation": "vitals",
    "Consent": "summary",
    "Condition": "summary",
    "AllergyIntolerance": "summary",
    "MedicationRequest": "medications",
    "MedicationStatement": "medications",
    "DocumentReference": "documents",
}
# A patient's compartment (filtered by patient for a patient caller), in the order
# $everything and a patient-level $export write it.
COMPARTMENT_ORDER = ("Patient", "Appointment", "Encounter", "Observation", "Consent", *RECORD_TYPES)
COMPARTMENT_TYPES = frozenset(COMPARTMENT_ORDER)
# Types a doctor sees only for their own appointments.
OWN_DOCTOR_TYPES = frozenset({"Appointment", "Encounter"})
# Invoices follow the payments authorization: a patient their own, the front desk and
# admins the clinic's; clinicians never (policy INVOICE_READ).
BILLING_TYPES = frozenset({"Invoice"})
# What $everything gathers around a patient, in this order.
EVERYTHING_TYPES = ("Patient", "Organization", "Practitioner", *COMPARTMENT_ORDER[1:])


@dataclass(frozen=True)
class SearchQuery:
    ids: list[UUID] | None = None
    last_updated: Bounds = field(default_factory=Bounds)
    date: Bounds = field(default_factory=Bounds)
    patient: UUID | None = None
    patient_given: bool = False  # a patient parameter that names none of ours: no match
    codes: list[str] | None = None
    statuses: list[str] | None = None
    # Types with composite ids (record_tables.py): the exact ids asked for; ``ids``
    # then holds their row ids.
    exact_ids: frozenset[str] | None = None
    count: int = 50
    after_id: UUID | None = None


@dataclass(frozen=True)
class Page:
    resources: list[Resource]
    next_after: UUID | None


async def reach_for(conn: asyncpg.Connection, principal: Principal, resource_type: str) -> Reach:
    """Whose rows of ``resource_type`` the principal may read (clinical types are
    narrowed further per patient by :func:`clinical_patients`): a patient their own
    compartment and their dependants' (as a guardian with ``read``)."""
    patients = None
    if principal.role is Role.PATIENT and resource_type in COMPARTMENT_TYPES:
        patients = await own_patients(conn, principal)
    own = own_doctor(principal, resource_type)
    return Reach(clinic_id=principal.clinic_id, patients=patients, own_doctor=own)


def own_doctor(principal: Principal, resource_type: str) -> UUID | None:
    """A doctor sees appointments and encounters of their own only."""
    if principal.role is Role.DOCTOR and resource_type in OWN_DOCTOR_TYPES:
        return principal.user_id
    return None


async def own_patients(conn: asyncpg.Connection, principal: Principal) -> list[UUID]:
    """A patient caller's own record first, then their dependants'."""
    return [principal.user_id, *await dependants_of(conn, principal)]


async def has_basis(
    conn: asyncpg.Connection, principal: Principal, patient_id: UUID, scope: str
) -> bool:
    """Whether ``records.access`` grants ``scope`` of the patient's record now."""
    try:
        await ensure_clinical_access(conn, principal, patient_id, scope)
    except (Forbidden, NotFound):
        return False
    return True


async def clinical_patients(
    conn: asyncpg.Connection, principal: Principal, scope: str
) -> list[UUID]:
    """Every patient of the caller's clinic whose ``scope`` the caller may read now."""
    if principal.role is Role.PATIENT:
        return await own_patients(conn, principal)
    if principal.role not in (Role.DOCTOR, Role.NURSE):
        return []
    candidates = await store.clinical_candidates(conn, principal.clinic_id, principal.user_id)
    return [p for p in candidates if await has_basis(conn, principal, p, scope)]


def row_id_of(table: Table, resource_id: str) -> UUID | None:
    """The row a resource id names (``<row id>`` or ``<row id>-<suffix>``)."""
    text = resource_id[:36] if table.composite_ids else resource_id
    try:
        return UUID(text)
    except ValueError:
        return None


def patient_of(resource: Resource) -> UUID | None:
    ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
    if isinstance(ref, str) and ref.startswith("Patient/"):
        return UUID(ref.removeprefix("Patient/"))
    return None


class FhirService:
    """Reads FHIR views for a principal; safe to call concurrently."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        audit: AuditTrail,
        base_url: str,
        crypt: FieldCrypt | None = None,
    ) -> None:
        self._pool = pool
        self._audit = audit
        self.crypt = crypt
        self.tables = store.tables(base_url)
        if crypt is not None:  # the encrypted records need the clinic's keys
            self.tables.update(record_tables(base_url.removesuffix("/fhir/R4")))

    async def keys_for(
        self, conn: asyncpg.Connection, table: Table, clinic_id: UUID
    ) -> ClinicKeys | None:
        if table.keyed_view is None:
            return None
        assert self.crypt is not None
        return await self.crypt.for_clinic(conn, clinic_id)

    async def read(
        self,
        principal: Principal,
        resource_type: str,
        resource_id: UUID | str,
        *,
        ip: str | None,
    ) -> Resource:
        table = self.tables[resource_type]
        scope = CLINICAL_SCOPES.get(resource_type)
        row_id = row_id_of(table, str(resource_id))
        async with self._pool.acquire() as conn, conn.transaction():
            reach = (
                Reach(principal.clinic_id)
                if scope
                else await reach_for(conn, principal, resource_type)
            )
            rows = []
            if row_id is not None:
                rows = await store.fetch_rows(conn, table, reach, Filter(ids=[row_id], limit=1))
            if not rows:
                raise NotFound(f"{resource_type}/{resource_id} not found")
            row = rows[0]
            if table.keyed_view is not None:
                # Decrypt only once the caller's basis for this patient is established.
                patient = row["patient_id"]
                if scope is not None:
                    await ensure_clinical_access(conn, principal, patient, scope)
                keys = await self.keys_for(conn, table, row["clinic_id"])
                matches = [r for r in table.render(row, keys) if r["id"] == str(resource_id)]
                if not matches:
                    raise NotFound(f"{resource_type}/{resource_id} not found")
                resource = matches[0]
            else:
                resource = table.to_resource(row)
                patient = patient_of(resource)
                if scope is not None and patient is not None:
                    await ensure_clinical_access(conn, principal, patient, scope)
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "fhir.read",
                    resource_type.lower(),
                    row_id,
                    ip=ip,
                    detail={"patient": None if patient is None else str(patient)},
                ),
                conn,
            )
        return resource

    async def search(
        self, principal: Principal, resource_type: str, query: SearchQuery, *, ip: str | None
    ) -> Page:
        table = self.tables[resource_type]
        scope = CLINICAL_SCOPES.get(resource_type)
        flt = Filter(
            ids=query.ids,
            updated_from=query.last_updated.start,
            updated_before=query.last_updated.before,
            date_from=query.date.start,
            date_before=query.date.before,
            after_id=query.after_id,
            limit=query.count + 1,
            codes=query.codes,
            statuses=query.statuses,
        )
        async with self._pool.acquire() as conn, conn.transaction():
            reach = await reach_for(conn, principal, resource_type)
            patients: Sequence[UUID] | None = reach.patients
            if query.patient_given:
                patients = [] if query.patient is None else [query.patient]
                if scope is None and reach.patients is not None:
                    patients = [p for p in patients if p in reach.patients]
                if scope is not None and patients:
                    await ensure_clinical_access(conn, principal, patients[0], scope)
            elif scope is not None:
                patients = await clinical_patients(conn, principal, scope)
            reach = Reach(reach.clinic_id, patients, reach.panel_doctor, reach.own_doctor)
            raw = await store.fetch_rows(conn, table, reach, flt) if query.count else []
            more = len(raw) > query.count  # pages end on a row: a row may give many
            raw = raw[: query.count]
            keys = await self.keys_for(conn, table, principal.clinic_id) if raw else None
            found = [r for row in raw for r in table.render(row, keys)]
            if query.exact_ids is not None:
                found = [r for r in found if r["id"] in query.exact_ids]
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "fhir.search",
                    resource_type.lower(),
                    query.patient,
                    ip=ip,
                    detail={"count": len(found)},
                ),
                conn,
            )
        return Page(found, raw[-1]["id"] if more and raw else None)

    async def everything(
        self,
        principal: Principal,
        patient_id: UUID,
        *,
        flt: Filter,
        types: tuple[str, ...] = EVERYTHING_TYPES,
        ip: str | None,
    ) -> list[Resource]:
        """Every resource about the patient the caller may see (``Patient/$everything``):
        the caller needs a basis for the record's summary; each clinical type is added
        only where the caller also has a basis for its scope."""
        async with self._pool.acquire() as conn, conn.transaction():
            basis = await ensure_clinical_access(conn, principal, patient_id, "summary")
            found: list[Resource] = []
            doctors: set[UUID] = set()
            for rtype in types:
                if rtype in ("Organization", "Practitioner"):
                    continue  # added below, from what the patient's resources reference
                if rtype not in self.tables:
                    continue
                if rtype in BILLING_TYPES and not is_allowed(principal.role, Action.INVOICE_READ):
                    continue
                scope = CLINICAL_SCOPES.get(rtype)
                if scope is not None and not await has_basis(conn, principal, patient_id, scope):
                    continue
                own = own_doctor(principal, rtype)
                reach = Reach(basis.clinic_id, [patient_id], None, own)
                table = self.tables[rtype]
                keys = await self.keys_for(conn, table, basis.clinic_id)
                for _, resource in await store.fetch(conn, table, reach, flt, keys=keys):
                    found.append(resource)
                    doctors.update(_practitioners(resource))
            directory = Reach(basis.clinic_id)
            if "Organization" in types:
                orgs = await store.fetch(conn, self.tables["Organization"], directory, Filter())
                found[1:1] = [r for _, r in orgs]
            if "Practitioner" in types and doctors:
                people = await store.fetch(
                    conn, self.tables["Practitioner"], directory, Filter(ids=sorted(doctors))
                )
                found.extend(r for _, r in people)
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "fhir.everything",
                    "patient",
                    patient_id,
                    ip=ip,
                    detail={"count": len(found), "basis": basis.kind},
                ),
                conn,
            )
        return found


def _practitioners(resource: dict[str, Any]) -> set[UUID]:
    found: set[UUID] = set()
    refs = [p.get("actor") or p.get("individual") for p in resource.get("participant", [])]
    refs += list(resource.get("performer", []))
    for ref in refs:
        text = (ref or {}).get("reference", "")
        if isinstance(text, str) and text.startswith("Practitioner/"):
            try:
                found.add(UUID(text.removeprefix("Practitioner/")))
            except ValueError:
                continue
    return found
