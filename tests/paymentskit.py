"""Payments test kit: doctors with fees, appointments (which raise invoices), the
provider simulators, and a test server whose providers point at them."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from teleconsult.core.settings import load_settings
from teleconsult.payments.simulators import Simulators, build_simulators
from teleconsult.payments.simulators.common import Behaviour
from teleconsult.server.app import POOL, create_app
from tests.conftest import settings_env
from tests.world import Account

_slot = 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def give_fee(
    pool: asyncpg.Pool, doctor: Account, *, fee: int = 150_000, currency: str = "KES"
) -> None:
    """A profile with a fee (minor units) for ``doctor``, or the fee set on theirs."""
    await pool.execute(
        """
        INSERT INTO doctor_profiles (user_id, clinic_id, consultation_minutes, buffer_minutes,
                                     fee_cents, currency, services)
        VALUES ($1, $2, 30, 0, $3, $4, '{video,audio,in_person}')
        ON CONFLICT (user_id) DO UPDATE SET fee_cents = $3, currency = $4
        """,
        doctor.user_id,
        doctor.clinic_id,
        fee,
        currency,
    )


async def book(
    pool: asyncpg.Pool | asyncpg.Connection,
    doctor: Account,
    patient: Account,
    *,
    by: Account | None = None,
    service: str = "video",
    starts_at: datetime | None = None,
) -> UUID:
    """An appointment straight into the database (the invoice trigger runs as for any
    booking); a distinct time at each call."""
    global _slot
    _slot += 1
    start = starts_at or datetime.now(UTC) + timedelta(days=400, minutes=45 * _slot)
    appointment_id: UUID = await pool.fetchval(
        """
        INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at, ends_at,
                                  status, created_by)
        VALUES ($1, $2, $3, $4::service_kind, $5, $6, 'confirmed', $7) RETURNING id
        """,
        doctor.clinic_id,
        doctor.user_id,
        patient.user_id,
        service,
        start,
        start + timedelta(minutes=30),
        (by or patient).user_id,
    )
    return appointment_id


async def invoice_of(pool: asyncpg.Pool, appointment_id: UUID) -> UUID:
    invoice_id: UUID | None = await pool.fetchval(
        "SELECT id FROM invoices WHERE appointment_id = $1", appointment_id
    )
    assert invoice_id is not None, "booking raised no invoice"
    return invoice_id


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


@dataclass
class PayWorld:
    client: TestClient[Any, Any]
    sims: Simulators
    sim_url: str


StartPayWorld = Callable[..., Awaitable[PayWorld]]


async def start_sims(behaviour: Behaviour | None = None) -> tuple[TestServer, Simulators]:
    app, sims = build_simulators(webhook_base="http://127.0.0.1:1", behaviour=behaviour)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server, sims


async def pay_world(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    database_url: str,
    tmp_path: Path,
    behaviour: Behaviour | None = None,
    **env: str,
) -> AsyncIterator[PayWorld]:
    """Simulators, then a test server on a known port whose providers use them."""
    server, sims = await start_sims(behaviour)
    sim_url = str(server.make_url("")).rstrip("/")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sims.card.webhook_url = f"{base}/api/v1/webhooks/payments/card"
    settings = load_settings(
        settings_env(
            database_url,
            tmp_path,
            PAYMENTS_CALLBACK_BASE_URL=base,
            PAYMENTS_RECONCILE_IN_SERVER=env.pop("PAYMENTS_RECONCILE_IN_SERVER", "true"),
            PAYMENTS_POLL_INTERVAL=env.pop("PAYMENTS_POLL_INTERVAL", "0.2"),
            PAYMENTS_POLL_MAX_INTERVAL=env.pop("PAYMENTS_POLL_MAX_INTERVAL", "0.5"),
            **sims.env(sim_url),
            **env,
        )
    )
    client = await aiohttp_client(TestServer(create_app(settings), host="127.0.0.1", port=port))
    try:
        yield PayWorld(client, sims, sim_url)
    finally:
        await server.close()


def make_sims_app() -> web.Application:
    return build_simulators(webhook_base="http://127.0.0.1:1")[0]


def world_fixtures(behaviour: Callable[[], Behaviour]) -> tuple[Any, Any]:
    """A payments test module's ``pw`` (a test server whose providers are simulators
    behaving as ``behaviour()`` says) and ``pool`` (its database pool) fixtures:
    ``pw, pool = world_fixtures(lambda: Behaviour(decide_after=0.05))``."""

    @pytest.fixture
    async def pw(
        aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
        database_url: str,
        tmp_path: Path,
    ) -> AsyncIterator[PayWorld]:
        async for world in pay_world(aiohttp_client, database_url, tmp_path, behaviour()):
            yield world

    @pytest.fixture
    def pool(pw: PayWorld) -> asyncpg.Pool:
        return pw.client.app[POOL]

    return pw, pool
