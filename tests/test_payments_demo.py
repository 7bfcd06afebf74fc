"""The demo clinic's providers: the simulators mounted in the server itself (make run)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

from aiohttp.test_utils import TestClient, TestServer

from teleconsult.core.identity import Role
from teleconsult.core.settings import load_settings
from teleconsult.server.app import POOL, create_app
from tests.conftest import settings_env
from tests.paymentskit import book, free_port, give_fee, invoice_of, key
from tests.world import make_tenant

Client = TestClient[Any, Any]


def test_demo_is_on_only_with_the_embedded_database_and_no_provider(tmp_path: Path) -> None:
    base = {"JWT_SECRET": "x" * 40, "TELECONSULT_DATA_DIR": str(tmp_path)}
    assert load_settings(base).payments.demo is True
    assert load_settings(base | {"DATABASE_URL": "postgresql://h/db"}).payments.demo is False
    card = {"PAYMENTS_CARD_URL": "https://api.paystack.co", "PAYMENTS_CARD_SECRET_KEY": "s" * 20}
    assert load_settings(base | card).payments.demo is False


async def test_a_demo_server_takes_mobile_money_through_its_own_simulators(
    aiohttp_client: Callable[..., Awaitable[Client]], database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    settings = load_settings(
        settings_env(
            database_url, tmp_path, PAYMENTS_DEMO="on", PUBLIC_URL=f"http://127.0.0.1:{port}",
            PAYMENTS_POLL_INTERVAL="0.2", PAYMENTS_RECONCILE_IN_SERVER="true",
        )
    )  # fmt: skip
    assert settings.payments.demo and settings.payments.momo is None
    client = await aiohttp_client(TestServer(create_app(settings), host="127.0.0.1", port=port))
    pool = client.app[POOL]
    clinic = await make_tenant(pool, client, name="Demo")
    await give_fee(pool, clinic[Role.DOCTOR], fee=5_000, currency="XOF")
    invoice_id = await invoice_of(pool, await book(pool, clinic[Role.DOCTOR], clinic[Role.PATIENT]))
    resp = await client.post(
        f"/api/v1/invoices/{invoice_id}/payments",
        json={"provider": "momo", "payer": "22990000001"},
        headers=clinic[Role.PATIENT].headers | key(),
    )
    assert resp.status == 201, await resp.text()
    payment_id = UUID((await resp.json())["id"])
    async with asyncio.timeout(15):
        while True:
            status = await pool.fetchval("SELECT status FROM payments WHERE id = $1", payment_id)
            if status != "pending":
                break
            await asyncio.sleep(0.05)
    assert await pool.fetchval("SELECT status FROM invoices WHERE id = $1", invoice_id) == "paid"
    settings_answer = await client.get(
        "/api/v1/payment-settings", headers=clinic[Role.ADMIN].headers
    )
    assert (await settings_answer.json())["providers"] == ["card", "cash", "momo", "mpesa"]
    # The simulators' control API: the ground truth, and misbehaviour on demand.
    truth = await (await client.get("/_simulators/_control/truth")).json()
    assert [t["state"] for t in truth["momo"].values()] == ["succeeded"]
    changed = await client.post("/_simulators/_control/mpesa/behaviour", json={"drop_rate": 1})
    assert changed.status == 200 and (await changed.json())["drop_rate"] == 1
    refused = await client.post("/_simulators/_control/mpesa/behaviour", json={"nope": 1})
    assert refused.status == 400
