"""Attacks on the server's own WebRTC peer, the pre-call network test (issue 11).

- An offer can name any address as an ICE candidate; the server's peer sent STUN
  binding requests to each, so a signed-in user could make the server probe its
  own loopback services, the cloud metadata address or its private network. A
  forged source address on a binding request did the same through
  peer-reflexive candidates. Only public unicast addresses and the configured
  networks (``RTC_ALLOWED_PEER_NETWORKS``) may get checks now, and an offer left
  with no usable candidate is refused with 422 ``peer_address_refused``.
- The answer named every interface address of the host, also behind a NAT with
  a public address; with ``RTC_PUBLIC_IP`` it names only that.
- A logged-out or disabled user's test kept its peer until the time limit; it
  now closes when the session ends.

Real aiortc peers, a real UDP socket on loopback that counts what it receives,
real STUN requests, the real app on a real database, and (``slow``) a real
server process. Every wait is bounded; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aioice import stun
from aiortc import sdp as aiortc_sdp

from teleconsult.accounts import store as accounts
from teleconsult.client.probe import NetworkProbe
from teleconsult.core.identity import Role
from teleconsult.core.settings import Settings, load_settings
from teleconsult.rtc.network_test import NetworkTestRunner
from teleconsult.rtc.routes import NETWORK_TESTS
from tests.conftest import settings_env
from tests.dbutil import REDIS_URL
from tests.rtckit import host_addresses, host_networks, video_appointment
from tests.servers import ServerProcess
from tests.world import (
    PASSWORD,
    SESSION_ENDINGS,
    Account,
    Tenant,
    assert_problem,
    login,
    make_user,
)

Client = TestClient[Any, Any]
LIMIT = 60  # seconds: the bound of every test that runs peers
# Higher than any real candidate's, so the server's first check goes to it.
TOP_PRIORITY = 2**31 - 1
INTERNAL = (
    "127.0.0.1",
    "169.254.169.254",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",
    "0.0.0.0",
    "224.0.0.251",
    "255.255.255.255",
    "::1",
    "fe80::1",
    "fd12:3456::1",
    "::ffff:127.0.0.1",
)


# The production default, whatever the suite's own settings allow ("" is unset).
DEFAULT_ENV = {"RTC_ALLOWED_PEER_NETWORKS": "", "RTC_PUBLIC_IP": ""}


@pytest.fixture
def rtc_env() -> dict[str, str]:
    """The app's RTC settings; tests parametrize it."""
    return {}


@pytest.fixture
def settings(database_url: str, tmp_path: Path, rtc_env: dict[str, str]) -> Settings:
    return load_settings(settings_env(database_url, tmp_path, **(DEFAULT_ENV | rtc_env)))


def runner(client: Client) -> NetworkTestRunner:
    peers: NetworkTestRunner = client.app[NETWORK_TESTS].runner
    return peers


def route_of(appointment_id: UUID) -> str:
    return f"/api/v1/appointments/{appointment_id}/network-tests"


class Counter(asyncio.DatagramProtocol):
    """A UDP socket's view: every datagram it got, STUN or not."""

    def __init__(self) -> None:
        self.datagrams: list[tuple[bytes, tuple[Any, ...]]] = []
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.datagrams.append((data, addr))
        self.arrived.set()

    def stun(self, method: stun.Class) -> list[stun.Message]:
        found = []
        for data, _ in self.datagrams:
            with contextlib.suppress(ValueError):
                message = stun.parse_message(data)
                if message.message_class == method:
                    found.append(message)
        return found

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self.arrived.clear()
            await self.arrived.wait()


@contextlib.asynccontextmanager
async def udp_socket(host: str) -> AsyncIterator[tuple[asyncio.DatagramTransport, Counter]]:
    loop = asyncio.get_running_loop()
    transport, counter = await loop.create_datagram_endpoint(Counter, local_addr=(host, 0))
    try:
        yield transport, counter
    finally:
        transport.close()


async def drain(listener: tuple[asyncio.DatagramTransport, Counter]) -> None:
    """Send the listener a marker and wait for it: whatever reached its socket before
    (a check the server sent earlier) has been read by then."""
    transport, counter = listener
    marker = b"marker-" + secrets.token_bytes(8)
    async with udp_socket("127.0.0.1") as (sender, _):
        sender.sendto(marker, transport.get_extra_info("sockname")[:2])
        await counter.wait_for(lambda: any(data == marker for data, _ in counter.datagrams))


def with_candidates(offer: str, *candidates: str, keep: bool) -> str:
    """The offer with these candidate lines added (and its own kept, or not)."""
    lines: list[str] = []
    for line in offer.splitlines():
        if line.startswith("a=candidate:") and not keep:
            continue
        if line.startswith("a=ice-ufrag:"):
            lines.extend(f"a=candidate:{c}" for c in candidates)
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def host_candidate(index: int, address: str, port: int, priority: int = TOP_PRIORITY) -> str:
    return f"x{index} 1 udp {priority} {address} {port} typ host"


async def post_offer(client: Client, who: Account, appointment_id: UUID, sdp: str) -> Any:
    body = {"sdp": sdp, "type": "offer"}
    return await client.post(route_of(appointment_id), json=body, headers=who.headers)


def answer_candidates(answer: str) -> list[Any]:
    parsed = aiortc_sdp.SessionDescription.parse(answer)
    return [c for media in parsed.media for c in media.ice_candidates]


# --- ICE checks to internal addresses -------------------------------------------------


async def test_an_offer_naming_only_internal_addresses_is_refused_and_opens_no_peer(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient = tenant[Role.PATIENT]
    appointment_id = await video_appointment(app_pool, tenant)
    async with asyncio.timeout(LIMIT), udp_socket("127.0.0.1") as listener:
        port = listener[0].get_extra_info("sockname")[1]
        async with NetworkProbe(media=False) as probe:
            offer = await probe.offer()
        candidates = [host_candidate(i, a, port) for i, a in enumerate(INTERNAL)]
        resp = await post_offer(
            client, patient, appointment_id, with_candidates(offer, *candidates, keep=False)
        )
        body = await assert_problem(resp, 422, "peer_address_refused")
        await drain(listener)
    assert "127.0.0.1 (loopback)" in body["detail"]
    assert "169.254.169.254 (link-local)" in body["detail"]
    assert runner(client).running == 0
    assert [d for d, _ in listener[1].datagrams if not d.startswith(b"marker-")] == []
    count = "SELECT count(*) FROM network_tests WHERE appointment_id = $1"
    assert await app_pool.fetchval(count, appointment_id) == 0


@pytest.mark.parametrize(
    ("rtc_env", "loopback_allowed"),
    [
        ({"RTC_ALLOWED_PEER_NETWORKS": host_networks()}, False),
        ({"RTC_ALLOWED_PEER_NETWORKS": host_networks("127.0.0.0/8")}, True),
    ],
    ids=["default", "loopback-allowed"],
)
async def test_a_loopback_candidate_gets_ice_checks_only_when_loopback_is_allowed(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, loopback_allowed: bool
) -> None:
    """The probe's own candidates make the test work; one more, on loopback and of the
    highest priority, is where the server's first check would go."""
    patient = tenant[Role.PATIENT]
    appointment_id = await video_appointment(app_pool, tenant)
    async with (
        asyncio.timeout(LIMIT),
        udp_socket("127.0.0.1") as listener,
        NetworkProbe(media=False) as probe,
    ):
        port = listener[0].get_extra_info("sockname")[1]
        offer = with_candidates(
            await probe.offer(), host_candidate(0, "127.0.0.1", port), keep=True
        )
        resp = await post_offer(client, patient, appointment_id, offer)
        assert resp.status == 201, await resp.text()
        await probe.accept((await resp.json())["sdp"])
        await probe.wait_open()  # the test itself works either way
        requests = listener[1].stun(stun.Class.REQUEST)
        if loopback_allowed:
            await listener[1].wait_for(lambda: bool(listener[1].stun(stun.Class.REQUEST)))
            requests = listener[1].stun(stun.Class.REQUEST)
            assert requests[0].message_method == stun.Method.BINDING
        else:
            await drain(listener)
            requests = listener[1].stun(stun.Class.REQUEST)
            assert requests == []
    assert bool(requests) is loopback_allowed


def binding_request(server_ufrag: str, client_ufrag: str, server_pwd: str) -> bytes:
    """A connectivity check as a controlling client sends it, correctly signed."""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = f"{server_ufrag}:{client_ufrag}"
    request.attributes["PRIORITY"] = 1853824767
    request.attributes["ICE-CONTROLLING"] = int.from_bytes(os.urandom(8), "big")
    request.add_message_integrity(server_pwd.encode())
    request.add_fingerprint()
    return bytes(request)


@pytest.mark.parametrize(
    ("rtc_env", "loopback_allowed"),
    [
        ({"RTC_ALLOWED_PEER_NETWORKS": host_networks()}, False),
        ({"RTC_ALLOWED_PEER_NETWORKS": host_networks("127.0.0.0/8")}, True),
    ],
    ids=["default", "loopback-allowed"],
)
async def test_a_check_from_a_refused_address_gets_no_answer(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, loopback_allowed: bool
) -> None:
    """A valid, signed binding request whose source is internal (UDP sources can be
    forged) would be answered, and the source learnt as a peer-reflexive candidate
    and checked. From loopback it gets nothing; from an allowed address, an answer."""
    patient = tenant[Role.PATIENT]
    appointment_id = await video_appointment(app_pool, tenant)
    ipv4 = next(a for a in host_addresses() if ":" not in a)
    async with asyncio.timeout(LIMIT), NetworkProbe(media=False) as probe:
        offer = await probe.offer()
        resp = await post_offer(client, patient, appointment_id, offer)
        assert resp.status == 201, await resp.text()
        answer = aiortc_sdp.SessionDescription.parse((await resp.json())["sdp"])
        media = answer.media[0]
        server = next(c for c in media.ice_candidates if c.ip == ipv4)
        ours = aiortc_sdp.SessionDescription.parse(offer).media[0].ice
        assert media.ice is not None and ours is not None
        assert media.ice.usernameFragment and media.ice.password and ours.usernameFragment
        check = binding_request(
            media.ice.usernameFragment, ours.usernameFragment, media.ice.password
        )
        async with udp_socket("127.0.0.1") as forged, udp_socket(ipv4) as allowed:
            forged[0].sendto(check, (server.ip, server.port))
            allowed[0].sendto(check, (server.ip, server.port))
            # Same server socket, in order: once the second is answered, the first was read.
            await allowed[1].wait_for(lambda: bool(allowed[1].stun(stun.Class.RESPONSE)))
            if loopback_allowed:
                await forged[1].wait_for(lambda: bool(forged[1].stun(stun.Class.RESPONSE)))
            answered = forged[1].stun(stun.Class.RESPONSE)
            checked = forged[1].stun(stun.Class.REQUEST)
    assert bool(answered) is loopback_allowed
    if not loopback_allowed:
        assert checked == []  # nor learnt as a peer-reflexive candidate and checked


# --- addresses in the answer -----------------------------------------------------------


@pytest.mark.parametrize(
    "rtc_env",
    [{"RTC_ALLOWED_PEER_NETWORKS": host_networks(), "RTC_PUBLIC_IP": "203.0.113.7,2001:db8::7"}],
)
async def test_with_a_public_address_the_answer_names_no_interface_of_the_host(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient = tenant[Role.PATIENT]
    appointment_id = await video_appointment(app_pool, tenant)
    async with asyncio.timeout(LIMIT), NetworkProbe() as probe:
        resp = await post_offer(client, patient, appointment_id, await probe.offer())
        assert resp.status == 201, await resp.text()
        answer: str = (await resp.json())["sdp"]
    candidates = answer_candidates(answer)
    assert candidates
    assert {c.ip for c in candidates if c.type != "relay"} <= {"203.0.113.7", "2001:db8::7"}
    assert all(c.relatedAddress is None for c in candidates)
    connections = [line for line in answer.splitlines() if line.startswith("c=")]
    assert connections
    assert all(line.split()[-1] in ("203.0.113.7", "2001:db8::7") for line in connections)
    for address in host_addresses():
        assert address not in answer


async def test_with_the_hosts_own_address_as_the_public_one_the_test_still_connects(
    aiohttp_client: Any, database_url: str, tmp_path: Path, pool: asyncpg.Pool
) -> None:
    """Only the public address is announced (its IP version's other interfaces go),
    and the client reaches the peer there."""
    from teleconsult.server.app import create_app

    ipv4 = next(a for a in host_addresses() if ":" not in a)
    env = DEFAULT_ENV | {"RTC_ALLOWED_PEER_NETWORKS": host_networks(), "RTC_PUBLIC_IP": ipv4}
    app_client: Client = await aiohttp_client(
        create_app(load_settings(settings_env(database_url, tmp_path, **env)))
    )
    tenant = await _tenant(pool, app_client)
    appointment_id = await video_appointment(pool, tenant)
    async with asyncio.timeout(LIMIT), NetworkProbe(media=False) as probe:
        resp = await post_offer(
            app_client, tenant[Role.PATIENT], appointment_id, await probe.offer()
        )
        assert resp.status == 201, await resp.text()
        answer: str = (await resp.json())["sdp"]
        await probe.accept(answer)
        await probe.wait_open()
    assert {c.ip for c in answer_candidates(answer)} == {ipv4}


async def _tenant(pool: asyncpg.Pool, client: Client) -> Tenant:
    clinic = await accounts.insert_clinic(
        pool, name=f"RTC {secrets.token_hex(3)}", timezone="Africa/Nairobi"
    )
    tenant = Tenant(clinic_id=clinic.id)
    for role in (Role.PATIENT, Role.DOCTOR, Role.ADMIN):
        tenant.users[role] = await login(client, await make_user(pool, clinic.id, role))
    return tenant


# --- sessions that end -----------------------------------------------------------------


@pytest.mark.parametrize("rtc_env", [{"RTC_ALLOWED_PEER_NETWORKS": host_networks()}])
@pytest.mark.parametrize("ending", sorted(SESSION_ENDINGS))
async def test_a_session_that_ends_closes_its_network_test_at_once(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, ending: str
) -> None:
    patient = tenant[Role.PATIENT]
    appointment_id = await video_appointment(app_pool, tenant)
    async with asyncio.timeout(LIMIT), NetworkProbe(media=False) as probe:
        resp = await post_offer(client, patient, appointment_id, await probe.offer())
        assert resp.status == 201, await resp.text()
        started = await resp.json()
        await probe.accept(started["sdp"])
        await probe.wait_open()
        assert runner(client).running == 1

        await SESSION_ENDINGS[ending](client, tenant, patient)
        # The local revocation handlers run before the logout is answered.
        assert runner(client).running == 0
        await probe.wait_ended()
        assert probe.connection_state in ("closed", "failed")
        status = await _final_status(app_pool, UUID(started["id"]))
    assert status == "aborted"


@pytest.mark.parametrize("rtc_env", [{"RTC_ALLOWED_PEER_NETWORKS": host_networks()}])
async def test_logging_out_one_session_keeps_the_other_sessions_test(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient = tenant[Role.PATIENT]
    laptop = await login(client, Account(**{**patient.__dict__}))  # a second session
    first = await video_appointment(app_pool, tenant)
    second = await video_appointment(app_pool, tenant, days=2)
    async with (
        asyncio.timeout(LIMIT),
        NetworkProbe(media=False) as phone_probe,
        NetworkProbe(media=False) as laptop_probe,
    ):
        ids = {}
        for who, appointment_id, probe in (
            (patient, first, phone_probe),
            (laptop, second, laptop_probe),
        ):
            resp = await post_offer(client, who, appointment_id, await probe.offer())
            assert resp.status == 201, await resp.text()
            started = await resp.json()
            ids[probe] = UUID(started["id"])
            await probe.accept(started["sdp"])
            await probe.wait_open()
        assert runner(client).running == 2

        resp = await client.post("/api/v1/auth/logout", headers=patient.headers)
        assert resp.status == 204, await resp.text()
        assert runner(client).running == 1
        assert runner(client).is_running(ids[laptop_probe])
        await phone_probe.wait_ended()
        assert laptop_probe.connection_state == "connected"


async def _final_status(pool: asyncpg.Pool, test_id: UUID) -> str:
    """The stored outcome, once the test's lifetime has written it (bounded by the caller)."""
    while True:
        status: str = await pool.fetchval("SELECT status FROM network_tests WHERE id = $1", test_id)
        if status != "running":
            return status
        await asyncio.sleep(0.05)


# --- against a real server process -------------------------------------------------------


@dataclass
class Remote:
    """A signed-in patient of a new clinic, on real server processes (one database;
    with several, one Redis)."""

    servers: list[ServerProcess]
    pool: asyncpg.Pool
    http: aiohttp.ClientSession
    patient: Account
    appointment_id: UUID

    async def offer(self, sdp: str) -> aiohttp.ClientResponse:
        """Start a test on the last process."""
        return await self.http.post(
            f"{self.servers[-1].base_url}{route_of(self.appointment_id)}",
            json={"sdp": sdp, "type": "offer"},
            headers=self.patient.headers,
        )

    async def log_out(self) -> None:
        """On the first process."""
        resp = await self.http.post(
            f"{self.servers[0].base_url}/api/v1/auth/logout", headers=self.patient.headers
        )
        assert resp.status == 204, await resp.text()


@contextlib.asynccontextmanager
async def remote(
    fresh_db: str, tmp_path: Path, *, processes: int = 1, **env: str
) -> AsyncIterator[Remote]:
    if processes > 1:
        env = {"REDIS_URL": REDIS_URL} | env
    servers = [
        ServerProcess(fresh_db, tmp_path, name=f"server{n}", **(DEFAULT_ENV | env))
        for n in range(processes)
    ]
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2)
    try:
        clinic = await accounts.insert_clinic(pool, name="RTC clinic", timezone="UTC")
        tenant = Tenant(clinic_id=clinic.id)
        for role in (Role.PATIENT, Role.DOCTOR):
            tenant.users[role] = await make_user(pool, clinic.id, role)
        appointment_id = await video_appointment(pool, tenant)
        try:
            await asyncio.gather(*(server.start() for server in servers))
            async with aiohttp.ClientSession() as http:
                patient = tenant[Role.PATIENT]
                resp = await http.post(
                    f"{servers[0].base_url}/api/v1/auth/login",
                    json={"email": patient.email, "password": PASSWORD},
                )
                assert resp.status == 200, await resp.text()
                patient.access_token = (await resp.json())["access_token"]
                yield Remote(servers, pool, http, patient, appointment_id)
        finally:
            await asyncio.gather(*(server.stop() for server in servers))
    finally:
        await pool.close()


@pytest.mark.slow
async def test_a_server_process_refuses_an_offer_of_internal_addresses(
    fresh_db: str, tmp_path: Path
) -> None:
    async with (
        asyncio.timeout(LIMIT),
        remote(fresh_db, tmp_path) as site,
        udp_socket("127.0.0.1") as listener,
    ):
        port = listener[0].get_extra_info("sockname")[1]
        async with NetworkProbe(media=False) as probe:
            offer = await probe.offer()
        candidates = [host_candidate(i, a, port) for i, a in enumerate(INTERNAL)]
        resp = await site.offer(with_candidates(offer, *candidates, keep=False))
        await assert_problem(resp, 422, "peer_address_refused")
        await drain(listener)
    assert [d for d, _ in listener[1].datagrams if not d.startswith(b"marker-")] == []


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2], ids=["same-process", "other-process"])
async def test_a_logout_closes_the_users_peer_on_every_server_process(
    fresh_db: str, tmp_path: Path, processes: int
) -> None:
    """With two processes, the test runs on the second and the logout reaches the
    first: the revocation crosses Redis."""
    async with (
        asyncio.timeout(LIMIT),
        # No time limit within LIMIT: only the logout can end the test in time.
        remote(
            fresh_db,
            tmp_path,
            processes=processes,
            RTC_ALLOWED_PEER_NETWORKS=host_networks(),
            RTC_MAX_TEST_SECONDS="600",
        ) as site,
        NetworkProbe(media=False) as probe,
    ):
        resp = await site.offer(await probe.offer())
        assert resp.status == 201, await resp.text()
        started = await resp.json()
        await probe.accept(started["sdp"])
        await probe.wait_open()
        await site.log_out()
        await probe.wait_ended()
        assert probe.connection_state in ("closed", "failed")
        status = await _final_status(site.pool, UUID(started["id"]))
    assert status == "aborted"
