"""Field encryption: ciphertexts bound to their row, blind indexes, key rotation through
the real command line, and the canary: a plaintext appears nowhere in PostgreSQL, the
audit trail or the logs."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
import sys
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest

from teleconsult.core.errors import ConfigError
from teleconsult.core.identity import Role
from teleconsult.core.settings import load_settings
from teleconsult.records.fieldcrypt import ClinicKeys, FieldCrypt, FieldCryptError
from teleconsult.server.app import POOL, SETTINGS
from tests.auditkit import chained
from tests.conftest import StartServer, settings_env
from tests.recordskit import (
    Client,
    give_care,
    prescription_document,
    register_device,
    signed_body,
    upload,
)
from tests.world import Tenant, make_tenant


def keys() -> ClinicKeys:
    return ClinicKeys(uuid4(), 7, secrets.token_bytes(32), secrets.token_bytes(32), {})


def test_a_ciphertext_opens_only_in_its_own_row_and_column() -> None:
    k, row = keys(), uuid4()
    sealed = k.encrypt("patient_profiles", "national_id_ct", row, "A1234567")
    assert k.decrypt("patient_profiles", "national_id_ct", row, sealed) == "A1234567"
    assert int.from_bytes(sealed[1:5], "big") == 7  # the key version travels with it
    for table, column, where in [
        ("patient_profiles", "national_id_ct", uuid4()),
        ("patient_profiles", "emergency_contacts_ct", row),
        ("medication_statements", "national_id_ct", row),
    ]:
        with pytest.raises(FieldCryptError):
            k.decrypt(table, column, where, sealed)
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(FieldCryptError):
        k.decrypt("patient_profiles", "national_id_ct", row, bytes(tampered))


def test_blind_indexes_match_normalised_values_and_differ_by_key_and_purpose() -> None:
    k = keys()
    assert k.blind_index("national_id", "ab-12 34") == k.blind_index("national_id", "AB1234")
    assert k.blind_index("national_id", "AB1234") != k.blind_index("phone", "AB1234")
    assert k.blind_index("national_id", "AB1234") != keys().blind_index("national_id", "AB1234")


async def test_a_data_key_wrapped_by_one_master_key_does_not_open_with_another(
    pool: asyncpg.Pool,
) -> None:
    clinic = await pool.fetchval(
        "INSERT INTO clinics (name, timezone) VALUES ($1, 'UTC') RETURNING id",
        f"Keys {secrets.token_hex(3)}",
    )
    async with pool.acquire() as conn:
        first = await FieldCrypt({1: secrets.token_bytes(32)}).for_clinic(conn, clinic)
        with pytest.raises(FieldCryptError):
            await FieldCrypt({1: secrets.token_bytes(32)}).for_clinic(conn, clinic)
    assert len(first.data_key) == 32


def needle_in(data: bytes, canary: str) -> bool:
    return canary.encode() in data


def _hex_keys(*pairs: tuple[int, bytes]) -> str:
    return ",".join(f"{v}:{k.hex()}" for v, k in pairs)


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "teleconsult",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def test_rotation_through_the_command_line_keeps_every_record_readable(
    start_server: StartServer, database_url: str, tmp_path: Path
) -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    client = await start_server(RECORDS_KEYS=_hex_keys((1, old)))
    pool: asyncpg.Pool = client.app[POOL]
    tenant = await make_tenant(pool, client, name="Rotate")
    patient, doctor = tenant[Role.PATIENT], tenant[Role.DOCTOR]
    await give_care(pool, doctor, patient)
    national_id = f"ROT-{secrets.token_hex(4)}"
    resp = await client.patch(
        f"/api/v1/patients/{patient.user_id}/profile",
        json={"national_id": national_id},
        headers=tenant[Role.RECEPTIONIST].headers,
    )
    assert resp.status == 200, await resp.text()
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/notes",
        json={"body": "Before rotation."},
        headers=doctor.headers,
    )
    assert resp.status == 201, await resp.text()
    # A note from before field encryption, still plaintext in the legacy table.
    await pool.execute(
        "INSERT INTO patient_notes (clinic_id, patient_id, author_id, body) "
        "VALUES ($1, $2, $3, 'Legacy plaintext note.')",
        tenant.clinic_id,
        patient.user_id,
        doctor.user_id,
    )
    old_key = await pool.fetchval(
        "SELECT id FROM record_keys WHERE clinic_id = $1 AND retired_at IS NULL", tenant.clinic_id
    )

    env = settings_env(database_url, tmp_path / "cli", RECORDS_KEYS=_hex_keys((1, old), (2, new)))
    code, output = await _cli(env, "records", "rotate-key", "--clinic", str(tenant.clinic_id))
    assert code == 0, output
    print(output)
    assert "clinical_note_versions.body_ct: 1 re-encrypted" in output  # the legacy one: new key
    assert "patient_profiles.national_id_ct: 1 re-encrypted" in output
    assert "1 legacy note(s) encrypted" in output

    current = await pool.fetchrow(
        "SELECT id, master_version FROM record_keys WHERE clinic_id = $1 AND retired_at IS NULL",
        tenant.clinic_id,
    )
    assert current["id"] != old_key and current["master_version"] == 2
    left = await pool.fetchval(
        "SELECT count(*) FROM clinical_note_versions WHERE clinic_id = $1 "
        "AND substring(body_ct FROM 2 FOR 4) <> $2",
        tenant.clinic_id,
        current["id"].to_bytes(4, "big"),
    )
    assert left == 0
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM patient_notes WHERE clinic_id = $1", tenant.clinic_id
        )
        == 0
    )

    # A server that knows only the new master key reads everything, and finds by national id.
    fresh = await start_server(RECORDS_KEYS=_hex_keys((2, new)))
    resp = await fresh.get(f"/api/v1/patients/{patient.user_id}/notes", headers=doctor.headers)
    assert resp.status == 200, await resp.text()
    bodies = sorted(n["body"] for n in (await resp.json())["items"])
    assert bodies == ["Before rotation.", "Legacy plaintext note."]
    resp = await fresh.get(
        "/api/v1/patient-lookup",
        params={"national_id": national_id},
        headers=tenant[Role.RECEPTIONIST].headers,
    )
    assert (await resp.json())["patient_ids"] == [str(patient.user_id)]


async def test_canary_plaintext_is_nowhere_in_the_database_the_audit_trail_or_the_logs(
    client: Client,
    app_pool: asyncpg.Pool,
    tenant: Tenant,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    patient, doctor = tenant[Role.PATIENT], tenant[Role.DOCTOR]
    await give_care(app_pool, doctor, patient)
    canary = f"CANARY{secrets.token_hex(6)}"
    requests = [
        (
            "PATCH",
            f"/api/v1/patients/{patient.user_id}/profile",
            tenant[Role.RECEPTIONIST],
            {
                "national_id": f"{canary}-NID",
                "emergency_contacts": [
                    {"name": f"{canary} Contact", "relation": "mother", "phone": "+254700111222"}
                ],
            },
        ),
        (
            "PATCH",
            f"/api/v1/patients/{patient.user_id}/clinical-summary",
            doctor,
            {
                "allergies": [{"substance": f"{canary}-allergy"}],
                "conditions": [{"name": f"{canary}-condition"}],
            },
        ),
        ("POST", f"/api/v1/patients/{patient.user_id}/notes", doctor, {"body": f"{canary} note"}),
        (
            "POST",
            f"/api/v1/patients/{patient.user_id}/medications",
            patient,
            {"drug": f"{canary}-drug", "note": f"{canary} side effects"},
        ),
        (
            "POST",
            f"/api/v1/patients/{patient.user_id}/break-glass",
            tenant[Role.NURSE],
            {"reason": f"{canary} emergency reason"},
        ),
    ]
    for method, path, who, body in requests:
        resp = await client.request(method, path, json=body, headers=who.headers)
        assert resp.status < 300, await resp.text()
    device_id, key = await register_device(client, doctor)
    document = prescription_document(doctor, patient, device_id, drug=f"{canary}-rx")
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/prescriptions",
        json=signed_body(document, device_id, key),
        headers=doctor.headers,
    )
    assert resp.status == 201, await resp.text()
    # A document: its title in the database, its content in the sealed blob store.
    content = b"%PDF-1.4\n" + canary.encode() + b" lab result\n"
    resp = await upload(client, patient, patient, content, title=f"{canary} title")
    assert resp.status == 201, await resp.text()
    blobs = [p for p in client.app[SETTINGS].recording.local_dir.rglob("*") if p.is_file()]
    assert blobs and not any(needle_in(p.read_bytes(), canary) for p in blobs)
    # Read it all back (the reads are audited and logged too).
    for path in (
        "profile",
        "clinical-summary",
        "notes",
        "medications",
        "prescriptions",
        "documents",
    ):
        resp = await client.get(
            f"/api/v1/patients/{patient.user_id}/{path}", headers=doctor.headers
        )
        assert resp.status == 200, await resp.text()
        assert canary in await resp.text()
    await chained(app_pool)

    columns = await app_pool.fetch(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY table_name, column_name"
    )
    assert len(columns) > 100
    found = []
    needle = canary.encode()
    for col in columns:
        table, column = col["table_name"], col["column_name"]
        if col["data_type"] == "bytea":
            sql = f'SELECT count(*) FROM "{table}" WHERE position($1::bytea IN "{column}") > 0'
            hits = await app_pool.fetchval(sql, needle)
        else:
            sql = f'SELECT count(*) FROM "{table}" WHERE "{column}"::text ILIKE $1'
            hits = await app_pool.fetchval(sql, f"%{canary}%")
        if hits:
            found.append(f"{table}.{column}")
    assert found == []
    audit_rows = await app_pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE clinic_id = $1", tenant.clinic_id
    )
    assert audit_rows >= 10  # the trail was written, without the canary (scanned above)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "break-glass access" in logged  # the logs were captured...
    assert canary not in logged  # ...and hold ids, never content


def test_records_keys_are_validated_and_a_dev_key_is_generated_private(tmp_path: Path) -> None:
    base = {"TELECONSULT_DATA_DIR": str(tmp_path / "data"), "JWT_SECRET": "x" * 40}
    for bad in ("1:abcd", "0:" + "ab" * 32, "1:" + "ab" * 32 + ",1:" + "cd" * 32, "nonsense"):
        with pytest.raises(ConfigError) as caught:
            load_settings({**base, "RECORDS_KEYS": bad})
        assert caught.value.variable == "RECORDS_KEYS"
    given = load_settings({**base, "RECORDS_KEYS": "2:" + "ab" * 32 + ",1:" + "cd" * 32})
    assert given.records.current_version == 2
    generated = load_settings(base)
    key_file = tmp_path / "data" / "records-keys"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_settings(base).records == generated.records  # stable across starts
    from_file = load_settings({**base, "RECORDS_KEYS_FILE": str(key_file)})
    assert from_file.records == generated.records
