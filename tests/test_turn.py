"""TURN credentials: the scheme, the settings, the route, and coturn itself accepting them.

The coturn tests start Debian's ``turnserver`` on loopback with
``use-auth-secret`` and allocate relays with aioice's TURN client, the same
protocol code aiortc uses. coturn must be installed (``.ci/run`` installs it);
when it is missing and cannot be installed, those tests fail, never skip.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast
from uuid import UUID, uuid4

import pytest
from aiohttp.test_utils import TestClient
from aioice import stun
from aioice.turn import TurnTransport, create_turn_endpoint

from teleconsult.core.errors import ConfigError, RateLimited
from teleconsult.core.identity import Role
from teleconsult.core.ratelimit import InMemoryRateLimiter
from teleconsult.core.settings import Settings, TurnSettings, load_settings
from teleconsult.server.app import SETTINGS, create_app
from teleconsult.turn.credentials import (
    TurnCredentials,
    coturn_auth_config,
    expiry_of,
    mint,
    password_for,
    user_ref,
    verify,
)
from teleconsult.turn.service import TurnService
from tests.conftest import settings_env
from tests.coturnkit import Coturn
from tests.world import Tenant

Client = TestClient[Any, Any]
TRANSPORTS = ("udp", "tcp")
REALM = "teleconsult.test"
STEP_TIMEOUT = 10.0
SECRET_A = "a-secret-of-the-deployment-0001"
SECRET_B = "b-secret-of-the-deployment-0002"


# --- the scheme (pure) -------------------------------------------------------------


def test_password_matches_a_known_vector() -> None:
    # printf '%s' '1700000000:bob' | openssl dgst -sha1 -hmac north -binary | base64
    assert password_for("north", "1700000000:bob") == "7tNSWpJ3gOxGfEgOjt+kaWhBC20="


def test_password_is_base64_of_hmac_sha1_over_the_username() -> None:
    creds = mint(SECRET_A, "ref", now=1_800_000_000.7, ttl=600, uris=["turn:h:3478"])

    expected = base64.b64encode(
        hmac.new(SECRET_A.encode(), creds.username.encode(), hashlib.sha1).digest()
    ).decode()
    assert creds.password == expected


def test_username_is_the_expiry_then_the_user_reference() -> None:
    creds = mint(SECRET_A, "ref", now=1_800_000_000.7, ttl=600, uris=["turn:h:3478"])

    assert creds.username == "1800000600:ref"
    assert creds.expires_at == 1_800_000_600 == expiry_of(creds.username)
    assert creds.ttl == 600


def test_user_reference_is_stable_opaque_and_per_user() -> None:
    alice, bob = uuid4(), uuid4()

    ref = user_ref("key-one", alice)

    assert ref == user_ref("key-one", alice)
    assert ref != user_ref("key-one", bob)
    assert ref != user_ref("key-two", alice)
    assert len(ref) == 22 and ":" not in ref
    for form in (str(alice), alice.hex, base64.urlsafe_b64encode(alice.bytes).decode()):
        assert form.rstrip("=") not in ref


def test_verify_accepts_each_listed_secret_until_expiry() -> None:
    for secret in (SECRET_A, SECRET_B):
        creds = mint(secret, "ref", now=1000, ttl=60, uris=[])
        assert verify([SECRET_B, SECRET_A], creds.username, creds.password, now=1060)
        assert not verify([SECRET_B, SECRET_A], creds.username, creds.password, now=1061)


def test_verify_refuses_forged_and_other_secret_credentials() -> None:
    creds = mint(SECRET_A, "ref", now=1000, ttl=60, uris=[])
    extended = creds.username.replace("1060", "9999")
    assert not verify([SECRET_A], extended, creds.password, now=1000)
    assert not verify([SECRET_A], creds.username, "AAAA" + creds.password[4:], now=1000)
    assert not verify([SECRET_B], creds.username, creds.password, now=1000)
    assert not verify([SECRET_A], "ref", password_for(SECRET_A, "ref"), now=1000)


def test_ice_servers_have_the_rtc_ice_server_shape() -> None:
    uris = ["turn:h:3478?transport=udp", "turns:h:5349?transport=tcp"]
    creds = mint(SECRET_A, "ref", now=1000, ttl=60, uris=uris)

    assert creds.ice_servers() == [
        {"urls": uris, "username": creds.username, "credential": creds.password}
    ]
    assert creds.to_json(refresh_at=1030)["refresh_at"] == 1030
    assert creds.password not in repr(creds)


def test_coturn_auth_config_lists_every_secret() -> None:
    assert coturn_auth_config([SECRET_B, SECRET_A], REALM).splitlines() == [
        "use-auth-secret",
        f"static-auth-secret={SECRET_B}",
        f"static-auth-secret={SECRET_A}",
        f"realm={REALM}",
    ]


# --- the service ---------------------------------------------------------------------


def _service(
    secrets: tuple[str, ...] = (SECRET_B, SECRET_A),
    *,
    now: float = 1_800_000_000.0,
    ttl: int = 3600,
    max_per_minute: int = 30,
) -> TurnService:
    settings = TurnSettings(
        secrets=secrets,
        uris=("turn:127.0.0.1:3478?transport=udp",),
        ttl=ttl,
        refresh_before=300,
        user_ref_key="ref-key",
        max_per_minute=max_per_minute,
    )
    return TurnService(settings, limiter=InMemoryRateLimiter(), clock=lambda: now)


def test_service_signs_with_the_newest_secret() -> None:
    creds = _service().for_user(uuid4())

    assert verify([SECRET_B], creds.username, creds.password, now=1_800_000_000)
    assert not verify([SECRET_A], creds.username, creds.password, now=1_800_000_000)


def test_service_refresh_comes_refresh_before_seconds_ahead_of_expiry() -> None:
    service = _service()
    creds = service.for_user(uuid4())

    assert service.refresh_at(creds) == creds.expires_at - 300
    assert service.refresh_delay(creds) == 3600 - 300


async def test_service_rate_limits_each_user_on_its_own() -> None:
    service = _service(max_per_minute=2)
    alice, bob = uuid4(), uuid4()
    await service.issue(alice)
    await service.issue(alice)

    with pytest.raises(RateLimited) as refused:
        await service.issue(alice)

    assert refused.value.retry_after >= 1
    await service.issue(bob)


# --- settings ------------------------------------------------------------------------


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"TELECONSULT_DATA_DIR": str(tmp_path), **extra}


def test_turn_defaults_generate_a_kept_secret_and_uris_for_the_public_host(
    tmp_path: Path,
) -> None:
    first = load_settings(_env(tmp_path, PUBLIC_URL="https://clinic.example.org")).turn
    second = load_settings(_env(tmp_path)).turn

    assert len(first.secrets) == 1 and len(first.secrets[0]) >= 32
    assert first.secrets == second.secrets
    assert first.uris == (
        "turn:clinic.example.org:3478?transport=udp",
        "turn:clinic.example.org:3478?transport=tcp",
        "turns:clinic.example.org:5349?transport=tcp",
    )
    assert (first.ttl, first.refresh_before) == (3600, 300)
    assert first.user_ref_key and first.user_ref_key == second.user_ref_key


def test_turn_secrets_are_newest_first_from_the_variable_or_a_file(tmp_path: Path) -> None:
    listed = load_settings(_env(tmp_path, TURN_SECRETS=f"{SECRET_B}, {SECRET_A}")).turn
    secret_file = tmp_path / "turn_secrets"
    secret_file.write_text(f"{SECRET_B}\n{SECRET_A}\n")
    from_file = load_settings(_env(tmp_path, TURN_SECRETS_FILE=str(secret_file))).turn

    assert listed.secrets == from_file.secrets == (SECRET_B, SECRET_A)
    assert SECRET_A not in repr(listed) and SECRET_B not in repr(listed)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TURN_SECRETS", "short"),
        ("TURN_SECRETS", f"{SECRET_A},{SECRET_A}"),
        ("TURN_SECRETS", "a secret with spaces inside it"),
        ("TURN_URIS", "http://turn.example.org"),
        ("TURN_URIS", "turn:turn.example.org:99999"),
        ("TURN_URIS", "turn:turn.example.org:³"),
        ("TURN_URIS", "turn:2001:db8::1:3478"),
        ("TURN_URIS", "turn:turn.example.org?transport=sctp"),
        ("TURN_URIS", "stun:turn.example.org:3478"),
        ("TURN_TTL", "10"),
        ("TURN_TTL", "100000"),
        ("TURN_REFRESH_BEFORE", "3000"),
        ("TURN_MAX_PER_MINUTE", "0"),
    ],
)
def test_a_bad_turn_setting_names_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(_env(tmp_path, **{variable: value}))

    assert variable in str(refused.value)


def test_turn_uris_accept_rfc_7065_forms(tmp_path: Path) -> None:
    uris = "turn:[2001:db8::1]:3478?transport=udp,turns:turn.example.org,stun:stun.example.org"

    assert load_settings(_env(tmp_path, TURN_URIS=uris)).turn.uris == tuple(uris.split(","))


# --- coturn --------------------------------------------------------------------------


class Collector(asyncio.DatagramProtocol):
    """The application side of a relay: what arrives through it, and when it closes."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.closed = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Echo(asyncio.DatagramProtocol):
    """A UDP peer on loopback that answers every datagram with the same bytes."""

    def __init__(self) -> None:
        self.sources: list[tuple[str, int]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sources.append(addr)
        self.transport.sendto(data, addr)


@contextlib.asynccontextmanager
async def relay(
    server: Coturn, username: str, password: str, transport: str
) -> AsyncIterator[tuple[TurnTransport, Collector]]:
    """A TURN allocation on ``server``, deleted (and its socket closed) on exit."""
    turn, collector = await asyncio.wait_for(
        create_turn_endpoint(
            Collector, ("127.0.0.1", server.port), username, password, transport=transport
        ),
        STEP_TIMEOUT,
    )
    try:
        yield turn, collector
    finally:
        turn.close()
        await asyncio.wait_for(collector.closed, STEP_TIMEOUT)


@contextlib.asynccontextmanager
async def echo_peer() -> AsyncIterator[tuple[tuple[str, int], Echo]]:
    loop = asyncio.get_running_loop()
    transport, echo = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    try:
        yield transport.get_extra_info("sockname"), echo
    finally:
        transport.close()


async def round_trip(turn: TurnTransport, collector: Collector, peer: tuple[str, int]) -> bool:
    """Send through the relay to ``peer`` and back: did the same bytes return from it?"""
    payload = os.urandom(16)
    turn.sendto(payload, peer)
    data, source = await asyncio.wait_for(collector.received.get(), STEP_TIMEOUT)
    return (data, source) == (payload, peer)


async def allocates(server: Coturn, creds: TurnCredentials, transport: str) -> bool:
    """Does coturn grant a relay for these credentials? False on 401 Unauthorized."""
    try:
        async with relay(server, creds.username, creds.password, transport) as (turn, _):
            assert turn.get_extra_info("sockname") is not None
    except stun.TransactionFailed as failed:
        assert failed.response.error_code == 401, str(failed)
        return False
    return True


def _at(service: TurnService, now: float) -> TurnService:
    """The same service with its clock moved to ``now``."""
    return TurnService(service.settings, limiter=InMemoryRateLimiter(), clock=lambda: now)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_minted_credentials_allocate_a_relay_that_carries_data(
    coturn: Coturn, transport: str
) -> None:
    service = _service((SECRET_A,), now=time.time())
    await coturn.start(coturn_auth_config(service.settings.secrets, REALM))
    creds = service.for_user(uuid4())

    async with (
        echo_peer() as (peer, echo),
        relay(coturn, creds.username, creds.password, transport) as (turn, collector),
    ):
        relayed = turn.get_extra_info("sockname")
        assert await round_trip(turn, collector, peer)

    assert relayed[0] == "127.0.0.1"
    assert echo.sources == [relayed], "the peer saw the relayed address, not the client"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_coturn_refuses_expired_credentials(coturn: Coturn, transport: str) -> None:
    service = _service((SECRET_A,), ttl=600)
    await coturn.start(coturn_auth_config(service.settings.secrets, REALM))
    expired = _at(service, time.time() - 610).for_user(uuid4())

    assert expired.expires_at < time.time()
    assert not await allocates(coturn, expired, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_coturn_refuses_forged_credentials(coturn: Coturn, transport: str) -> None:
    service = _service((SECRET_A,), now=time.time())
    await coturn.start(coturn_auth_config(service.settings.secrets, REALM))
    real = service.for_user(uuid4())
    # A later expiry without the secret to sign it, and a made-up password.
    ref = real.username.partition(":")[2]
    extended = replace(real, username=f"{real.expires_at + 86400}:{ref}")
    made_up = replace(real, password=base64.b64encode(os.urandom(20)).decode())

    assert not await allocates(coturn, extended, transport)
    assert not await allocates(coturn, made_up, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_coturn_refuses_credentials_of_another_secret(coturn: Coturn, transport: str) -> None:
    await coturn.start(coturn_auth_config([SECRET_A], REALM))
    other = _service((SECRET_B,), now=time.time()).for_user(uuid4())

    assert not await allocates(coturn, other, transport)


async def test_rotation_keeps_the_previous_secret_valid_for_the_overlap_only(
    coturn: Coturn, tmp_path: Path
) -> None:
    """The procedure of docs/turn.md, with the settings and coturn config as operators set them."""
    env = _env(tmp_path, TURN_SECRETS=SECRET_A)
    user = uuid4()

    def settings_with(secrets: str) -> TurnService:
        turn = load_settings({**env, "TURN_SECRETS": secrets}).turn
        return TurnService(turn, limiter=InMemoryRateLimiter())

    before = settings_with(SECRET_A)
    await coturn.start(coturn_auth_config(before.settings.secrets, REALM))
    previous = before.for_user(user)
    assert await allocates(coturn, previous, "udp")

    # 1. coturn learns the new secret first, 2. then the app signs with it.
    await coturn.restart(coturn_auth_config([SECRET_B, SECRET_A], REALM))
    during = settings_with(f"{SECRET_B},{SECRET_A}")
    current = during.for_user(user)
    assert current.password != previous.password
    assert await allocates(coturn, current, "udp")
    assert await allocates(coturn, previous, "udp"), "previous secret refused in the overlap"
    assert await allocates(coturn, previous, "tcp")

    # 3. After the overlap (TURN_TTL) the previous secret leaves both.
    after = settings_with(SECRET_B)
    await coturn.restart(coturn_auth_config(after.settings.secrets, REALM))
    assert await allocates(coturn, current, "udp")
    assert await allocates(coturn, after.for_user(user), "udp")
    assert not await allocates(coturn, previous, "udp")
    assert not await allocates(coturn, previous, "tcp")


async def test_rotation_through_coturns_secret_table_needs_no_restart(coturn: Coturn) -> None:
    """coturn reads ``turn_secret`` rows at each authentication: rotation without a restart."""
    await coturn.start(f"use-auth-secret\nrealm={REALM}")
    old = _service((SECRET_A,), now=time.time()).for_user(uuid4())
    new = _service((SECRET_B,), now=time.time()).for_user(uuid4())

    def secret_table(sql: str, value: str) -> None:
        with contextlib.closing(sqlite3.connect(coturn.userdb, timeout=5)) as db, db:
            db.execute(sql, (REALM, value))

    insert = "INSERT INTO turn_secret (realm, value) VALUES (?, ?)"
    delete = "DELETE FROM turn_secret WHERE realm = ? AND value = ?"
    secret_table(insert, SECRET_A)
    assert await allocates(coturn, old, "udp")
    assert not await allocates(coturn, new, "udp")

    secret_table(insert, SECRET_B)
    assert await allocates(coturn, new, "udp")
    assert await allocates(coturn, old, "udp")

    secret_table(delete, SECRET_A)
    assert await allocates(coturn, new, "udp")
    assert not await allocates(coturn, old, "udp")
    assert coturn.process is not None and coturn.process.returncode is None


async def test_expiry_stops_new_allocations_not_a_running_one(coturn: Coturn) -> None:
    """Why a long call needs fresh credentials: after expiry an ICE restart cannot relay."""
    await coturn.start(coturn_auth_config([SECRET_A], REALM))
    creds = mint(SECRET_A, "ref", now=time.time(), ttl=2, uris=[])

    async with (
        echo_peer() as (peer, _),
        relay(coturn, creds.username, creds.password, "udp") as (turn, collector),
    ):
        await asyncio.sleep(creds.expires_at + 1.2 - time.time())
        assert await round_trip(turn, collector, peer), "the running allocation was cut"
        assert not await allocates(coturn, creds, "udp")


# --- the route -----------------------------------------------------------------------


async def test_signed_in_user_gets_credentials_that_coturn_accepts(
    client: Client, tenant: Tenant, coturn: Coturn
) -> None:
    settings: Settings = client.app[SETTINGS]
    await coturn.start(coturn_auth_config(settings.turn.secrets, REALM))
    patient = tenant[Role.PATIENT]

    resp = await client.get("/api/v1/turn/credentials", headers=patient.headers)

    assert resp.status == 200, await resp.text()
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body["uris"] == list(settings.turn.uris)
    assert body["ice_servers"] == [
        {"urls": body["uris"], "username": body["username"], "credential": body["password"]}
    ]
    assert body["refresh_at"] == body["expires_at"] - settings.turn.refresh_before
    assert body["expires_at"] - time.time() == pytest.approx(settings.turn.ttl, abs=5)
    assert str(patient.user_id) not in body["username"]
    creds = TurnCredentials(body["username"], body["password"], body["ttl"], body["expires_at"], ())
    for transport in TRANSPORTS:
        assert await allocates(coturn, creds, transport), transport


async def test_turn_credentials_are_rate_limited_per_user(
    aiohttp_client: Any, database_url: str, tmp_path: Path, tenant: Tenant
) -> None:
    strict = await aiohttp_client(
        create_app(load_settings(settings_env(database_url, tmp_path, TURN_MAX_PER_MINUTE="2")))
    )
    nurse, doctor = tenant[Role.NURSE], tenant[Role.DOCTOR]
    for _ in range(2):
        resp = await strict.get("/api/v1/turn/credentials", headers=nurse.headers)
        assert resp.status == 200, await resp.text()

    resp = await strict.get("/api/v1/turn/credentials", headers=nurse.headers)

    assert resp.status == 429
    assert (await resp.json(content_type=None))["code"] == "rate_limited"
    assert int(resp.headers["Retry-After"]) >= 1
    resp = await strict.get("/api/v1/turn/credentials", headers=doctor.headers)
    assert resp.status == 200


def test_user_reference_in_the_username_is_the_services(tmp_path: Path) -> None:
    settings = load_settings(_env(tmp_path)).turn
    service = TurnService(settings, limiter=InMemoryRateLimiter())
    user = UUID(int=42)

    creds = service.for_user(user)

    assert creds.username.partition(":")[2] == user_ref(settings.user_ref_key, user)
