"""Pre-call network tests: the server's aiortc peer against a real aiortc probe on loopback.

The pure parts (offer checks, the figures' arithmetic) are tested without I/O; the
rest runs the real app on a real database with real peers, and every test is
bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import math
import re
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from teleconsult.client.probe import NetworkProbe, Signaller, run_probe
from teleconsult.core.errors import ClientError, ConfigError
from teleconsult.core.identity import Role
from teleconsult.core.settings import Settings, load_settings
from teleconsult.rtc.addresses import PeerAddressPolicy
from teleconsult.rtc.figures import percentile, ping_figures, rfc3550_jitter
from teleconsult.rtc.network_test import NetworkTestRunner
from teleconsult.rtc.routes import NETWORK_TESTS
from teleconsult.rtc.sdp import SdpError, announce, check_offer, filter_candidates
from tests.auditkit import chained
from tests.conftest import settings_env
from tests.rtckit import host_networks, video_appointment
from tests.world import Account, Tenant, assert_problem

Client = TestClient[Any, Any]
LIMIT = 60  # seconds: the bound of every test that runs peers


@pytest.fixture
def rtc_env() -> dict[str, str]:
    """Extra settings for the app; tests parametrize it to set the limits."""
    return {}


@pytest.fixture
def settings(database_url: str, tmp_path: Path, rtc_env: dict[str, str]) -> Settings:
    # The peers talk on this machine's (private) interface addresses: allow them.
    env = {"RTC_ALLOWED_PEER_NETWORKS": host_networks()} | rtc_env
    return load_settings(settings_env(database_url, tmp_path, **env))


def runner(client: Client) -> NetworkTestRunner:
    peers: NetworkTestRunner = client.app[NETWORK_TESTS].runner
    return peers


def route_of(appointment_id: UUID) -> str:
    return f"/api/v1/appointments/{appointment_id}/network-tests"


def signaller(
    client: Client, who: Account, appointment_id: UUID, started: list[dict[str, Any]]
) -> Signaller:
    """Posts the offer as ``who``; keeps each 201 answer's body in ``started``."""

    async def signal(offer: str) -> str:
        body = {"sdp": offer, "type": "offer"}
        resp = await client.post(route_of(appointment_id), json=body, headers=who.headers)
        assert resp.status == 201, await resp.text()
        answer: dict[str, Any] = await resp.json()
        assert answer["type"] == "answer"
        started.append(answer)
        return str(answer["sdp"])

    return signal


async def offer_sdp() -> str:
    """A real aiortc offer (a data channel only) whose peer is gone at once."""
    async with NetworkProbe(media=False) as probe:
        return await probe.offer()


async def start(client: Client, who: Account, appointment_id: UUID, sdp: str) -> Any:
    body = {"sdp": sdp, "type": "offer"}
    return await client.post(route_of(appointment_id), json=body, headers=who.headers)


EMPTY_REPORT: dict[str, Any] = {
    "duration_s": 1.0,
    "pings_sent": 0,
    "pings_echoed": 0,
    "loss": 0.0,
    "rtt_ms_min": None,
    "rtt_ms_p50": None,
    "rtt_ms_p95": None,
    "rtt_ms_max": None,
    "jitter_ms": None,
    "bitrate_bps": 0.0,
    "media_packets_received": 0,
    "media_packets_lost": 0,
    "media_jitter_ms": None,
    "audio_frames": 0,
    "video_frames": 0,
}


async def latest(client: Client, who: Account, appointment_id: UUID) -> list[dict[str, Any]]:
    resp = await client.get(route_of(appointment_id), headers=who.headers)
    assert resp.status == 200, await resp.text()
    items: list[dict[str, Any]] = (await resp.json())["items"]
    return items


# --- pure ------------------------------------------------------------------------------


@hypothesis_settings(max_examples=300, database=None, deadline=None)
@given(st.text(max_size=400) | st.text(max_size=400).map(lambda t: "v=0\r\n" + t))
def test_any_text_is_an_offer_or_an_sdp_error(text: str) -> None:
    try:
        check_offer(text)
    except SdpError as exc:
        assert exc.code == "invalid_sdp"


async def test_a_real_offer_passes_and_its_broken_variants_do_not() -> None:
    async with NetworkProbe() as probe:
        sdp = await probe.offer()
    assert check_offer(sdp).kinds == ("audio", "video", "application")
    lines = sdp.splitlines()
    broken = {
        "no fingerprint": [x for x in lines if not x.startswith("a=fingerprint")],
        "no ice password": [x for x in lines if not x.startswith("a=ice-pwd")],
        "send only": [x.replace("a=sendrecv", "a=sendonly") for x in lines],
        "no data channel": lines[: next(i for i, x in enumerate(lines) if "application" in x)],
    }
    for name, variant in broken.items():
        with pytest.raises(SdpError):
            check_offer("\r\n".join(variant) + "\r\n")
            pytest.fail(name)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0], 0.0) == 1.0
    assert percentile([1.0, 2.0, 3.0], 1.0) == 3.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_jitter_smooths_differences_as_rfc3550_does() -> None:
    assert rfc3550_jitter([0.01] * 50) == 0.0
    # One step of 16 ms from zero jitter moves it by 1/16 of that.
    assert math.isclose(rfc3550_jitter([0.0, 0.016]), 0.001)


def test_ping_figures_count_unanswered_pings_as_lost() -> None:
    figures = ping_figures(4, [0.010, 0.020, 0.030])
    assert (figures.sent, figures.echoed, figures.loss) == (4, 3, 0.25)
    assert figures.rtt_ms_min == 10.0 and figures.rtt_ms_max == 30.0
    assert figures.rtt_ms_p50 == 20.0
    none = ping_figures(5, [])
    assert none.loss == 1.0 and none.rtt_ms_p50 is None


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("100.64.0.1", "shared (carrier-grade NAT)"),
        ("fd12:3456::1", "unique-local"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("0b7c2a7e-2d7b-4a9e-9f1e-1b2c3d4e5f60.local", "mDNS name"),
        ("example.org", "not an IP address"),
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_by_default_the_peer_contacts_only_public_unicast_addresses(
    host: str, why: str | None
) -> None:
    assert PeerAddressPolicy().refusal(host) == why


def test_allowed_networks_open_local_addresses_but_never_multicast_or_unspecified() -> None:
    policy = PeerAddressPolicy.of([ip_network("0.0.0.0/0"), ip_network("::/0")])
    for host in ("127.0.0.1", "10.1.2.3", "fe80::1", "::ffff:192.168.1.1", "8.8.8.8"):
        assert policy.refusal(host) is None, host
    for host in ("0.0.0.0", "224.0.0.1", "255.255.255.255", "ff02::1", "x.local"):
        assert policy.refusal(host) is not None, host
    loopback = PeerAddressPolicy.of([ip_network("127.0.0.0/8")])
    assert loopback.refusal("127.0.0.1") is None
    assert loopback.refusal("::ffff:127.0.0.1") is None
    assert loopback.refusal("10.0.0.1") == "private"


async def test_filtering_keeps_allowed_candidates_and_drops_the_rest() -> None:
    async with NetworkProbe() as probe:
        real = await probe.offer()
    extra = [
        "a=candidate:a 1 udp 2130706431 127.0.0.1 5432 typ host",
        "a=candidate:b 1 udp 2130706431 8.8.8.8 3478 typ srflx raddr 10.0.0.2 rport 5000",
        "a=candidate:c 1 udp 2130706431 3a1f.local 5000 typ host",
        "a=candidate:broken",
    ]
    lines = []
    for line in real.splitlines():
        if not line.startswith("a=candidate:"):
            lines.append(line)
        if line.startswith("a=mid:0"):
            lines.extend(extra)
    filtered = filter_candidates("\r\n".join(lines) + "\r\n", PeerAddressPolicy().refusal)
    assert filtered.kept == 1  # only 8.8.8.8: the related address is never contacted
    assert filtered.refused == ("127.0.0.1 (loopback)", "? (malformed)")
    assert filtered.mdns == 1 and not filtered.unusable
    sections = filtered.sdp.split("m=")
    first = sections[1]
    assert "8.8.8.8" in first and "127.0.0.1" not in first and ".local" not in first
    # The section that lost an mDNS candidate waits for peer-reflexive ones.
    assert "a=end-of-candidates" not in first
    assert all("a=candidate:" not in section for section in sections[2:])
    only_internal = filter_candidates(
        "\r\n".join(x for x in lines if "8.8.8.8" not in x and ".local" not in x),
        PeerAddressPolicy().refusal,
    )
    assert only_internal.unusable


async def test_announcing_a_public_address_rewrites_host_candidates_and_keeps_relays() -> None:
    async with NetworkProbe(media=False) as probe:
        local = await probe.offer()
    relay = "a=candidate:r 1 udp 16777215 198.51.100.9 50000 typ relay raddr 10.0.0.2 rport 4000"
    text = local.replace("a=end-of-candidates", relay + "\r\na=end-of-candidates")
    answer = announce(text, [ip_address("203.0.113.7")])
    candidates = [x for x in answer.splitlines() if x.startswith("a=candidate:")]
    hosts = [x for x in candidates if "typ host" in x]
    assert hosts and all(" 203.0.113.7 " in x for x in hosts)
    assert len(hosts) == sum(":" not in a for a in host_networks().split(","))  # IPv4 only
    assert any(" 198.51.100.9 50000 typ relay" in x for x in candidates)
    assert "raddr" not in answer and "10.0.0.2" not in answer
    assert [x for x in answer.splitlines() if x.startswith("c=")] == ["c=IN IP4 203.0.113.7"]


def test_rtc_address_settings_are_parsed(database_url: str, tmp_path: Path) -> None:
    env = {
        "RTC_ALLOWED_PEER_NETWORKS": "127.0.0.1, 10.0.0.0/8,fd00::/8",
        "RTC_PUBLIC_IP": "203.0.113.7,2001:db8::7",
    }
    rtc = load_settings(settings_env(database_url, tmp_path, **env)).rtc
    assert rtc.allowed_peer_networks == (
        ip_network("127.0.0.1/32"),
        ip_network("10.0.0.0/8"),
        ip_network("fd00::/8"),
    )
    assert rtc.public_ips == (ip_address("203.0.113.7"), ip_address("2001:db8::7"))
    default = load_settings(settings_env(database_url, tmp_path)).rtc
    assert default.public_ips == ()


# --- the real peer ---------------------------------------------------------------------


async def test_probe_on_loopback_gets_plausible_figures_that_the_doctor_reads(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient, doctor = tenant[Role.PATIENT], tenant[Role.DOCTOR]
    appointment_id = await video_appointment(app_pool, tenant)
    started: list[dict[str, Any]] = []
    async with asyncio.timeout(LIMIT):
        figures = await run_probe(
            signaller(client, patient, appointment_id, started), seconds=3.0, rate=20.0
        )
        assert figures.rtt_ms_p50 is not None and 0 < figures.rtt_ms_p50 < 1000
        assert figures.rtt_ms_max is not None and figures.rtt_ms_max >= figures.rtt_ms_p50
        assert 0.0 <= figures.loss <= 1.0
        assert figures.pings_echoed > 0
        assert figures.jitter_ms is not None and figures.jitter_ms >= 0
        assert figures.bitrate_bps > 0
        assert figures.audio_frames > 0 and figures.video_frames > 0  # the media came back

        test_id = started[0]["id"]
        resp = await client.post(
            f"/api/v1/network-tests/{test_id}/result",
            json=figures.as_report(),
            headers=patient.headers,
        )
        assert resp.status == 200, await resp.text()
        result = await resp.json()
    assert result["status"] == "completed"
    assert result["client"] == figures.as_report()
    server = result["server"]
    assert server["connected"] is True
    assert server["messages_echoed"] > 0
    assert server["bitrate_in_bps"] > 0 and server["bitrate_out_bps"] > 0
    assert server["media"] == ["audio", "video"]
    assert server["loss"] is not None and 0.0 <= server["loss"] <= 1.0
    assert server["jitter_ms"] is not None and server["jitter_ms"] >= 0
    if server["rtt_ms"] is not None:  # RTCP reports come about once a second
        assert 0 <= server["rtt_ms"] < 1000
    assert runner(client).running == 0

    seen = await latest(client, doctor, appointment_id)
    assert [(t["id"], t["user_id"]) for t in seen] == [(test_id, str(patient.user_id))]
    assert seen[0]["client"]["rtt_ms_p50"] == figures.rtt_ms_p50
    await chained(app_pool)
    audit = await app_pool.fetch(
        "SELECT action FROM audit_log WHERE clinic_id = $1 AND action LIKE 'network_test.%' "
        "ORDER BY seq",
        tenant.clinic_id,
    )
    actions = [row["action"] for row in audit]
    assert actions == ["network_test.start", "network_test.report", "network_test.list"]
    lookup = await client.app[NETWORK_TESTS].latest_for(appointment_id, patient.user_id)
    assert lookup is not None and lookup["id"] == test_id


async def test_another_clinics_users_get_not_found(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> None:
    appointment_id = await video_appointment(app_pool, tenant)
    async with asyncio.timeout(LIMIT):
        sdp = await offer_sdp()
        resp = await start(client, tenant[Role.PATIENT], appointment_id, sdp)
        assert resp.status == 201, await resp.text()
        test_id = (await resp.json())["id"]
        for role in (Role.PATIENT, Role.DOCTOR, Role.NURSE):
            stranger = other_tenant[role]
            await assert_problem(
                await start(client, stranger, appointment_id, sdp), 404, "not_found"
            )
            resp = await client.get(route_of(appointment_id), headers=stranger.headers)
            await assert_problem(resp, 404, "not_found")
            resp = await client.post(
                f"/api/v1/network-tests/{test_id}/result",
                json=EMPTY_REPORT,
                headers=stranger.headers,
            )
            await assert_problem(resp, 404, "not_found")
    assert runner(client).running == 1  # only the patient's own test


async def test_only_the_user_who_started_a_test_reports_it_and_only_once(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient, doctor = tenant[Role.PATIENT], tenant[Role.DOCTOR]
    appointment_id = await video_appointment(app_pool, tenant)
    async with asyncio.timeout(LIMIT):
        resp = await start(client, patient, appointment_id, await offer_sdp())
        test_id = (await resp.json())["id"]
        path = f"/api/v1/network-tests/{test_id}/result"
        resp = await client.post(path, json=EMPTY_REPORT, headers=doctor.headers)
        await assert_problem(resp, 404, "not_found")
        resp = await client.post(path, json=EMPTY_REPORT, headers=patient.headers)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        # The peer never connected: reporting closed it, as a failed test.
        assert body["status"] == "failed" and body["server"]["connected"] is False
        resp = await client.post(path, json=EMPTY_REPORT, headers=patient.headers)
        await assert_problem(resp, 409, "conflict")
    assert runner(client).running == 0


async def test_implausible_figures_are_refused(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient = tenant[Role.PATIENT]
    appointment_id = await video_appointment(app_pool, tenant)
    async with asyncio.timeout(LIMIT):
        resp = await start(client, patient, appointment_id, await offer_sdp())
        path = f"/api/v1/network-tests/{(await resp.json())['id']}/result"
        for bad in (
            {"loss": 1.5},
            {"pings_echoed": 3},  # more echoes than pings
            {"pings_sent": 1, "pings_echoed": 1},  # echoed, but no round trips given
            {"rtt_ms_min": 5.0, "rtt_ms_p50": 4.0, "rtt_ms_p95": 6.0, "rtt_ms_max": 7.0},
            {"bitrate_bps": -1.0},
            {"extra": 1},
            {"duration_s": "1"},
        ):
            resp = await client.post(path, json=EMPTY_REPORT | bad, headers=patient.headers)
            await assert_problem(resp, 400, "validation_failed")


async def test_a_browser_style_offer_of_mdns_candidates_connects_peer_reflexively(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    """Browsers hide host addresses behind mDNS names; the server drops those, and
    meets the client at the source of its checks instead."""
    appointment_id = await video_appointment(app_pool, tenant)
    async with asyncio.timeout(LIMIT), NetworkProbe(media=False) as probe:
        offer = re.sub(
            r"^(a=candidate:\S+ \d+ udp \d+ )(\S+)",
            lambda m: f"{m.group(1)}{uuid4()}.local",
            await probe.offer(),
            flags=re.MULTILINE,
        )
        assert ".local" in offer
        resp = await start(client, tenant[Role.PATIENT], appointment_id, offer)
        assert resp.status == 201, await resp.text()
        await probe.accept((await resp.json())["sdp"])
        await probe.wait_open()
    assert runner(client).running == 1


async def test_garbage_sdp_is_a_bad_request_that_opens_no_peer(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient = tenant[Role.PATIENT]
    appointment_id = await video_appointment(app_pool, tenant)
    real = await offer_sdp()
    async with asyncio.timeout(LIMIT):
        for garbage in (
            "hello",
            "v=0\r\nm=audio x RTP/AVP 0\r\n",
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n",
            real.replace("a=fingerprint", "a=fingerprint-not"),
            real.replace("webrtc-datachannel", "webrtc-datachannel\r\na=candidate:broken"),
        ):
            resp = await start(client, patient, appointment_id, garbage)
            await assert_problem(resp, 400, "invalid_sdp")
        resp = await start(client, patient, appointment_id, "v=0\r\n" + "a=x\r\n" * 20_000)
        await assert_problem(resp, 400, "validation_failed")  # longer than the limit
        resp = await client.post(
            route_of(appointment_id),
            json={"sdp": real, "type": "answer"},
            headers=patient.headers,
        )
        await assert_problem(resp, 400, "validation_failed")
    assert runner(client).running == 0
    count = "SELECT count(*) FROM network_tests WHERE appointment_id = $1"
    assert await app_pool.fetchval(count, appointment_id) == 0


async def test_an_appointment_without_a_room_has_nothing_to_test(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    await video_appointment(app_pool, tenant)  # the doctor's profile
    start_at = datetime.now(UTC) + timedelta(days=2)
    appointment_id = await app_pool.fetchval(
        """
        INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at, ends_at)
        VALUES ($1, $2, $3, 'in_person', $4, $5) RETURNING id
        """,
        tenant.clinic_id,
        tenant[Role.DOCTOR].user_id,
        tenant[Role.PATIENT].user_id,
        start_at,
        start_at + timedelta(minutes=30),
    )
    async with asyncio.timeout(LIMIT):
        resp = await start(client, tenant[Role.PATIENT], appointment_id, await offer_sdp())
        await assert_problem(resp, 422, "no_consultation")
    assert runner(client).running == 0


@pytest.mark.parametrize("rtc_env", [{"RTC_MAX_CONCURRENT_TESTS": "1"}])
async def test_over_the_concurrency_limit_is_unavailable_until_a_slot_frees(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient, doctor = tenant[Role.PATIENT], tenant[Role.DOCTOR]
    appointment_id = await video_appointment(app_pool, tenant)
    async with asyncio.timeout(LIMIT):
        resp = await start(client, patient, appointment_id, await offer_sdp())
        assert resp.status == 201, await resp.text()
        test_id = (await resp.json())["id"]

        refused = await start(client, doctor, appointment_id, await offer_sdp())
        await assert_problem(refused, 503, "unavailable")
        assert 1 <= int(refused.headers["Retry-After"]) <= 30

        resp = await client.post(
            f"/api/v1/network-tests/{test_id}/result", json=EMPTY_REPORT, headers=patient.headers
        )
        assert resp.status == 200, await resp.text()
        resp = await start(client, doctor, appointment_id, await offer_sdp())
        assert resp.status == 201, await resp.text()
    assert runner(client).running == 1


@pytest.mark.parametrize("rtc_env", [{"RTC_MAX_TEST_SECONDS": "2"}])
async def test_the_time_limit_closes_the_servers_peer(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient, doctor = tenant[Role.PATIENT], tenant[Role.DOCTOR]
    appointment_id = await video_appointment(app_pool, tenant)
    started: list[dict[str, Any]] = []
    async with asyncio.timeout(LIMIT), NetworkProbe() as probe:
        signal = signaller(client, patient, appointment_id, started)
        await probe.accept(await signal(await probe.offer()))
        await probe.wait_open()
        # The probe does nothing more: the server must hang up on its own.
        await probe.wait_ended()
        assert probe.connection_state in ("closed", "failed")
        for _ in range(200):
            seen = await latest(client, doctor, appointment_id)
            if seen and seen[0]["status"] != "running":
                break
            await asyncio.sleep(0.05)
    assert seen[0]["id"] == started[0]["id"]
    assert seen[0]["status"] == "expired"
    assert seen[0]["finished_at"] is not None
    assert seen[0]["server"]["connected"] is True
    assert runner(client).running == 0


async def test_starting_again_replaces_the_callers_running_test(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient = tenant[Role.PATIENT]
    appointment_id = await video_appointment(app_pool, tenant)
    async with asyncio.timeout(LIMIT):
        first = await start(client, patient, appointment_id, await offer_sdp())
        second = await start(client, patient, appointment_id, await offer_sdp())
        assert (first.status, second.status) == (201, 201)
        first_id = (await first.json())["id"]
    status = await app_pool.fetchval("SELECT status FROM network_tests WHERE id = $1", first_id)
    assert status == "aborted"
    assert runner(client).running == 1
    assert [t["id"] for t in await latest(client, patient, appointment_id)] == [
        (await second.json())["id"]
    ]


async def test_a_patient_reads_only_their_own_result(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant
) -> None:
    patient, doctor, nurse = tenant[Role.PATIENT], tenant[Role.DOCTOR], tenant[Role.NURSE]
    appointment_id = await video_appointment(app_pool, tenant)
    async with asyncio.timeout(LIMIT):
        for who in (patient, doctor, nurse):
            resp = await start(client, who, appointment_id, await offer_sdp())
            assert resp.status == 201, await resp.text()
    mine = await latest(client, patient, appointment_id)
    assert [t["user_id"] for t in mine] == [str(patient.user_id)]
    staff = await latest(client, tenant[Role.RECEPTIONIST], appointment_id)
    assert {t["user_role"] for t in staff} == {"patient", "doctor", "nurse"}


async def test_shutdown_aborts_running_tests_and_closes_their_peers(
    aiohttp_client: Any, settings: Settings, pool: asyncpg.Pool, tenant: Tenant
) -> None:
    """A second app on the same database: closing it must close its peers."""
    from teleconsult.server.app import create_app

    app_client: Client = await aiohttp_client(create_app(settings))
    appointment_id = await video_appointment(pool, tenant)
    started: list[dict[str, Any]] = []
    async with asyncio.timeout(LIMIT), NetworkProbe() as probe:
        signal = signaller(app_client, tenant[Role.PATIENT], appointment_id, started)
        await probe.accept(await signal(await probe.offer()))
        await probe.wait_open()
        peers = runner(app_client)
        assert peers.running == 1
        await app_client.close()
        assert peers.running == 0
        await probe.wait_ended()
    status = await pool.fetchval(
        "SELECT status FROM network_tests WHERE id = $1", UUID(started[0]["id"])
    )
    assert status == "aborted"


async def test_the_runner_refuses_new_tests_once_closed() -> None:
    policy = PeerAddressPolicy.of([ip_network(a) for a in host_networks().split(",")])
    peers = NetworkTestRunner(max_concurrent=1, max_seconds=5, peer_policy=policy)
    await peers.close()

    async def ignore(*_: object) -> None:
        return None

    async with asyncio.timeout(LIMIT):
        with pytest.raises(ClientError) as refused:
            await peers.start(UUID(int=1), owner="x", offer_sdp=await offer_sdp(), on_finish=ignore)
    assert refused.value.status == 503


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RTC_MAX_CONCURRENT_TESTS", "0"),
        ("RTC_MAX_TEST_SECONDS", "x"),
        ("RTC_ALLOWED_PEER_NETWORKS", "10.0.0.0/33"),
        ("RTC_ALLOWED_PEER_NETWORKS", "127.0.0.1,localhost"),
        ("RTC_PUBLIC_IP", "example.org"),
        ("RTC_PUBLIC_IP", "198.51.100.1,203.0.113.7"),
        ("RTC_PUBLIC_IP", "0.0.0.0"),
    ],
)
def test_bad_rtc_settings_name_the_variable(
    database_url: str, tmp_path: Path, name: str, value: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(settings_env(database_url, tmp_path, **{name: value}))
    assert refused.value.variable == name
