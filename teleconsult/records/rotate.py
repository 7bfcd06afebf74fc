"""Key rotation of the encrypted record columns: ``teleconsult records rotate-key``.

For each clinic (or one): a new data key under the newest master key (older data
keys and the index key are re-wrapped under it too), then every ciphertext of the
clinic that is not under the new key is opened and sealed again, in batches, each
row by compare-and-set (a row changed meanwhile is read again on the next pass).
Passes repeat until no old ciphertext is left, so a write that a running server
made with the old key just before the rotation is caught too. Blind indexes do not
change (the index key is kept). Plaintext notes left in the legacy ``patient_notes``
table are moved into ``clinical_note_versions``, encrypted, on the way.

Safe to run while servers run; not twice at once for one clinic (the second would
retire the first's new key: run it again and it finishes the job).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from uuid import UUID

import asyncpg

from teleconsult.records.fieldcrypt import ClinicKeys, FieldCrypt, key_id_of

# (table, primary key column, encrypted columns): every _ct column of migrations 0016-0017.
ENCRYPTED: Final = (
    (
        "patient_profiles",
        "patient_id",
        ("national_id_ct", "emergency_contacts_ct", "allergies_ct", "conditions_ct"),
    ),
    ("clinical_note_versions", "id", ("body_ct",)),
    ("break_glass_accesses", "id", ("reason_ct",)),
    ("prescriptions", "id", ("document_ct",)),
    ("medication_statements", "id", ("details_ct", "stop_reason_ct")),  # 0022: stops
    ("care_plans", "id", ("plan_ct",)),
    ("documents", "id", ("title_ct",)),
)
BATCH: Final = 500


@dataclass
class RotationReport:
    clinics: int = 0
    rewritten: int = 0
    legacy_notes: int = 0
    per_column: dict[str, int] = field(default_factory=dict)


async def _rekey_column(
    conn: asyncpg.Connection,
    keys: ClinicKeys,
    table: str,
    pk: str,
    column: str,
    say: Callable[[str], None],
) -> int:
    done = 0
    while True:
        rows = await conn.fetch(
            f"SELECT {pk} AS id, {column} AS ct FROM {table} "
            f"WHERE clinic_id = $1 AND {column} IS NOT NULL "
            f"AND substring({column} FROM 2 FOR 4) <> $2 LIMIT {BATCH}",
            keys.clinic_id,
            keys.key_id.to_bytes(4, "big"),
        )
        if not rows:
            return done
        for row in rows:
            old: bytes = row["ct"]
            if key_id_of(old) == keys.key_id:
                continue
            plain = keys.decrypt(table, column, row["id"], old)
            new = keys.encrypt(table, column, row["id"], plain)
            status = await conn.execute(
                f"UPDATE {table} SET {column} = $1 WHERE {pk} = $2 AND {column} = $3",
                new,
                row["id"],
                old,
            )
            done += status.endswith(" 1")
        say(f"  {table}.{column}: {done} re-encrypted")


async def _legacy_notes(conn: asyncpg.Connection, keys: ClinicKeys) -> int:
    """Move the clinic's plaintext notes (migration 0001) into the encrypted table."""
    moved = 0
    while True:
        rows = await conn.fetch(
            "SELECT id, patient_id, author_id, body, created_at FROM patient_notes "
            "WHERE clinic_id = $1 LIMIT 500",
            keys.clinic_id,
        )
        if not rows:
            return moved
        async with conn.transaction():
            for row in rows:
                await conn.execute(
                    "INSERT INTO clinical_note_versions (id, note_id, version, clinic_id, "
                    "patient_id, author_id, body_ct, created_at) "
                    "VALUES ($1, $1, 1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                    row["id"],
                    keys.clinic_id,
                    row["patient_id"],
                    row["author_id"],
                    keys.encrypt("clinical_note_versions", "body_ct", row["id"], row["body"]),
                    row["created_at"],
                )
            await conn.execute(
                "DELETE FROM patient_notes WHERE id = ANY($1::uuid[])", [r["id"] for r in rows]
            )
        moved += len(rows)


async def rotate(
    conn: asyncpg.Connection,
    crypt: FieldCrypt,
    *,
    clinic_id: UUID | None = None,
    say: Callable[[str], None] = print,
) -> RotationReport:
    report = RotationReport()
    clinics: list[UUID] = (
        [clinic_id]
        if clinic_id is not None
        else [r["id"] for r in await conn.fetch("SELECT id FROM clinics ORDER BY created_at, id")]
    )
    for index, clinic in enumerate(clinics, 1):
        keys = await crypt.start_rotation(conn, clinic)
        say(
            f"clinic {clinic} ({index}/{len(clinics)}): data key {keys.key_id} "
            f"under master key {crypt.master_version}"
        )
        report.legacy_notes += await _legacy_notes(conn, keys)
        for table, pk, columns in ENCRYPTED:
            for column in columns:
                count = await _rekey_column(conn, keys, table, pk, column, say)
                name = f"{table}.{column}"
                report.per_column[name] = report.per_column.get(name, 0) + count
                report.rewritten += count
        report.clinics += 1
    say(
        f"done: {report.clinics} clinic(s), {report.rewritten} value(s) re-encrypted, "
        f"{report.legacy_notes} legacy note(s) encrypted"
    )
    return report
