"""Idempotency keys (payments/idempotency.py) on the real database, and junk callbacks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.core.errors import Conflict, Unprocessable
from teleconsult.payments.idempotency import IdempotencyKeys, Replay, fingerprint
from tests.paymentskit import pay_world

Client = TestClient[Any, Any]


async def test_a_finished_key_replays_and_a_changed_request_is_refused(
    app_pool: asyncpg.Pool,
) -> None:
    keys = IdempotencyKeys(app_pool)
    user, key = uuid4(), "k-1"
    one = fingerprint("startPayment", "/p", b'{"a": 1, "b": 2}')
    assert one == fingerprint("startPayment", "/p", b'{"b":2,"a":1}')  # same JSON value
    assert await keys.begin(user, key, "startPayment", one) is None
    with pytest.raises(Conflict):  # still running
        await keys.begin(user, key, "startPayment", one)
    await keys.finish(user, key, 201, '{"id": 1}', "application/json")
    assert await keys.begin(user, key, "startPayment", one) == Replay(
        201, '{"id": 1}', "application/json"
    )
    with pytest.raises(Unprocessable):
        await keys.begin(user, key, "startPayment", fingerprint("startPayment", "/p", b"{}"))
    # Keys are per caller.
    assert await keys.begin(uuid4(), key, "startPayment", one) is None


async def test_a_dead_runners_key_is_taken_over_after_its_lease(app_pool: asyncpg.Pool) -> None:
    keys = IdempotencyKeys(app_pool, lease=0.0)
    user, print_ = uuid4(), fingerprint("takeCash", "/c", b"")
    assert await keys.begin(user, "k", "takeCash", print_) is None
    assert await keys.begin(user, "k", "takeCash", print_) is None  # lease over: ours now


async def test_keys_live_24_hours_then_are_swept(app_pool: asyncpg.Pool) -> None:
    keys = IdempotencyKeys(app_pool, ttl=timedelta(hours=24))
    user, print_ = uuid4(), fingerprint("waiveFee", "/w", b"{}")
    assert await keys.begin(user, "old", "waiveFee", print_) is None
    await keys.finish(user, "old", 200, "{}", "application/json")
    await app_pool.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE user_id = $1",
        user,
    )
    # An expired key is as good as absent: a new request runs.
    assert await keys.begin(user, "old", "waiveFee", fingerprint("waiveFee", "/w", b"[]")) is None
    await app_pool.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE user_id = $1",
        user,
    )
    assert await keys.sweep() >= 1
    assert (
        await app_pool.fetchval("SELECT count(*) FROM idempotency_keys WHERE user_id = $1", user)
        == 0
    )


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[Client]], database_url: str, tmp_path: Path
) -> AsyncIterator[Client]:
    """A server with every provider configured (against the simulators)."""
    async for pw in pay_world(aiohttp_client, database_url, tmp_path):
        yield pw.client


# (provider, body, status): unreadable 422, badly signed 401, no such provider 404; a
# readable callback for a payment nobody made is answered 200 "ignored" (and audited).
JUNK: list[tuple[str, bytes, int]] = [
    ("momo", b"not json", 422),
    ("momo", json.dumps({"status": "WEIRD"}).encode(), 422),
    ("momo", json.dumps([1, 2]).encode(), 422),
    ("mpesa", json.dumps({"Body": {"stkCallback": {"CheckoutRequestID": "x", "ResultCode": 0,
                                                    "CallbackMetadata": "oops"}}}).encode(), 200),
    ("mpesa", json.dumps({"Body": {"stkCallback": {"CheckoutRequestID": "x", "ResultCode": 0,
        "CallbackMetadata": {"Item": [{"Name": "Amount", "Value": "abc"}]}}}}).encode(), 422),
    ("mpesa", json.dumps({"Body": []}).encode(), 422),
    ("card", b"{}", 401),
    ("nosuch", b"{}", 404),
    ("cash", b"{}", 404),
]  # fmt: skip


@pytest.mark.parametrize(("provider", "body", "status"), JUNK)
async def test_junk_callbacks_are_answered_never_with_a_5xx(
    client: Client, provider: str, body: bytes, status: int
) -> None:
    for method in ("POST", "PUT"):
        resp = await client.request(
            method, f"/api/v1/webhooks/payments/{provider}", data=body,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        assert resp.status == status, await resp.text()
        if status != 200:
            assert resp.content_type == "application/problem+json"
