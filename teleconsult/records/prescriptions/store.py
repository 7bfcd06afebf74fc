"""SQL of prescriptions and medication statements (migration 0017)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@dataclass(frozen=True)
class PrescriptionRow:
    id: UUID
    clinic_id: UUID
    patient_id: UUID
    doctor_id: UUID
    number: str
    document_ct: bytes
    signature: bytes
    device_id: UUID
    signer_public_key: bytes
    issued_at: datetime
    expires_at: datetime
    cancelled_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class MedicationRow:
    id: UUID
    patient_id: UUID
    details_ct: bytes
    status: str
    recorded_by: UUID
    created_at: datetime
    # A stop (migration 0022): all four set, or none.
    ended_on: date | None = None
    stop_reason_ct: bytes | None = None
    stopped_by: UUID | None = None
    stopped_at: datetime | None = None


RX_COLUMNS = (
    "id, clinic_id, patient_id, doctor_id, number, document_ct, signature, device_id, "
    "signer_public_key, issued_at, expires_at, cancelled_at, created_at"
)
MED_COLUMNS = (
    "id, patient_id, details_ct, status, recorded_by, created_at, "
    "ended_on, stop_reason_ct, stopped_by, stopped_at"
)


async def device_key(conn: Conn, device_id: UUID, user_id: UUID) -> bytes | None:
    """The Ed25519 public key of a current (unrevoked) device of the user."""
    key: bytes | None = await conn.fetchval(
        "SELECT ed25519_public FROM devices WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
        device_id,
        user_id,
    )
    return key


async def people(conn: Conn, patient_id: UUID, doctor_id: UUID) -> tuple[str, str] | None:
    row = await conn.fetchrow(
        "SELECT (SELECT full_name FROM users WHERE id = $1) AS patient, "
        "(SELECT full_name FROM users WHERE id = $2) AS doctor",
        patient_id,
        doctor_id,
    )
    if row is None or row["patient"] is None or row["doctor"] is None:
        return None
    return row["patient"], row["doctor"]


async def insert(
    conn: Conn,
    *,
    prescription_id: UUID,
    clinic_id: UUID,
    patient_id: UUID,
    doctor_id: UUID,
    number: str,
    verification_hash: bytes,
    document_ct: bytes,
    signature: bytes,
    device_id: UUID,
    signer_public_key: bytes,
    issued_at: datetime,
    expires_at: datetime,
) -> PrescriptionRow | None:
    """None when the number is taken (the same document signed twice)."""
    row = await conn.fetchrow(
        f"""
        INSERT INTO prescriptions (id, clinic_id, patient_id, doctor_id, number,
            verification_hash, document_ct, signature, device_id, signer_public_key,
            issued_at, expires_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        ON CONFLICT (number) DO NOTHING
        RETURNING {RX_COLUMNS}
        """,
        prescription_id,
        clinic_id,
        patient_id,
        doctor_id,
        number,
        verification_hash,
        document_ct,
        signature,
        device_id,
        signer_public_key,
        issued_at,
        expires_at,
    )
    return None if row is None else PrescriptionRow(**dict(row))


async def for_patient(conn: Conn, patient_id: UUID) -> list[PrescriptionRow]:
    rows = await conn.fetch(
        f"SELECT {RX_COLUMNS} FROM prescriptions WHERE patient_id = $1 "
        "ORDER BY issued_at, id LIMIT 500",
        patient_id,
    )
    return [PrescriptionRow(**dict(row)) for row in rows]


async def by_number(conn: Conn, number: str, verification_hash: bytes) -> PrescriptionRow | None:
    row = await conn.fetchrow(
        f"SELECT {RX_COLUMNS} FROM prescriptions WHERE number = $1 AND verification_hash = $2",
        number,
        verification_hash,
    )
    return None if row is None else PrescriptionRow(**dict(row))


async def cancel(
    conn: Conn, *, patient_id: UUID, prescription_id: UUID, doctor_id: UUID
) -> PrescriptionRow | None:
    row = await conn.fetchrow(
        f"""
        UPDATE prescriptions SET cancelled_at = now(), cancelled_by = $3
        WHERE id = $2 AND patient_id = $1 AND doctor_id = $3 AND cancelled_at IS NULL
        RETURNING {RX_COLUMNS}
        """,
        patient_id,
        prescription_id,
        doctor_id,
    )
    if row is None:
        row = await conn.fetchrow(
            f"SELECT {RX_COLUMNS} FROM prescriptions "
            "WHERE id = $2 AND patient_id = $1 AND doctor_id = $3",
            patient_id,
            prescription_id,
            doctor_id,
        )
    return None if row is None else PrescriptionRow(**dict(row))


async def insert_medication(
    conn: Conn,
    *,
    medication_id: UUID,
    clinic_id: UUID,
    patient_id: UUID,
    details_ct: bytes,
    status: str,
    recorded_by: UUID,
) -> MedicationRow:
    row = await conn.fetchrow(
        f"INSERT INTO medication_statements (id, clinic_id, patient_id, details_ct, status, "
        f"recorded_by) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {MED_COLUMNS}",
        medication_id,
        clinic_id,
        patient_id,
        details_ct,
        status,
        recorded_by,
    )
    assert row is not None
    return MedicationRow(**dict(row))


async def medications(conn: Conn, patient_id: UUID) -> list[MedicationRow]:
    rows = await conn.fetch(
        f"SELECT {MED_COLUMNS} FROM medication_statements WHERE patient_id = $1 "
        "ORDER BY created_at, id LIMIT 500",
        patient_id,
    )
    return [MedicationRow(**dict(row)) for row in rows]


async def stop_medication(
    conn: Conn,
    *,
    patient_id: UUID,
    medication_id: UUID,
    ended_on: date,
    reason_ct: bytes,
    stopped_by: UUID,
) -> MedicationRow | None:
    """Stop an active statement (once); None if there is no such active statement."""
    row = await conn.fetchrow(
        "UPDATE medication_statements SET status = 'stopped', ended_on = $3, "
        "stop_reason_ct = $4, stopped_by = $5, stopped_at = now() "
        "WHERE id = $2 AND patient_id = $1 AND status = 'active' AND stopped_at IS NULL "
        f"RETURNING {MED_COLUMNS}",
        patient_id,
        medication_id,
        ended_on,
        reason_ct,
        stopped_by,
    )
    return None if row is None else MedicationRow(**dict(row))


async def medication(conn: Conn, patient_id: UUID, medication_id: UUID) -> MedicationRow | None:
    row = await conn.fetchrow(
        f"SELECT {MED_COLUMNS} FROM medication_statements WHERE id = $2 AND patient_id = $1",
        patient_id,
        medication_id,
    )
    return None if row is None else MedicationRow(**dict(row))
