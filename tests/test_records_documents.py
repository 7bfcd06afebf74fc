"""Documents round-tripped through the sealed blob store: chunked, checksummed, versioned,
content-type checked against magic bytes, size-limited, served only as attachments."""

from __future__ import annotations

import hashlib

import asyncpg
import pytest

from teleconsult.core.identity import Role
from teleconsult.server.app import SETTINGS
from tests.recordskit import CHUNK, OCTETS, Client, give_care, pdf, start, upload
from tests.world import Tenant, assert_problem


@pytest.fixture
async def cared(app_pool: asyncpg.Pool, tenant: Tenant) -> Tenant:
    await give_care(app_pool, tenant[Role.DOCTOR], tenant[Role.PATIENT])
    return tenant


async def test_a_document_round_trips_through_the_sealed_store_as_an_attachment(
    client: Client, cared: Tenant
) -> None:
    patient, doctor = cared[Role.PATIENT], cared[Role.DOCTOR]
    content = pdf(CHUNK * 2 + 1234)  # three chunks
    resp = await upload(client, doctor, patient, content)
    assert resp.status == 201, await resp.text()
    document = await resp.json()
    assert [v["version"] for v in document["versions"]] == [1]
    assert document["versions"][0]["sha256"] == hashlib.sha256(content).hexdigest()
    resp = await client.get(
        f"/api/v1/patients/{patient.user_id}/documents/{document['id']}/content",
        headers=patient.headers,
    )
    assert resp.status == 200
    assert await resp.read() == content
    assert resp.headers["Content-Type"] == "application/pdf"
    assert resp.headers["Content-Disposition"].startswith("attachment;")
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # At rest, sealed: the blob holds no plaintext, and the database no chunk any more.
    root = client.app[SETTINGS].recording.local_dir
    blobs = [p for p in root.rglob("*") if p.is_file() and document["id"] in str(p)]
    assert len(blobs) == 1
    assert content[:40] not in blobs[0].read_bytes()


async def test_a_new_version_keeps_the_old_one(client: Client, cared: Tenant) -> None:
    patient, doctor = cared[Role.PATIENT], cared[Role.DOCTOR]
    first, second = pdf(1000), pdf(2000)
    document = await (await upload(client, doctor, patient, first)).json()
    resp = await upload(
        client, patient, patient, second, title=None, category=None, document_id=document["id"]
    )
    assert resp.status == 201, await resp.text()
    assert [v["version"] for v in (await resp.json())["versions"]] == [1, 2]
    base = f"/api/v1/patients/{patient.user_id}/documents/{document['id']}/content"
    assert await (await client.get(base, headers=doctor.headers)).read() == second
    old = await client.get(base, params={"version": "1"}, headers=doctor.headers)
    assert await old.read() == first


async def test_a_wrong_checksum_or_content_type_is_refused_and_nothing_is_kept(
    client: Client, app_pool: asyncpg.Pool, cared: Tenant
) -> None:
    patient, doctor = cared[Role.PATIENT], cared[Role.DOCTOR]
    content = pdf(3000)
    resp = await upload(client, doctor, patient, content, sha256="0" * 64)
    await assert_problem(resp, 422, "validation_failed")
    html = b"<html><script>alert(1)</script></html>"
    resp = await upload(client, doctor, patient, html, content_type="image/png")
    await assert_problem(resp, 415, "unsupported_media_type")
    for table in ("documents", "document_uploads"):
        count = await app_pool.fetchval(
            f"SELECT count(*) FROM {table} WHERE patient_id = $1", patient.user_id
        )
        assert count == 0, table


async def test_sizes_are_limited_and_chunks_come_in_order(client: Client, cared: Tenant) -> None:
    patient, doctor = cared[Role.PATIENT], cared[Role.DOCTOR]
    resp = await client.post(
        f"/api/v1/patients/{patient.user_id}/document-uploads",
        json={
            "title": "Scan",
            "category": "image",
            "content_type": "image/jpeg",
            "size": 21 * 1024 * 1024,
            "sha256": "a" * 64,
        },
        headers=doctor.headers,
    )
    await assert_problem(resp, 413, "payload_too_large")
    content = pdf(CHUNK + 10)
    upload_id = (await (await start(client, doctor, patient, content)).json())["id"]
    path = f"/api/v1/patients/{patient.user_id}/document-uploads/{upload_id}"
    headers = {**doctor.headers, **OCTETS}
    resp = await client.put(
        path, params={"offset": str(CHUNK)}, data=content[CHUNK:], headers=headers
    )
    await assert_problem(resp, 409, "conflict")
    for _ in range(2):  # the second time: a retry, a no-op
        resp = await client.put(path, params={"offset": "0"}, data=content[:CHUNK], headers=headers)
        assert (await resp.json())["received"] == CHUNK
    resp = await client.post(f"{path}/complete", headers=doctor.headers)
    await assert_problem(resp, 409, "conflict")  # not all received
    resp = await client.put(path, params={"offset": "0"}, json={"x": 1}, headers=doctor.headers)
    await assert_problem(resp, 415, "unsupported_media_type")


async def test_documents_follow_the_access_rules(client: Client, cared: Tenant) -> None:
    patient = cared[Role.PATIENT]
    content = pdf(500)
    for who, status, code in [
        (cared[Role.RECEPTIONIST], 403, "forbidden"),
        (cared[Role.NURSE], 403, "forbidden"),  # no care relationship
    ]:
        await assert_problem(await start(client, who, patient, content), status, code)
