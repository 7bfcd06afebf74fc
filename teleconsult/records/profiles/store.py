"""SQL of patient profiles (migration 0016): ciphertexts in, ciphertexts out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias
from uuid import UUID

import asyncpg

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"


@dataclass(frozen=True)
class ProfileRow:
    patient_id: UUID
    sex: str | None
    national_id_ct: bytes | None
    emergency_contacts_ct: bytes | None
    blood_type: str | None
    allergies_ct: bytes | None
    conditions_ct: bytes | None
    updated_at: datetime | None


COLUMNS = (
    "patient_id, sex, national_id_ct, emergency_contacts_ct, blood_type, allergies_ct, "
    "conditions_ct, updated_at"
)


async def get(conn: Conn, patient_id: UUID) -> ProfileRow:
    """The stored profile, or an empty one."""
    row = await conn.fetchrow(
        f"SELECT {COLUMNS} FROM patient_profiles WHERE patient_id = $1", patient_id
    )
    if row is None:
        return ProfileRow(patient_id, None, None, None, None, None, None, None)
    return ProfileRow(**dict(row))


# Columns a change may set; the blind index goes with the national id.
SETTABLE = frozenset(
    {
        "sex",
        "national_id_ct",
        "national_id_bi",
        "emergency_contacts_ct",
        "blood_type",
        "allergies_ct",
        "conditions_ct",
    }
)


async def upsert(
    conn: Conn, *, patient_id: UUID, clinic_id: UUID, by: UUID, values: dict[str, object]
) -> ProfileRow:
    """Set ``values`` (names from :data:`SETTABLE`) on the profile, creating it."""
    assert values and set(values) <= SETTABLE, values
    names = sorted(values)
    cols = ", ".join(names)
    params = ", ".join(f"${i + 4}" for i in range(len(names)))
    updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in names)
    row = await conn.fetchrow(
        f"""
        INSERT INTO patient_profiles (patient_id, clinic_id, updated_by, {cols})
        VALUES ($1, $2, $3, {params})
        ON CONFLICT (patient_id) DO UPDATE SET {updates}, updated_at = now(),
            updated_by = EXCLUDED.updated_by
        RETURNING {COLUMNS}
        """,
        patient_id,
        clinic_id,
        by,
        *(values[n] for n in names),
    )
    assert row is not None
    return ProfileRow(**dict(row))


async def find_by_national_id(conn: Conn, clinic_id: UUID, index: bytes) -> list[UUID]:
    rows = await conn.fetch(
        "SELECT patient_id FROM patient_profiles WHERE clinic_id = $1 AND national_id_bi = $2 "
        "ORDER BY patient_id LIMIT 20",
        clinic_id,
        index,
    )
    return [row["patient_id"] for row in rows]
