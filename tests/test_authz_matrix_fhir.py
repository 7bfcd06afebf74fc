"""FHIR routes (issue 14, part F), called by every role, against a written policy.

The fifth table of the authorization matrix, beside ``tests/test_authz_matrix.py``
(helpers, route-coverage tests). FHIR is written by hand and does not import
``teleconsult.core.policy``; docs/fhir.md is its prose. Denials under /fhir/ are
OperationOutcomes carrying the problem code (``check`` knows).

Target kinds:

* Patient and ``$everything``: the patient caller themself (the clinic's doctor has
  appointments with them) / the clinic's other patient (the doctor has one with them
  too) / the other clinic's patient;
* Practitioner: the clinic's doctor / the other clinic's doctor; Organization: the
  clinic / the other clinic;
* Encounter: completed appointments, as the scheduling table's appointment kinds;
* Group export: the clinic's doctor's panel / the colleague's panel / the other
  clinic's doctor;
* export status, cancel and files: a job of the caller / of a colleague in the clinic
  / of the other clinic's admin.

The in-server export worker is off: kick-offs queue jobs, the status and file rows
use finished jobs written straight to the database with their file on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast
from uuid import UUID, uuid4

import asyncpg
import pytest

from teleconsult.core.identity import Role
from teleconsult.core.settings import Settings, load_settings
from teleconsult.fhir.record_views import entry_ids
from teleconsult.records.http import RECORDS_DEPS
from teleconsult.server.app import SETTINGS
from tests.authzkit import (
    APPOINTMENT_OBJECT,
    SchedulingWorld,
    scheduling_world,
)
from tests.conftest import settings_env
from tests.fhirseed import ALLERGIES, CONDITIONS, seed_records
from tests.test_authz_matrix import (
    CLINIC_OBJECT,
    NO_ID,
    PATIENT_OBJECT,
    A,
    Client,
    F,
    N,
    Prepared,
    Rule,
    Target,
    assert_malformed_ids_not_found,
    assert_route_follows_policy,
    read,
    row,
)
from tests.world import Account, Tenant

R4 = "/fhir/R4"
GROUP = (Target.OWN, Target.SAME_CLINIC_OTHER_DOCTOR, Target.OTHER_TENANT)
JOB = (Target.OWN, Target.SAME_CLINIC_OTHER_DOCTOR, Target.OTHER_TENANT)
ALL_A = ((A,), (A,), (A,), (A,), (A,))
CLINICAL_LIST = ((A,), (A,), (A,), (F,), (F,))
EXPORTERS = ((F,), (A,), (F,), (F,), (A,))
OWN_JOB = ((F, F, F), (A, N, N), (F, F, F), (F, F, F), (A, N, N))
BULK = {"Accept": "application/fhir+json", "Prefer": "respond-async"}
FILE = "00-Patient.ndjson"

# The written policy. Columns: patient, doctor, nurse, receptionist, admin; inside each,
# one answer per target kind, in the order of the row's target tuple (see above).
# fmt: off
FHIR: dict[str, Rule] = {
    #   patient       doctor        nurse         reception.    admin
    "fhirReadPatient": row(f"GET {R4}/Patient/{{patient_id}}", PATIENT_OBJECT,
        (A, N, N),    (A, A, N),    (A, A, N),    (A, A, N),    (A, A, N)),
    "fhirSearchPatient": row(f"GET {R4}/Patient", NO_ID, *ALL_A),
    # records.access: the doctor has a recent appointment with both patients of the
    # clinic; the nurse has no basis (403 in the clinic: break-glass is possible).
    "fhirPatientEverything": row(f"GET {R4}/Patient/{{patient_id}}/$everything",
        PATIENT_OBJECT,
        (A, N, N),    (A, A, N),    (F, F, N),    (F, F, F),    (F, F, F)),
    # A vital sign / a consent of the patient caller / of the other patient / of the
    # other clinic's patient.
    "fhirReadObservation": row(f"GET {R4}/Observation/{{observation_id}}", PATIENT_OBJECT,
        (A, N, N),    (A, A, N),    (F, F, N),    (F, F, F),    (F, F, F)),
    "fhirSearchObservation": row(f"GET {R4}/Observation", NO_ID, *CLINICAL_LIST),
    "fhirReadConsent": row(f"GET {R4}/Consent/{{consent_id}}", PATIENT_OBJECT,
        (A, N, N),    (A, A, N),    (F, F, N),    (F, F, F),    (F, F, F)),
    "fhirSearchConsent": row(f"GET {R4}/Consent", NO_ID, *CLINICAL_LIST),
    # --- records and invoices (issues 14 and 15): a record of the patient caller / of
    # the other patient / of the other clinic's patient, as Observation. Invoices follow
    # the payments authorization: the patient their own, front desk and admins the
    # clinic's, clinicians never.
    "fhirReadCondition": row(f"GET {R4}/Condition/{{condition_id}}", PATIENT_OBJECT,
        (A, N, N),    (A, A, N),    (F, F, N),    (F, F, F),    (F, F, F)),
    "fhirSearchCondition": row(f"GET {R4}/Condition", NO_ID, *CLINICAL_LIST),
    "fhirReadAllergyIntolerance": row(
        f"GET {R4}/AllergyIntolerance/{{allergyintolerance_id}}", PATIENT_OBJECT,
        (A, N, N),    (A, A, N),    (F, F, N),    (F, F, F),    (F, F, F)),
    "fhirSearchAllergyIntolerance": row(f"GET {R4}/AllergyIntolerance", NO_ID,
        *CLINICAL_LIST),
    "fhirReadMedicationRequest": row(
        f"GET {R4}/MedicationRequest/{{medicationrequest_id}}", PATIENT_OBJECT,
        (A, N, N),    (A, A, N),    (F, F, N),    (F, F, F),    (F, F, F)),
    "fhirSearchMedicationRequest": row(f"GET {R4}/MedicationRequest", NO_ID, *CLINICAL_LIST),
    "fhirReadMedicationStatement": row(
        f"GET {R4}/MedicationStatement/{{medicationstatement_id}}", PATIENT_OBJECT,
        (A, N, N),    (A, A, N),    (F, F, N),    (F, F, F),    (F, F, F)),
    "fhirSearchMedicationStatement": row(f"GET {R4}/MedicationStatement", NO_ID,
        *CLINICAL_LIST),
    "fhirReadDocumentReference": row(
        f"GET {R4}/DocumentReference/{{documentreference_id}}", PATIENT_OBJECT,
        (A, N, N),    (A, A, N),    (F, F, N),    (F, F, F),    (F, F, F)),
    "fhirSearchDocumentReference": row(f"GET {R4}/DocumentReference", NO_ID, *CLINICAL_LIST),
    "fhirReadInvoice": row(f"GET {R4}/Invoice/{{invoice_id}}", PATIENT_OBJECT,
        (A, N, N),    (F, F, F),    (F, F, F),    (A, A, N),    (A, A, N)),
    "fhirSearchInvoice": row(f"GET {R4}/Invoice", NO_ID,
        (A,),         (F,),         (F,),         (A,),         (A,)),
    "fhirReadPractitioner": row(f"GET {R4}/Practitioner/{{practitioner_id}}", CLINIC_OBJECT,
        (A, N),       (A, N),       (A, N),       (A, N),       (A, N)),
    "fhirSearchPractitioner": row(f"GET {R4}/Practitioner", NO_ID, *ALL_A),
    "fhirReadOrganization": row(f"GET {R4}/Organization/{{organization_id}}", CLINIC_OBJECT,
        (A, N),       (A, N),       (A, N),       (A, N),       (A, N)),
    "fhirSearchOrganization": row(f"GET {R4}/Organization", NO_ID, *ALL_A),
    "fhirReadEncounter": row(f"GET {R4}/Encounter/{{encounter_id}}", APPOINTMENT_OBJECT,
        (A, N, A, N), (A, A, N, N), (A, A, A, N), (A, A, A, N), (A, A, A, N)),
    "fhirSearchEncounter": row(f"GET {R4}/Encounter", NO_ID, *ALL_A),
    "fhirExportSystem": row(f"GET {R4}/$export", NO_ID, *EXPORTERS),
    "fhirExportPatients": row(f"GET {R4}/Patient/$export", NO_ID, *EXPORTERS),
    "fhirExportGroup": row(f"GET {R4}/Group/{{group_id}}/$export", GROUP,
        (F, F, F),    (A, N, N),    (F, F, F),    (F, F, F),    (A, A, N)),
    "fhirExportStatus": row(f"GET {R4}/$export-status/{{job_id}}", JOB, *OWN_JOB),
    "fhirExportCancel": row(f"DELETE {R4}/$export-status/{{job_id}}", JOB, *OWN_JOB),
    "fhirExportFile": row(f"GET {R4}/$export-file/{{job_id}}/{{file_name}}", JOB, *OWN_JOB),
}
# fmt: on
AUTHENTICATED = sorted(FHIR)


class FhirWorld(SchedulingWorld):
    """The scheduling world, with completed appointments (encounters) per target kind."""

    encounters: dict[Target, UUID]
    vitals: dict[Target, UUID]
    consents: dict[Target, UUID]
    # Records and invoices (issues 14 and 15): per FHIR type, per target, the id.
    records: dict[str, dict[Target, str]]

    def patient(self, target: Target) -> Account:
        assert self.own.other_patient is not None
        return {
            Target.OWN: self.own[Role.PATIENT],
            Target.SAME_CLINIC_OTHER_PATIENT: self.own.other_patient,
            Target.OTHER_TENANT: self.other[Role.PATIENT],
        }[target]

    def clinic(self, target: Target) -> Tenant:
        return self.other if target is Target.OTHER_TENANT else self.own

    async def job(self, target: Target, caller: Account | None) -> UUID:
        """A finished export of ``target``'s owner, with one (empty) file on disk."""
        own_admin = self.own[Role.ADMIN]
        if target is Target.OWN:
            owner = caller or own_admin
        elif target is Target.SAME_CLINIC_OTHER_DOCTOR:
            owner = self.own[Role.DOCTOR] if caller is own_admin else own_admin
        else:
            owner = self.other[Role.ADMIN]
        job_id: UUID = await self.pool.fetchval(
            """
            INSERT INTO fhir_export_jobs (clinic_id, requested_by, requester_role, level,
                types, request_url, status, finished_at)
            VALUES ($1, $2, $3, 'system', '{Patient}', 'http://test/fhir/R4/$export',
                'completed', now())
            RETURNING id
            """,
            owner.clinic_id,
            owner.user_id,
            owner.role.value,
        )
        await self.pool.execute(
            "INSERT INTO fhir_export_files (job_id, seq, resource_type, file_name, count) "
            "VALUES ($1, 0, 'Patient', $2, 0)",
            job_id,
            FILE,
        )
        folder = self.export_dir / str(job_id)
        folder.mkdir(parents=True)
        (folder / FILE).write_text("")
        return self._note_foreign(self.clinic(target), job_id)

    @property
    def export_dir(self) -> Path:
        return cast(Path, self.client.app[SETTINGS].fhir.export_dir)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(settings_env(database_url, tmp_path, FHIR_EXPORT_IN_SERVER="false"))


@pytest.fixture
async def world(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> FhirWorld:
    world = await scheduling_world(FhirWorld, client, app_pool, tenant, other_tenant)
    world.encounters = {}
    for target in APPOINTMENT_OBJECT:  # also the doctor's care relationships
        world.encounters[target] = await world.appointment(
            target, status="completed", starts_at=world.past_slot()
        )
    world.vitals, world.consents = {}, {}
    for target in PATIENT_OBJECT:
        clinic, patient = world.clinic(target), world.patient(target)
        world.vitals[target] = world._note_foreign(
            clinic,
            await app_pool.fetchval(
                "INSERT INTO vital_signs (clinic_id, patient_id, kind, loinc, value, unit, "
                "measured_at, recorded_by, source) VALUES ($1, $2, 'heart_rate', '8867-4', 72, "
                "'/min', now(), $2, 'patient') RETURNING id",
                clinic.clinic_id,
                patient.user_id,
            ),
        )
        world.consents[target] = world._note_foreign(
            clinic,
            await app_pool.fetchval(
                "INSERT INTO consents (clinic_id, patient_id, grantee_clinic_id, scope, "
                "granted_by, expires_at, revoked_at, revoked_by) VALUES ($1, $2, $1, 'notes', "
                "$2, now() + interval '1 day', now(), $2) RETURNING id",
                clinic.clinic_id,
                patient.user_id,
            ),
        )
    world.records = await _records(world)
    return world


async def _records(world: FhirWorld) -> dict[str, dict[Target, str]]:
    """Per target patient: a profile with allergies and conditions, a medication
    statement, a signed prescription (fhirseed), a document and an invoice."""
    crypt = world.client.app[RECORDS_DEPS].crypt
    found: dict[str, dict[Target, str]] = {}
    pool = world.pool
    for target in PATIENT_OBJECT:
        clinic, patient = world.clinic(target), world.patient(target)
        pid = patient.user_id
        async with pool.acquire() as conn, conn.transaction():
            keys = await crypt.for_clinic(conn, clinic.clinic_id)
            await seed_records(conn, keys, clinic.clinic_id, clinic[Role.DOCTOR].user_id, [pid])
            doc_id = uuid4()
            await conn.execute(
                "INSERT INTO documents (id, clinic_id, patient_id, title_ct, category, "
                "created_by) VALUES ($1, $2, $3, $4, 'report', $3)",
                doc_id,
                clinic.clinic_id,
                pid,
                keys.encrypt("documents", "title_ct", doc_id, "Discharge letter"),
            )
            await conn.execute(
                "INSERT INTO document_versions (id, document_id, version, content_type, size, "
                "sha256, blob_name, uploaded_by) VALUES ($1, $2, 1, 'application/pdf', 10, "
                "$3, $4, $5)",
                uuid4(),
                doc_id,
                bytes(32),
                f"authz-{uuid4()}",
                pid,
            )
            invoice = await conn.fetchval(
                "INSERT INTO invoices (clinic_id, patient_id, number, currency, subtotal, tax, "
                "total) VALUES ($1, $2, $3, 'KES', 1000, 0, 1000) RETURNING id",
                clinic.clinic_id,
                pid,
                f"INV-2099-{uuid4().int % 1_000_000:06d}",
            )
            rx = await conn.fetchval("SELECT id FROM prescriptions WHERE patient_id = $1", pid)
            med = await conn.fetchval(
                "SELECT id FROM medication_statements WHERE patient_id = $1", pid
            )
        ids = {
            "Condition": entry_ids(keys, "fhir-condition", pid, [str(CONDITIONS[0]["name"])])[0],
            "AllergyIntolerance": entry_ids(
                keys, "fhir-allergy", pid, [str(ALLERGIES[0]["substance"])]
            )[0],
            "MedicationRequest": f"{rx}-1",
            "MedicationStatement": str(med),
            "DocumentReference": str(doc_id),
            "Invoice": str(invoice),
        }
        for kind, ident in ids.items():
            found.setdefault(kind, {})[target] = ident
            if clinic is world.other:
                world.foreign.add(ident)
    return found


RECORD_READS = {
    "fhirReadCondition": "Condition",
    "fhirReadAllergyIntolerance": "AllergyIntolerance",
    "fhirReadMedicationRequest": "MedicationRequest",
    "fhirReadMedicationStatement": "MedicationStatement",
    "fhirReadDocumentReference": "DocumentReference",
    "fhirReadInvoice": "Invoice",
}


async def prepare(world: FhirWorld, op: str, role: Role | None, target: Target) -> Prepared:
    """Build the request for ``op`` as ``role`` (None: no token) on ``target``."""
    caller = world.own[role] if role is not None else None
    prep = Prepared(caller, {})
    match op:
        case "fhirReadPatient" | "fhirPatientEverything":
            prep.params["patient_id"] = world.patient(target).user_id
        case "fhirReadPractitioner":
            prep.params["practitioner_id"] = world.clinic(target)[Role.DOCTOR].user_id
        case "fhirReadOrganization":
            prep.params["organization_id"] = world.clinic(target).clinic_id
        case "fhirReadEncounter":
            prep.params["encounter_id"] = world.encounters[target]
        case "fhirSearchPatient" | "fhirSearchPractitioner" | "fhirSearchOrganization":
            pass
        case "fhirReadObservation":
            prep.params["observation_id"] = world.vitals[target]
        case "fhirReadConsent":
            prep.params["consent_id"] = world.consents[target]
        case "fhirSearchEncounter" | "fhirSearchObservation" | "fhirSearchConsent":
            pass
        case op if op in RECORD_READS:
            kind = RECORD_READS[op]
            # A string parameter for some types; path_of only formats it.
            prep.params[f"{kind.lower()}_id"] = cast(UUID, world.records[kind][target])
        case op if op.startswith("fhirSearch"):
            pass
        case "fhirExportSystem" | "fhirExportPatients" | "fhirExportGroup":
            if caller is not None:  # room under the three-running-jobs limit
                await world.pool.execute(
                    "UPDATE fhir_export_jobs SET status = 'cancelled' WHERE requested_by = $1",
                    caller.user_id,
                )
            if op == "fhirExportGroup":
                prep.params["group_id"] = world.doctor(target).user_id
            prep.headers = BULK
            prep.probe = read(world.pool, "SELECT count(*) FROM fhir_export_jobs")
        case "fhirExportStatus" | "fhirExportFile" | "fhirExportCancel":
            job_id = await world.job(target, caller)
            prep.params["job_id"] = job_id
            if op == "fhirExportFile":
                # A string parameter; path_of only formats it.
                prep.params["file_name"] = cast(UUID, FILE)
            if op == "fhirExportCancel":
                prep.probe = read(
                    world.pool, "SELECT status FROM fhir_export_jobs WHERE id = $1", job_id
                )
        case _:
            raise AssertionError(f"no request factory for operation {op}")
    return prep


@pytest.mark.parametrize("op", AUTHENTICATED)
async def test_route_answers_every_role_as_the_policy_says(op: str, world: FhirWorld) -> None:
    await assert_route_follows_policy(world, op, FHIR[op], prepare)


async def test_malformed_path_id_is_not_found(world: FhirWorld) -> None:
    await assert_malformed_ids_not_found(world, FHIR, prepare)
