"""Seeding a clinic straight into PostgreSQL for the FHIR tests: many patients fast.

Rows go in with set-based SQL (``generate_series``), not through the API: a
1,000-patient clinic takes well under a second. Every patient gets one
appointment with the clinic's doctor, in a status that cycles through all of
them (patient ``i`` gets ``STATUSES[(i + 1) % 6]``), so every Appointment status
and both Encounter statuses appear; every third video appointment that took place
has a consultation with its times. Appointments start two days ago, one an hour,
so the first ones give the doctor a care relationship under ``records.access``
(confirmed, in progress or completed, and recent): patients ``i % 6 in (0, 1, 2)``.

``appointments=False`` leaves them out (a doctor's appointments go in one by one
through the exclusion constraints: fine for thousands, slow for 100,000).
``vitals=True`` adds a heart rate and a blood pressure per patient (recorded by the
doctor); ``consent_to_clinic=True`` a consent of every patient to the clinic (scope
``all``), which gives every clinician of the clinic a basis.

``crypt`` (the server's :class:`FieldCrypt`; records and invoices, issues 14 and 15)
adds, encrypted with the clinic's keys as the records services write them, two
allergies and two chronic conditions per patient, a medication statement (active or
stopped) and a prescription with two items signed by a registered device of the doctor
(active, cancelled or expired, in turn). Every appointment already raised an invoice
(the doctor has a fee; migration 0019's trigger).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from aiohttp.test_utils import TestClient
from nacl.signing import SigningKey

from teleconsult.records.fieldcrypt import ClinicKeys, FieldCrypt
from teleconsult.records.prescriptions import canonical
from tests.world import Account

STATUSES = ("requested", "confirmed", "in_progress", "completed", "cancelled", "no_show")


@dataclass(frozen=True)
class Seeded:
    clinic_id: UUID
    doctor_id: UUID
    patient_ids: list[UUID]
    appointment_ids: list[UUID]


async def give_doctor_profile(conn: asyncpg.Connection, clinic_id: UUID, doctor_id: UUID) -> None:
    await conn.execute(
        """
        INSERT INTO doctor_profiles (user_id, clinic_id, specialties, languages,
            consultation_minutes, buffer_minutes, fee_cents, currency, services)
        VALUES ($1, $2, '{General practice}', '{en}', 30, 0, 1000, 'KES',
                '{video,in_person}')
        ON CONFLICT (user_id) DO NOTHING
        """,
        doctor_id,
        clinic_id,
    )


async def seed_patients(
    pool: asyncpg.Pool,
    clinic_id: UUID,
    doctor_id: UUID,
    count: int,
    *,
    start: datetime | None = None,
    vitals: bool = False,
    consent_to_clinic: bool = False,
    appointments: bool = True,
    crypt: FieldCrypt | None = None,
) -> Seeded:
    """``count`` patients of the clinic, each with one appointment with ``doctor_id``."""
    tag = secrets.token_hex(4)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    base = start or now - timedelta(days=2)
    async with pool.acquire() as conn, conn.transaction():
        await give_doctor_profile(conn, clinic_id, doctor_id)
        patients = await conn.fetch(
            """
            INSERT INTO users (clinic_id, email, email_key, password_hash, role, full_name,
                               phone, date_of_birth)
            SELECT $1, e, e, 'not-a-hash', 'patient', 'Seeded Patient ' || i,
                   '+2547' || lpad(i::text, 8, '0'), DATE '1950-01-01' + (i % 20000)
            FROM generate_series(1, $2) AS i,
                 LATERAL (SELECT 'seed-' || $3 || '-' || i || '@example.test' AS e) x
            RETURNING id
            """,
            clinic_id,
            count,
            tag,
        )
        ids = [r["id"] for r in patients]
        booked = await conn.fetch(
            """
            INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at,
                ends_at, status, cancel_reason, checked_in_at)
            SELECT $1, $2, p.id,
                   (CASE WHEN p.n % 4 = 0 THEN 'in_person' ELSE 'video' END)::service_kind,
                   $4::timestamptz + make_interval(hours => p.n::int),
                   $4::timestamptz + make_interval(hours => p.n::int, mins => 30),
                   s.status,
                   CASE WHEN s.status = 'cancelled' THEN 'Patient asked to cancel' END,
                   CASE WHEN p.n % 5 = 1 AND s.status = 'confirmed'
                        THEN $4::timestamptz + make_interval(hours => p.n::int) END
            FROM unnest($3::uuid[]) WITH ORDINALITY AS p(id, n),
                 LATERAL (SELECT ($5::text[])[1 + (p.n::int % 6)] AS status) s
            RETURNING id, status, service::text AS service, starts_at, ends_at
            """,
            clinic_id,
            doctor_id,
            ids if appointments else [],
            base,
            list(STATUSES),
        )
        for i, row in enumerate(booked):
            if row["status"] in ("in_progress", "completed") and row["service"] == "video":
                if i % 3:
                    continue
                ended = row["ends_at"] + timedelta(minutes=3)
                await conn.execute(
                    """
                    INSERT INTO consultations (appointment_id, room_id, join_opens_at,
                        join_closes_at, status, started_at, ended_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7)
                    """,
                    row["id"],
                    secrets.token_urlsafe(16),
                    row["starts_at"] - timedelta(minutes=15),
                    row["ends_at"] + timedelta(minutes=30),
                    "ended" if row["status"] == "completed" else "open",
                    row["starts_at"] + timedelta(minutes=2),
                    ended if row["status"] == "completed" else None,
                )
        if vitals:
            await conn.execute(
                """
                INSERT INTO vital_signs (clinic_id, patient_id, kind, loinc, value, value2,
                    unit, measured_at, recorded_by, source)
                SELECT $1, p.id, v.kind, v.loinc, v.value + (p.n % 20), v.value2, v.unit,
                       $4::timestamptz - make_interval(mins => p.n::int), $2, 'clinician'
                FROM unnest($3::uuid[]) WITH ORDINALITY AS p(id, n),
                     (VALUES ('heart_rate', '8867-4', 60.0, NULL::numeric, '/min'),
                             ('blood_pressure', '85354-9', 110.0, 75.0, 'mm[Hg]'))
                         AS v(kind, loinc, value, value2, unit)
                """,
                clinic_id,
                doctor_id,
                ids,
                now,
            )
        if consent_to_clinic:
            await conn.execute(
                """
                INSERT INTO consents (clinic_id, patient_id, grantee_clinic_id, scope,
                    granted_by, expires_at)
                SELECT $1, p, $1, 'all', p, now() + interval '30 days' FROM unnest($2::uuid[]) p
                """,
                clinic_id,
                ids,
            )
        if crypt is not None:
            keys = await crypt.for_clinic(conn, clinic_id)
            await seed_records(conn, keys, clinic_id, doctor_id, ids)
    return Seeded(clinic_id, doctor_id, ids, [r["id"] for r in booked])


ALLERGIES = (
    {"substance": "Penicillin", "reaction": "Hives", "severity": "moderate"},
    {"substance": "Peanuts", "reaction": None, "severity": "severe"},
    {"substance": "Latex", "reaction": None, "severity": "unknown"},
)
CONDITIONS = (
    {"name": "Essential hypertension", "since": "2019-05"},
    {"name": "Type 2 diabetes mellitus", "since": None},
    {"name": "Asthma", "since": "2004-03-12"},
)


def _stamp(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


async def seed_records(
    conn: asyncpg.Connection,
    keys: ClinicKeys,
    clinic_id: UUID,
    doctor_id: UUID,
    patient_ids: list[UUID],
) -> None:
    """Encrypted records of every patient (module doc); rows as the services write them."""
    now = datetime.now(UTC).replace(microsecond=0)
    profiles = []
    meds = []
    for n, pid in enumerate(patient_ids):
        allergies = [ALLERGIES[n % 3], ALLERGIES[(n + 1) % 3]]
        conditions = [CONDITIONS[n % 3], CONDITIONS[(n + 2) % 3]]
        profiles.append(
            (
                pid,
                clinic_id,
                doctor_id,
                keys.encrypt_json("patient_profiles", "allergies_ct", pid, allergies),
                keys.encrypt_json("patient_profiles", "conditions_ct", pid, conditions),
            )
        )
        med_id = uuid4()
        details = {"drug": "Metformin 500 mg tablet", "dose": "1 tablet",
                   "frequency": "twice a day", "note": None if n % 2 else "with food"}  # fmt: skip
        meds.append(
            (
                med_id,
                clinic_id,
                pid,
                keys.encrypt_json("medication_statements", "details_ct", med_id, details),
                "active" if n % 2 == 0 else "stopped",
                doctor_id if n % 3 else pid,
            )
        )
    await conn.executemany(
        "INSERT INTO patient_profiles (patient_id, clinic_id, updated_by, allergies_ct, "
        "conditions_ct, blood_type) VALUES ($1, $2, $3, $4, $5, 'O+')",
        profiles,
    )
    await conn.executemany(
        "INSERT INTO medication_statements (id, clinic_id, patient_id, details_ct, status, "
        "recorded_by) VALUES ($1, $2, $3, $4, $5, $6)",
        meds,
    )
    signer = SigningKey.generate()
    device_id = await conn.fetchval(
        "INSERT INTO devices (user_id, x25519_public, ed25519_public, label) "
        "VALUES ($1, $2, $3, 'seeded prescriber') RETURNING id",
        doctor_id,
        secrets.token_bytes(32),
        bytes(signer.verify_key),
    )
    doctor_name = await conn.fetchval("SELECT full_name FROM users WHERE id = $1", doctor_id)
    names = dict(
        await conn.fetch("SELECT id, full_name FROM users WHERE id = ANY($1::uuid[])", patient_ids)
    )
    rows = []
    for n, pid in enumerate(patient_ids):
        expired = n % 3 == 2
        issued = now - timedelta(days=40 if expired else 1)
        expires = issued + timedelta(days=30)
        document = {
            "v": 1, "clinic_id": str(clinic_id), "patient_id": str(pid),
            "patient_name": names[pid], "doctor_id": str(doctor_id),
            "doctor_name": doctor_name, "device_id": str(device_id),
            "issued_at": _stamp(issued), "expires_at": _stamp(expires),
            "items": [
                {"drug": "Amoxicillin 500 mg capsule", "dose": "1 capsule",
                 "frequency": "3 times a day", "duration_days": 7, "quantity": 21,
                 "instructions": "after meals"},
                {"drug": "Paracetamol 500 mg tablet", "dose": "2 tablets",
                 "frequency": "every 6 hours if needed", "duration_days": 3,
                 "quantity": 24, "instructions": ""},
            ],
        }  # fmt: skip
        raw = canonical.canonical(document)
        rx_id = uuid4()
        cancelled = n % 3 == 1
        rows.append(
            (
                rx_id,
                clinic_id,
                pid,
                doctor_id,
                canonical.number_of(raw),
                secrets.token_bytes(32),
                keys.encrypt("prescriptions", "document_ct", rx_id, raw.decode()),
                signer.sign(canonical.message(raw)).signature,
                device_id,
                bytes(signer.verify_key),
                issued,
                expires,
                now if cancelled else None,
                doctor_id if cancelled else None,
            )
        )
    await conn.executemany(
        "INSERT INTO prescriptions (id, clinic_id, patient_id, doctor_id, number, "
        "verification_hash, document_ct, signature, device_id, signer_public_key, "
        "issued_at, expires_at, cancelled_at, cancelled_by) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        rows,
    )


async def fhir_json(
    client: TestClient[Any, Any], path: str, who: Account, **params: str
) -> dict[str, Any]:
    """GET a FHIR path as ``who``: a 200 in ``application/fhir+json``, its body."""
    resp = await client.get(path, headers=who.headers, params=params or None)
    text = await resp.text()
    assert resp.status == 200, f"{path}: {resp.status} {text[:300]}"
    assert resp.content_type == "application/fhir+json", path
    body: dict[str, Any] = json.loads(text)
    return body
