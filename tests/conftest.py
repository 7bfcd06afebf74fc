"""Shared fixtures: a real PostgreSQL database per test session, pools, settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.core.db import create_pool
from teleconsult.core.settings import (
    OWASP_MIN_MEMLIMIT_KIB,
    OWASP_MIN_OPSLIMIT,
    Settings,
    load_settings,
)
from teleconsult.server.app import POOL, create_app
from tests.coturnkit import Coturn, find_turnserver, free_port_tcp_udp
from tests.dbutil import create_database, create_database_sync, drop_database, drop_database_sync
from tests.rtckit import host_networks
from tests.world import Tenant, make_tenant


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, migrated database on the real server, dropped after the session.

    Tests share it and keep out of each other's way by creating their own
    clinics (tenants) with unique names and e-mail addresses.
    """
    dsn = create_database_sync()
    yield dsn
    drop_database_sync(dsn)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    db_pool = await create_pool(database_url, min_size=1, max_size=5)
    yield db_pool
    await db_pool.close()


def settings_env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for a test server: real database, cheapest allowed password hashing."""
    env = {
        "DATABASE_URL": database_url,
        "TELECONSULT_DATA_DIR": str(data_dir),
        "JWT_SECRET": "test-secret-" + "x" * 40,
        "PASSWORD_HASH_MEMLIMIT_KIB": str(OWASP_MIN_MEMLIMIT_KIB),
        "PASSWORD_HASH_OPSLIMIT": str(OWASP_MIN_OPSLIMIT),
        "LOG_FORMAT": "text",
        # Many test users sign in from 127.0.0.1; per-address limits get their own test.
        "LOGIN_MAX_PER_ADDRESS": "100000",
        "REGISTER_MAX_PER_ADDRESS": "100000",
        # Tests that inspect the outbox must not race a sender; tests/test_outbox.py
        # and the in-server test turn it on.
        "NOTIFY_IN_SERVER": "false",
        # payments (issue 15): nor a payment reconciler; payment tests turn it on.
        "PAYMENTS_RECONCILE_IN_SERVER": "false",
        # Nor a FHIR export worker, whose polling would show in statement counts;
        # the export tests turn it on.
        "FHIR_EXPORT_IN_SERVER": "false",
        # Port 1883 is the machine's Mosquitto; MQTT tests start their own brokers.
        "MQTT_EMBEDDED_PORT": "off",
        # The network test's peers talk on this machine's (usually private) addresses.
        "RTC_ALLOWED_PEER_NETWORKS": host_networks(),
    }
    env.update(extra)
    return env


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(settings_env(database_url, tmp_path))


@pytest.fixture
async def client(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]], settings: Settings
) -> TestClient[Any, Any]:
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def app_pool(client: TestClient[Any, Any]) -> asyncpg.Pool:
    """The running app's own pool."""
    return client.app[POOL]


@pytest.fixture
async def tenant(client: TestClient[Any, Any], app_pool: asyncpg.Pool) -> Tenant:
    return await make_tenant(app_pool, client, name="Own")


@pytest.fixture
async def other_tenant(client: TestClient[Any, Any], app_pool: asyncpg.Pool) -> Tenant:
    return await make_tenant(app_pool, client, name="Other")


@pytest.fixture
async def fresh_db() -> AsyncIterator[str]:
    """A database of its own (migrated), for tests that run server processes on it."""
    dsn = await create_database()
    try:
        yield dsn
    finally:
        await drop_database(dsn)


@pytest.fixture(scope="session")
def turnserver() -> str:
    """Path of coturn's turnserver, installing it if need be. Missing means FAIL."""
    return find_turnserver()


@pytest.fixture
async def coturn(turnserver: str, tmp_path: Path) -> AsyncIterator[Coturn]:
    workdir = tmp_path / "coturn"
    workdir.mkdir()
    server = Coturn(turnserver, workdir, free_port_tcp_udp())
    try:
        yield server
    finally:
        await server.stop()


StartServer = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def start_server(
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    database_url: str,
    tmp_path: Path,
) -> StartServer:
    """A real server with some chat settings of the test's own (``CHAT_...=...``)."""

    async def start(**env: str) -> TestClient[Any, Any]:
        settings = load_settings(settings_env(database_url, tmp_path, **env))
        return await aiohttp_client(create_app(settings))

    return start
