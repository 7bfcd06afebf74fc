"""Helpers for the records tests: care relationships, appointments, devices, prescriptions,
documents."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from aiohttp.test_utils import TestClient
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from teleconsult.core.identity import Role
from tests.world import Account, Tenant, login, make_user

Client = TestClient[Any, Any]


async def give_care(
    pool: asyncpg.Pool, clinician: Account, patient: Account, *, days: int = 30
) -> UUID:
    """Put ``clinician`` on ``patient``'s care team for ``days`` (straight into the table)."""
    member: UUID = await pool.fetchval(
        "INSERT INTO care_team_members (clinic_id, patient_id, member_id, ends_at, added_by) "
        "VALUES ($1, $2, $3, now() + make_interval(days => $4), $3) RETURNING id",
        patient.clinic_id,
        patient.user_id,
        clinician.user_id,
        days,
    )
    return member


async def appointment(
    pool: asyncpg.Pool,
    doctor: Account,
    patient: Account,
    *,
    starts_in: timedelta,
    status: str = "confirmed",
) -> UUID:
    starts = datetime.now(UTC) + starts_in
    await pool.execute(
        "INSERT INTO doctor_profiles (user_id, clinic_id, consultation_minutes, currency, "
        "services) VALUES ($1, $2, 30, 'KES', '{video}') ON CONFLICT DO NOTHING",
        doctor.user_id,
        doctor.clinic_id,
    )
    found: UUID = await pool.fetchval(
        "INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at, ends_at, "
        "status) VALUES ($1, $2, $3, 'video', $4, $5, $6) RETURNING id",
        patient.clinic_id,
        doctor.user_id,
        patient.user_id,
        starts,
        starts + timedelta(minutes=30),
        status,
    )
    return found


async def register_device(client: Client, who: Account) -> tuple[UUID, SigningKey]:
    """A chat device of ``who``; returns its id and its Ed25519 signing key (client side)."""
    signing = SigningKey.generate()

    def b64url(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    resp = await client.post(
        "/api/v1/devices",
        json={
            "x25519_public": b64url(bytes(PrivateKey.generate().public_key)),
            "ed25519_public": b64url(bytes(signing.verify_key)),
        },
        headers=who.headers,
    )
    assert resp.status == 201, await resp.text()
    return UUID((await resp.json())["id"]), signing


def canonical(document: dict[str, Any]) -> bytes:
    """The canonical form, written here from docs/records.md, not imported."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


DOMAIN = b"teleconsult/prescription/v1\0"


def prescription_document(
    doctor: Account,
    patient: Account,
    device_id: UUID,
    *,
    patient_name: str = "Test Patient",
    doctor_name: str = "Test Doctor",
    drug: str = "Amoxicillin 500 mg capsule",
) -> dict[str, Any]:
    now = datetime.now(UTC).replace(microsecond=0)
    return {
        "v": 1,
        "clinic_id": str(patient.clinic_id),
        "patient_id": str(patient.user_id),
        "patient_name": patient_name,
        "doctor_id": str(doctor.user_id),
        "doctor_name": doctor_name,
        "device_id": str(device_id),
        "issued_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "expires_at": (now + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "items": [
            {
                "drug": drug,
                "dose": "1 capsule",
                "frequency": "3 times a day",
                "duration_days": 7,
                "quantity": 21,
                "instructions": "after meals " + uuid4().hex[:6],
            }
        ],
    }


def signed_body(document: dict[str, Any], device_id: UUID, key: SigningKey) -> dict[str, str]:
    raw = canonical(document)
    signature = key.sign(DOMAIN + raw).signature
    return {
        "device_id": str(device_id),
        "document": base64.b64encode(raw).decode(),
        "signature": base64.b64encode(signature).decode(),
    }


# -- documents ------------------------------------------------------------------------

CHUNK = 512 * 1024
OCTETS = {"Content-Type": "application/octet-stream"}


def pdf(size: int) -> bytes:
    marker = b"%PDF-1.7\nPLAINTEXT-MARKER-" + os.urandom(8).hex().encode() + b"\n"
    return marker + os.urandom(size - len(marker))


def declared(content: bytes, **body: Any) -> dict[str, Any]:
    """The body that starts an upload of ``content`` (a lab result unless ``body`` says)."""
    return {
        "title": "Full blood count",
        "category": "lab_result",
        "content_type": "application/pdf",
        "size": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    } | body


async def start(client: Client, who: Account, patient: Account, content: bytes, **body: Any) -> Any:
    return await client.post(
        f"/api/v1/patients/{patient.user_id}/document-uploads",
        json=declared(content, **body),
        headers=who.headers,
    )


async def send_chunks(
    client: Client, who: Account, patient: Account, upload: str, content: bytes
) -> None:
    for offset in range(0, len(content), CHUNK):
        resp = await client.put(
            f"/api/v1/patients/{patient.user_id}/document-uploads/{upload}",
            params={"offset": str(offset)},
            data=content[offset : offset + CHUNK],
            headers={**who.headers, **OCTETS},
        )
        assert resp.status == 200, await resp.text()


async def upload(
    client: Client, who: Account, patient: Account, content: bytes, **body: Any
) -> Any:
    """Start, send and complete an upload; the answer to the completing request."""
    resp = await start(client, who, patient, content, **body)
    assert resp.status == 201, await resp.text()
    upload_id = (await resp.json())["id"]
    await send_chunks(client, who, patient, upload_id, content)
    return await client.post(
        f"/api/v1/patients/{patient.user_id}/document-uploads/{upload_id}/complete",
        headers=who.headers,
    )


async def new_household(client: Client, tenant: Tenant) -> str:
    """A new household of the tenant's clinic, made by its front desk."""
    resp = await client.post(
        "/api/v1/households", json={"label": "Family"}, headers=tenant[Role.RECEPTIONIST].headers
    )
    assert resp.status == 201, await resp.text()
    household_id: str = (await resp.json())["id"]
    return household_id


async def add_member(
    client: Client, tenant: Tenant, household: str, who: Account, **body: Any
) -> Any:
    """The front desk puts ``who`` in the household (``kind``, ``permissions``...)."""
    return await client.post(
        f"/api/v1/households/{household}/members",
        json={"user_id": str(who.user_id), **body},
        headers=tenant[Role.RECEPTIONIST].headers,
    )


async def child_of(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, *permissions: str
) -> tuple[Account, str]:
    """A new ten-year-old patient, a dependant (with ``permissions``) in a new household
    whose guardian is the tenant's patient; the child, signed in, and the household."""
    child = await login(client, await make_user(app_pool, tenant.clinic_id, Role.PATIENT))
    ten_years_ago = date.today().replace(year=date.today().year - 10)
    await app_pool.execute(
        "UPDATE users SET date_of_birth = $2 WHERE id = $1", child.user_id, ten_years_ago
    )
    household = await new_household(client, tenant)
    guardian = tenant[Role.PATIENT]
    assert (await add_member(client, tenant, household, guardian, kind="guardian")).status == 200
    resp = await add_member(
        client, tenant, household, child, kind="dependant", permissions=list(permissions)
    )
    assert resp.status == 200, await resp.text()
    return child, household
