"""The records run as the least-privileged runtime role (README, Database): every part
works, the append-only tables refuse what they must, and rotation needs no owner."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.core.identity import Role
from teleconsult.core.settings import load_settings
from teleconsult.records.fieldcrypt import FieldCrypt
from teleconsult.records.rotate import rotate
from teleconsult.server.app import POOL, SETTINGS, create_app
from tests.conftest import settings_env
from tests.recordskit import (
    give_care,
    prescription_document,
    register_device,
    signed_body,
    upload,
)
from tests.security.pg_roles import owner_and_runtime
from tests.world import make_tenant


async def test_every_record_part_works_as_the_runtime_role_and_history_stays(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], tmp_path: Path
) -> None:
    async with owner_and_runtime() as roles:
        settings = load_settings(
            settings_env(roles.runtime_url, tmp_path, DATABASE_OWNER_URL=roles.owner_url)
        )
        client = await aiohttp_client(create_app(settings))
        pool: asyncpg.Pool = client.app[POOL]
        assert await pool.fetchval("SELECT current_user") == roles.runtime
        tenant = await make_tenant(pool, client, name="Least")
        patient, doctor = tenant[Role.PATIENT], tenant[Role.DOCTOR]
        await give_care(pool, doctor, patient)
        base = f"/api/v1/patients/{patient.user_id}"
        note = await (
            await client.post(f"{base}/notes", json={"body": "Runtime."}, headers=doctor.headers)
        ).json()
        steps: list[tuple[str, str, Any, dict[str, Any] | None]] = [
            ("POST", f"{base}/notes/{note['id']}/amendments", doctor, {"body": "Amended."}),
            ("PATCH", f"{base}/profile", tenant[Role.RECEPTIONIST], {"national_id": "RT-1"}),
            ("PATCH", f"{base}/clinical-summary", doctor, {"blood_type": "B+"}),
            (
                "POST",
                f"{base}/vitals",
                patient,
                {
                    "kind": "weight",
                    "value": 60,
                    "unit": "kg",
                    "measured_at": datetime.now(UTC).isoformat(),
                },
            ),
            ("POST", f"{base}/medications", patient, {"drug": "Aspirin"}),
            ("POST", f"{base}/break-glass", tenant[Role.NURSE], {"reason": "Collapsed at home"}),
            ("GET", "/api/v1/sync", doctor, None),
        ]
        for method, path, who, body in steps:
            resp = await client.request(method, path, json=body, headers=who.headers)
            assert resp.status < 300, f"{method} {path}: {await resp.text()}"
        device_id, key = await register_device(client, doctor)
        document = prescription_document(doctor, patient, device_id)
        resp = await client.post(
            f"{base}/prescriptions",
            json=signed_body(document, device_id, key),
            headers=doctor.headers,
        )
        assert resp.status == 201, await resp.text()
        rx = await resp.json()
        resp = await client.post(f"{base}/prescriptions/{rx['id']}/cancel", headers=doctor.headers)
        assert resp.status == 200, await resp.text()
        content = b"%PDF-1.4\n runtime role\n"
        resp = await upload(client, doctor, patient, content, title="Scan", category="report")
        assert resp.status == 201, await resp.text()

        # What must stay, stays, even for the server's own role.
        for statement in (
            "DELETE FROM clinical_note_versions",
            "UPDATE clinical_note_versions SET author_id = patient_id",
            "DELETE FROM prescriptions",
            "UPDATE vital_signs SET value = 1",
            "DELETE FROM consents",
            "DELETE FROM document_versions",
            "DELETE FROM record_changes",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await pool.execute(statement)

        # Rotation needs only the runtime role (the command line connects as it).
        async with pool.acquire() as conn:
            crypt = FieldCrypt(dict(client.app[SETTINGS].records.master_keys))
            report = await rotate(conn, crypt, clinic_id=tenant.clinic_id, say=lambda _: None)
        assert report.rewritten >= 6
        resp = await client.get(f"{base}/notes/{note['id']}/versions", headers=doctor.headers)
        assert [v["body"] for v in (await resp.json())["items"]] == ["Runtime.", "Amended."]
        await client.close()
