"""Records routes (issue 14, part R), called by every role, against a written policy.

A table of its own beside ``tests/test_authz_matrix.py`` (whose helpers and route
coverage tests it shares). Written by hand: it does not import
``teleconsult.core.policy``; docs/records.md is its prose.

The world: the caller's clinic's doctor and nurse are on the care team of the
clinic's first patient (``own``) and have no relationship with its second patient
(``same_clinic_other_patient``); the other clinic is ``other_tenant``. So a clinician
is allowed on ``own``, refused 403 on the other patient (the record exists for them;
break-glass is possible) and 404 in the other clinic. Households are clinic objects
(``own``, ``other_tenant``).
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from teleconsult.core.identity import Role
from teleconsult.records.fieldcrypt import FieldCrypt
from teleconsult.server.app import SETTINGS
from tests.recordskit import (
    Client,
    canonical,
    declared,
    give_care,
    prescription_document,
    register_device,
    send_chunks,
    signed_body,
    start,
)
from tests.test_authz_matrix import (
    CLINIC_OBJECT,
    NO_ID,
    PATIENT_OBJECT,
    A,
    F,
    N,
    Prepared,
    Rule,
    Target,
    World,
    assert_malformed_ids_not_found,
    assert_route_follows_policy,
    public,
    read,
    row,
)
from tests.world import Account, Tenant

PT = (A, N, N)  # the patient: their own record only
CL = (A, F, N)  # a clinician: the patient they care for; 403 for the other; 404 elsewhere
STAFF = (A, A, N)  # any staff member of the patient's clinic
GLASS = (A, A, N)  # break-glass: any patient of the clinic, audited
NO = (F, F, F)
P = "/api/v1/patients/{patient_id}"
H = "/api/v1/households/{household_id}"

# Columns: patient, doctor, nurse, receptionist, admin.
# fmt: off
RECORDS: dict[str, Rule] = {
    "verifyPrescription": public("GET /api/v1/prescriptions/verify"),
    "listPatientNotes": row(f"GET {P}/notes", PATIENT_OBJECT, PT, CL, CL, NO, NO),
    "createPatientNote": row(f"POST {P}/notes", PATIENT_OBJECT, NO, CL, CL, NO, NO),
    "amendPatientNote": row(f"POST {P}/notes/{{note_id}}/amendments", PATIENT_OBJECT,
        NO, CL, CL, NO, NO),
    "listPatientNoteVersions": row(f"GET {P}/notes/{{note_id}}/versions", PATIENT_OBJECT,
        PT, CL, CL, NO, NO),
    "getPatientProfile": row(f"GET {P}/profile", PATIENT_OBJECT, PT, STAFF, STAFF, STAFF, STAFF),
    "updatePatientProfile": row(f"PATCH {P}/profile", PATIENT_OBJECT, PT, NO, NO, STAFF, STAFF),
    "getClinicalSummary": row(f"GET {P}/clinical-summary", PATIENT_OBJECT, PT, CL, CL, NO, NO),
    "updateClinicalSummary": row(f"PATCH {P}/clinical-summary", PATIENT_OBJECT,
        NO, CL, CL, NO, NO),
    "lookupPatient": row("GET /api/v1/patient-lookup", NO_ID, (F,), (A,), (A,), (A,), (A,)),
    "grantConsent": row(f"POST {P}/consents", PATIENT_OBJECT, PT, NO, NO, NO, NO),
    "listConsents": row(f"GET {P}/consents", PATIENT_OBJECT, PT, NO, NO, NO, NO),
    "revokeConsent": row(f"POST {P}/consents/{{consent_id}}/revoke", PATIENT_OBJECT,
        PT, NO, NO, NO, NO),
    "addCareTeamMember": row(f"POST {P}/care-team", PATIENT_OBJECT, NO, NO, NO, NO, STAFF),
    "listCareTeam": row(f"GET {P}/care-team", PATIENT_OBJECT, NO, NO, NO, NO, STAFF),
    "endCareTeamMember": row(f"POST {P}/care-team/{{membership_id}}/end", PATIENT_OBJECT,
        NO, NO, NO, NO, STAFF),
    "breakGlass": row(f"POST {P}/break-glass", PATIENT_OBJECT, NO, GLASS, GLASS, NO, NO),
    "createHousehold": row("POST /api/v1/households", NO_ID, (F,), (F,), (F,), (A,), (A,)),
    "getHousehold": row(f"GET {H}", CLINIC_OBJECT, (A, N), (A, N), (A, N), (A, N), (A, N)),
    "putHouseholdMember": row(f"POST {H}/members", CLINIC_OBJECT,
        (F, F), (F, F), (F, F), (A, N), (A, N)),
    "removeHouseholdMember": row(f"POST {H}/members/{{user_id}}/remove", CLINIC_OBJECT,
        (F, F), (F, F), (F, F), (A, N), (A, N)),
    "recordVitalSign": row(f"POST {P}/vitals", PATIENT_OBJECT, PT, CL, CL, NO, NO),
    "listVitalSigns": row(f"GET {P}/vitals", PATIENT_OBJECT, PT, CL, CL, NO, NO),
    "issuePrescription": row(f"POST {P}/prescriptions", PATIENT_OBJECT, NO, CL, NO, NO, NO),
    "listPrescriptions": row(f"GET {P}/prescriptions", PATIENT_OBJECT, PT, CL, CL, NO, NO),
    "cancelPrescription": row(f"POST {P}/prescriptions/{{prescription_id}}/cancel",
        PATIENT_OBJECT, NO, CL, NO, NO, NO),
    "addMedicationStatement": row(f"POST {P}/medications", PATIENT_OBJECT, PT, CL, CL, NO, NO),
    "listMedicationStatements": row(f"GET {P}/medications", PATIENT_OBJECT,
        PT, CL, CL, NO, NO),
    # --- records gaps (issue 14, part RG) ---
    "stopMedicationStatement": row(f"POST {P}/medications/{{medication_id}}/stop",
        PATIENT_OBJECT, PT, CL, CL, NO, NO),
    # --- end records gaps ---
    "createCarePlan": row(f"POST {P}/care-plans", PATIENT_OBJECT, NO, CL, CL, NO, NO),
    "listCarePlans": row(f"GET {P}/care-plans", PATIENT_OBJECT, PT, CL, CL, NO, NO),
    "endCarePlan": row(f"POST {P}/care-plans/{{plan_id}}/end", PATIENT_OBJECT,
        NO, CL, CL, NO, NO),
    "syncRecords": row("GET /api/v1/sync", NO_ID, (A,), (A,), (A,), (F,), (F,)),
    "startDocumentUpload": row(f"POST {P}/document-uploads", PATIENT_OBJECT, PT, CL, CL, NO, NO),
    "putDocumentChunk": row(f"PUT {P}/document-uploads/{{upload_id}}", PATIENT_OBJECT,
        PT, CL, CL, NO, NO),
    "completeDocumentUpload": row(f"POST {P}/document-uploads/{{upload_id}}/complete",
        PATIENT_OBJECT, PT, CL, CL, NO, NO),
    "listDocuments": row(f"GET {P}/documents", PATIENT_OBJECT, PT, CL, CL, NO, NO),
    "downloadDocument": row(f"GET {P}/documents/{{document_id}}/content", PATIENT_OBJECT,
        PT, CL, CL, NO, NO),
}
# fmt: on
AUTHENTICATED = sorted(op for op, r in RECORDS.items() if not r.public)


class RecordsWorld(World):
    crypt: FieldCrypt

    def patient(self, target: Target) -> Account:
        assert self.own.other_patient is not None
        return {
            Target.OWN: self.own[Role.PATIENT],
            Target.SAME_CLINIC_OTHER_PATIENT: self.own.other_patient,
            Target.OTHER_TENANT: self.other[Role.PATIENT],
        }[target]

    def tenant(self, target: Target) -> Tenant:
        return self.other if target is Target.OTHER_TENANT else self.own

    async def seal(
        self, clinic_id: UUID, table: str, column: str, row_id: UUID, text: str
    ) -> bytes:
        async with self.pool.acquire() as conn:
            keys = await self.crypt.for_clinic(conn, clinic_id)
        return keys.encrypt(table, column, row_id, text)

    async def note(self, patient: Account, author: Account) -> UUID:
        note_id = uuid4()
        body = await self.seal(
            patient.clinic_id, "clinical_note_versions", "body_ct", note_id, "Seed note."
        )
        await self.pool.execute(
            "INSERT INTO clinical_note_versions (id, note_id, version, clinic_id, patient_id, "
            "author_id, body_ct) VALUES ($1, $1, 1, $2, $3, $4, $5)",
            note_id,
            patient.clinic_id,
            patient.user_id,
            author.user_id,
            body,
        )
        return note_id

    async def prescription(self, patient: Account, doctor: Account) -> UUID:
        """A stored prescription of ``doctor`` for ``patient``, straight into the table."""
        device_id, key = await register_device(self.client, doctor)
        raw = canonical(prescription_document(doctor, patient, device_id))
        rx_id = uuid4()
        now = datetime.now(UTC)
        await self.pool.execute(
            "INSERT INTO prescriptions (id, clinic_id, patient_id, doctor_id, number, "
            "verification_hash, document_ct, signature, device_id, signer_public_key, "
            "issued_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            rx_id,
            patient.clinic_id,
            patient.user_id,
            doctor.user_id,
            "RX-" + "-".join(secrets.token_hex(6).upper()[i : i + 4] for i in (0, 4, 8)),
            secrets.token_bytes(32),
            await self.seal(patient.clinic_id, "prescriptions", "document_ct", rx_id, raw.decode()),
            key.sign(b"x").signature,
            device_id,
            key.verify_key.encode(),
            now,
            now + timedelta(days=30),
        )
        return rx_id

    async def upload(self, patient: Account, *, send: bool) -> UUID:
        """An upload of PDF started (and its one chunk sent) by the patient themself."""
        resp = await start(self.client, patient, patient, PDF, **REPORT)
        assert resp.status == 201, await resp.text()
        upload_id = UUID((await resp.json())["id"])
        if send:
            await send_chunks(self.client, patient, patient, str(upload_id), PDF)
        return upload_id

    async def household(self, tenant: Tenant) -> UUID:
        household_id: UUID = await self.pool.fetchval(
            "INSERT INTO households (clinic_id, label, created_by) VALUES ($1, 'Home', $2) "
            "RETURNING id",
            tenant.clinic_id,
            tenant[Role.ADMIN].user_id,
        )
        await self.pool.execute(
            "INSERT INTO household_members (household_id, user_id, kind, added_by) "
            "VALUES ($1, $2, 'guardian', $2)",
            household_id,
            tenant[Role.PATIENT].user_id,
        )
        return household_id


@pytest.fixture
async def world(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> RecordsWorld:
    world = RecordsWorld(client, app_pool, tenant, other_tenant)
    world.crypt = FieldCrypt(dict(client.app[SETTINGS].records.master_keys))
    for each in (tenant, other_tenant):
        for role in (Role.DOCTOR, Role.NURSE):
            await give_care(app_pool, each[role], each[Role.PATIENT])
    return world


def count(pool: asyncpg.Pool, table: str, patient: Account) -> Any:
    return read(pool, f"SELECT count(*) FROM {table} WHERE patient_id = $1", patient.user_id)


PDF = b"%PDF-1.4\n" + b"1 0 obj << >> endobj\n" * 40  # text: the matrix reads answers as text
REPORT = {"title": "X-ray report", "category": "report"}


def later(days: int = 30) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


async def prepare(world: RecordsWorld, op: str, role: Role | None, target: Target) -> Prepared:
    own, pool = world.own, world.pool
    caller = own[role] if role is not None else None
    patient = world.patient(target)
    tenant = world.tenant(target)
    prep = Prepared(caller, {"patient_id": patient.user_id})
    match op:
        case (
            "listPatientNotes"
            | "getPatientProfile"
            | "getClinicalSummary"
            | "listConsents"
            | "listCareTeam"
            | "listVitalSigns"
            | "listPrescriptions"
            | "listMedicationStatements"
            | "listCarePlans"
            | "listDocuments"
        ):
            pass
        case "createPatientNote":
            prep.body = {"body": "Reviewed today."}
            prep.probe = count(pool, "clinical_note_versions", patient)
        case "amendPatientNote":
            note = prep.params["note_id"] = await world.note(patient, tenant[Role.DOCTOR])
            prep.body = {"body": "Amended."}
            prep.probe = read(
                pool, "SELECT count(*) FROM clinical_note_versions WHERE note_id = $1", note
            )
        case "listPatientNoteVersions":
            prep.params["note_id"] = await world.note(patient, tenant[Role.DOCTOR])
        case "updatePatientProfile":
            prep.body = {"sex": "other", "national_id": f"ID{secrets.token_hex(4)}"}
            prep.probe = read(
                pool,
                "SELECT national_id_bi FROM patient_profiles WHERE patient_id = $1",
                patient.user_id,
            )
        case "updateClinicalSummary":
            prep.body = {"blood_type": "AB-", "conditions": [{"name": f"c{secrets.token_hex(3)}"}]}
            prep.probe = read(
                pool,
                "SELECT conditions_ct FROM patient_profiles WHERE patient_id = $1",
                patient.user_id,
            )
        case "lookupPatient":
            prep.query = {"national_id": "A1234"}
        case "grantConsent":
            grantee = tenant[Role.DOCTOR].user_id
            prep.body = {"grantee_user_id": str(grantee), "scope": "vitals", "expires_at": later()}
            prep.probe = count(pool, "consents", patient)
        case "revokeConsent":
            consent = prep.params["consent_id"] = await pool.fetchval(
                "INSERT INTO consents (clinic_id, patient_id, grantee_user_id, scope, granted_by, "
                "expires_at) VALUES ($1, $2, $3, 'all', $2, now() + interval '1 day') RETURNING id",
                patient.clinic_id,
                patient.user_id,
                tenant[Role.NURSE].user_id,
            )
            prep.probe = read(pool, "SELECT revoked_at FROM consents WHERE id = $1", consent)
        case "addCareTeamMember":
            prep.body = {"member_id": str(tenant[Role.NURSE].user_id), "ends_at": later()}
            prep.probe = count(pool, "care_team_members", patient)
        case "endCareTeamMember":
            member = await pool.fetchval(
                "INSERT INTO care_team_members (clinic_id, patient_id, member_id, ends_at, "
                "added_by) VALUES ($1, $2, $3, now() + interval '1 day', $3) RETURNING id",
                patient.clinic_id,
                patient.user_id,
                tenant[Role.ADMIN].user_id,
            )
            prep.params["membership_id"] = member
            prep.probe = read(pool, "SELECT ended_at FROM care_team_members WHERE id = $1", member)
        case "breakGlass":
            prep.body = {"reason": "Unconscious, history needed now."}
            prep.probe = count(pool, "break_glass_accesses", patient)
        case "createHousehold":
            label = f"Home {secrets.token_hex(4)}"
            prep.body = {"label": label}
            prep.probe = read(pool, "SELECT count(*) FROM households WHERE label = $1", label)
        case "getHousehold":
            prep.params = {"household_id": await world.household(tenant)}
        case "putHouseholdMember":
            household = await world.household(tenant)
            prep.params = {"household_id": household}
            assert tenant.other_patient is not None
            prep.body = {"user_id": str(tenant.other_patient.user_id), "kind": "guardian"}
            prep.probe = read(
                pool, "SELECT count(*) FROM household_members WHERE household_id = $1", household
            )
        case "removeHouseholdMember":
            household = await world.household(tenant)
            member = tenant[Role.PATIENT].user_id
            prep.params = {"household_id": household, "user_id": member}
            prep.probe = read(
                pool,
                "SELECT removed_at FROM household_members WHERE household_id = $1 AND user_id = $2",
                household,
                member,
            )
        case "recordVitalSign":
            prep.body = {
                "kind": "heart_rate",
                "value": 72,
                "unit": "/min",
                "measured_at": datetime.now(UTC).isoformat(),
            }
            prep.probe = count(pool, "vital_signs", patient)
        case "issuePrescription":
            signer = caller or own[Role.DOCTOR]
            device_id, key = await register_device(world.client, signer)
            document = prescription_document(
                signer, patient, device_id, doctor_name=f"Test {signer.role.value.title()}"
            )
            prep.body = signed_body(document, device_id, key)
            prep.probe = count(pool, "prescriptions", patient)
        case "cancelPrescription":
            rx = await world.prescription(patient, own[Role.DOCTOR])
            prep.params["prescription_id"] = rx
            prep.probe = read(pool, "SELECT cancelled_at FROM prescriptions WHERE id = $1", rx)
        case "addMedicationStatement":
            prep.body = {"drug": "Paracetamol 500 mg"}
            prep.probe = count(pool, "medication_statements", patient)
        # --- records gaps (issue 14, part RG) ---
        case "stopMedicationStatement":
            med_id = uuid4()
            sealed = await world.seal(
                patient.clinic_id, "medication_statements", "details_ct", med_id, '{"drug":"X"}'
            )
            await pool.execute(
                "INSERT INTO medication_statements (id, clinic_id, patient_id, details_ct, "
                "status, recorded_by) VALUES ($1, $2, $3, $4, 'active', $3)",
                med_id,
                patient.clinic_id,
                patient.user_id,
                sealed,
            )
            prep.params["medication_id"] = med_id
            prep.body = {"ended_on": datetime.now(UTC).date().isoformat(), "reason": "Rash."}
            prep.probe = read(
                pool, "SELECT status FROM medication_statements WHERE id = $1", med_id
            )
        # --- end records gaps ---
        case "createCarePlan":
            prep.body = {
                "plan": {"title": "Diabetes"},
                "starts_on": datetime.now(UTC).date().isoformat(),
                "expires_at": later(),
            }
            prep.probe = count(pool, "care_plans", patient)
        case "endCarePlan":
            plan_id = uuid4()
            sealed = await world.seal(
                patient.clinic_id, "care_plans", "plan_ct", plan_id, '{"title":"Seed"}'
            )
            await pool.execute(
                "INSERT INTO care_plans (id, clinic_id, patient_id, author_id, plan_ct, "
                "starts_on, expires_at) VALUES ($1, $2, $3, $4, $5, current_date, "
                "now() + interval '30 days')",
                plan_id,
                patient.clinic_id,
                patient.user_id,
                tenant[Role.DOCTOR].user_id,
                sealed,
            )
            prep.params["plan_id"] = plan_id
            prep.probe = read(pool, "SELECT ended_at FROM care_plans WHERE id = $1", plan_id)
        case "syncRecords":
            prep.params = {}
        case "startDocumentUpload":
            prep.body = declared(PDF, **REPORT)
            prep.probe = count(pool, "document_uploads", patient)
        case "putDocumentChunk":
            upload = prep.params["upload_id"] = await world.upload(patient, send=False)
            prep.query = {"offset": "0"}
            prep.data = PDF
            prep.headers = {"Content-Type": "application/octet-stream"}
            prep.probe = read(pool, "SELECT received FROM document_uploads WHERE id = $1", upload)
        case "completeDocumentUpload":
            prep.params["upload_id"] = await world.upload(patient, send=True)
            prep.probe = count(pool, "documents", patient)
        case "downloadDocument":
            upload = await world.upload(patient, send=True)
            resp = await world.client.post(
                f"/api/v1/patients/{patient.user_id}/document-uploads/{upload}/complete",
                headers=patient.headers,
            )
            assert resp.status == 201, await resp.text()
            prep.params["document_id"] = UUID((await resp.json())["id"])
        case _:
            raise AssertionError(f"no request factory for operation {op}")
    return prep


@pytest.mark.parametrize("op", AUTHENTICATED)
async def test_route_answers_every_role_as_the_policy_says(op: str, world: RecordsWorld) -> None:
    await assert_route_follows_policy(world, op, RECORDS[op], prepare)


async def test_malformed_path_ids_are_not_found(world: RecordsWorld) -> None:
    await assert_malformed_ids_not_found(world, RECORDS, prepare)


async def test_prescription_verification_is_public(world: RecordsWorld) -> None:
    client = world.client
    resp = await client.get(
        "/api/v1/prescriptions/verify", params={"number": "RX-AAAA-BBBB-CCCC", "code": "x" * 22}
    )
    assert resp.status == 404, await resp.text()  # unknown, and no token asked for
