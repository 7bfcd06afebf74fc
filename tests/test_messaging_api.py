"""Messaging over REST: end-to-end encrypted, durable, ordered, idempotent, resumable."""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.client.crypto import DeviceKeys, new_client_msg_id, open_envelope, seal
from teleconsult.core.identity import Role
from teleconsult.messaging.envelope import Envelope, encode_b64url, from_json, to_json
from tests.auditkit import chained
from tests.world import Account, Tenant, assert_problem

CANARY = "CANARY-7c1e-chest-pain-since-tuesday"


class Phone:
    """A signed-in user's device: its keys stay here, the server gets public halves."""

    def __init__(self, account: Account) -> None:
        self.account = account
        self.keys = DeviceKeys.generate()
        self.device_id = UUID(int=0)

    async def register(self, client: TestClient[Any, Any]) -> Phone:
        resp = await client.post(
            "/api/v1/devices",
            json={
                "x25519_public": encode_b64url(self.keys.encryption_public_key),
                "ed25519_public": encode_b64url(self.keys.signing_public_key),
                "label": "phone",
            },
            headers=self.account.headers,
        )
        assert resp.status == 201, await resp.text()
        self.device_id = UUID((await resp.json())["id"])
        return self

    async def seal_for(
        self, client: TestClient[Any, Any], thread_id: str, text: str, msg_id: str | None = None
    ) -> Envelope:
        devices = await client.get(
            f"/api/v1/threads/{thread_id}/devices", headers=self.account.headers
        )
        recipients = {
            UUID(d["id"]): _b64(d["x25519_public"]) for d in (await devices.json())["items"]
        }
        return seal(
            plaintext=text.encode(),
            thread_id=UUID(thread_id),
            sender=self.keys,
            sender_device_id=self.device_id,
            recipients=recipients,
            client_msg_id=msg_id or new_client_msg_id(),
        )


def _b64(text: str) -> bytes:
    from teleconsult.messaging.envelope import decode_b64url

    return decode_b64url(text, field="key")


async def _thread(client: TestClient[Any, Any], tenant: Tenant) -> tuple[str, Phone, Phone]:
    doctor = await Phone(tenant[Role.DOCTOR]).register(client)
    patient = await Phone(tenant[Role.PATIENT]).register(client)
    resp = await client.post(
        "/api/v1/threads",
        json={"kind": "direct", "member_ids": [str(patient.account.user_id)]},
        headers=doctor.account.headers,
    )
    assert resp.status == 201, await resp.text()
    return (await resp.json())["id"], doctor, patient


async def _send(client: TestClient[Any, Any], who: Phone, thread_id: str, env: Envelope) -> Any:
    return await client.post(
        f"/api/v1/threads/{thread_id}/messages",
        json={"envelope": to_json(env)},
        headers=who.account.headers,
    )


async def test_a_message_reaches_the_other_side_encrypted_and_in_order(
    client: TestClient[Any, Any],
    app_pool: asyncpg.Pool,
    tenant: Tenant,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    thread_id, doctor, patient = await _thread(client, tenant)
    for n in range(3):
        env = await doctor.seal_for(client, thread_id, f"{CANARY} #{n}")
        sent = await _send(client, doctor, thread_id, env)
        assert sent.status == 200, await sent.text()
        assert (await sent.json())["seq"] == n + 1
    history = await client.get(
        f"/api/v1/threads/{thread_id}/messages?after=0&limit=2", headers=patient.account.headers
    )
    page = await history.json()
    assert [m["seq"] for m in page["items"]] == [1, 2] and page["complete"] is False
    rest = await client.get(
        f"/api/v1/threads/{thread_id}/messages?after=2", headers=patient.account.headers
    )
    last = await rest.json()
    assert [m["seq"] for m in last["items"]] == [3] and last["complete"] is True
    texts = [
        open_envelope(
            from_json(m["envelope"]),
            me=patient.keys,
            my_device_id=patient.device_id,
            sender_signing_key=doctor.keys.signing_public_key,
        ).decode()
        for m in page["items"] + last["items"]
    ]
    assert texts == [f"{CANARY} #{n}" for n in range(3)]
    # The server never held the plaintext: not in the database, not in its logs.
    stored = await app_pool.fetch(
        "SELECT envelope FROM messages WHERE thread_id = $1", UUID(thread_id)
    )
    assert stored and all(CANARY.encode() not in bytes(r["envelope"]) for r in stored)
    await chained(app_pool)
    audit = await app_pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE detail::text LIKE '%' || $1 || '%'", CANARY
    )
    assert audit == 0
    assert CANARY not in caplog.text


async def test_sending_again_returns_the_original_seq_and_stores_nothing(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    thread_id, doctor, _ = await _thread(client, tenant)
    env = await doctor.seal_for(client, thread_id, "hello")
    first = await (await _send(client, doctor, thread_id, env)).json()
    again = await (await _send(client, doctor, thread_id, env)).json()
    assert again["seq"] == first["seq"] and again["duplicate"] is True
    different = await doctor.seal_for(client, thread_id, "other text", msg_id=env.client_msg_id)
    await assert_problem(
        await _send(client, doctor, thread_id, different), 409, "client_msg_id_reused"
    )
    count = await app_pool.fetchval(
        "SELECT count(*) FROM messages WHERE thread_id = $1", UUID(thread_id)
    )
    assert count == 1


async def test_forged_revoked_foreign_and_malformed_envelopes_are_refused_and_not_stored(
    client: TestClient[Any, Any], app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    thread_id, doctor, patient = await _thread(client, tenant)
    good = await doctor.seal_for(client, thread_id, "hi")
    forged = to_json(good)
    forged["signature"] = encode_b64url(bytes(64))
    resp = await client.post(
        f"/api/v1/threads/{thread_id}/messages",
        json={"envelope": forged},
        headers=doctor.account.headers,
    )
    await assert_problem(resp, 400, "bad_signature")

    impostor = await _send(client, patient, thread_id, good)  # doctor's device, patient's token
    await assert_problem(impostor, 403, "device_not_usable")

    outsider = Phone(tenant[Role.NURSE])
    await outsider.register(client)
    leaked = seal(
        plaintext=b"x",
        thread_id=UUID(thread_id),
        sender=doctor.keys,
        sender_device_id=doctor.device_id,
        recipients={outsider.device_id: outsider.keys.encryption_public_key},
    )
    await assert_problem(await _send(client, doctor, thread_id, leaked), 400, "not_a_recipient")

    garbage = await client.post(
        f"/api/v1/threads/{thread_id}/messages",
        json={"envelope": {"v": 1, "hello": "world"}},
        headers=doctor.account.headers,
    )
    await assert_problem(garbage, 400, "invalid_envelope")

    await client.delete(f"/api/v1/devices/{doctor.device_id}", headers=doctor.account.headers)
    revoked = await _send(client, doctor, thread_id, good)
    await assert_problem(revoked, 403, "device_not_usable")

    count = await app_pool.fetchval(
        "SELECT count(*) FROM messages WHERE thread_id = $1", UUID(thread_id)
    )
    assert count == 0


async def test_non_members_see_nothing_of_a_thread(
    client: TestClient[Any, Any], tenant: Tenant, other_tenant: Tenant
) -> None:
    thread_id, _, _ = await _thread(client, tenant)
    assert tenant.other_patient is not None
    for outsider in (tenant[Role.ADMIN], tenant.other_patient, other_tenant[Role.DOCTOR]):
        for path in ("", "/messages", "/devices"):
            resp = await client.get(f"/api/v1/threads/{thread_id}{path}", headers=outsider.headers)
            await assert_problem(resp, 404, "not_found")


async def test_receipts_only_move_forward(client: TestClient[Any, Any], tenant: Tenant) -> None:
    thread_id, doctor, patient = await _thread(client, tenant)
    for text in ("a", "b"):
        await _send(client, doctor, thread_id, await doctor.seal_for(client, thread_id, text))
    url = f"/api/v1/threads/{thread_id}/receipts"
    headers = patient.account.headers
    first = await (await client.post(url, json={"read_seq": 2}, headers=headers)).json()
    assert first["delivered_seq"] == 2 and first["read_seq"] == 2
    back = await (await client.post(url, json={"read_seq": 1}, headers=headers)).json()
    assert back["read_seq"] == 2


async def test_patients_cannot_start_threads(client: TestClient[Any, Any], tenant: Tenant) -> None:
    resp = await client.post(
        "/api/v1/threads",
        json={"kind": "direct", "member_ids": [str(tenant[Role.DOCTOR].user_id)]},
        headers=tenant[Role.PATIENT].headers,
    )
    await assert_problem(resp, 403, "forbidden")
