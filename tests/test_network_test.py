"""Pre-call network tests: the server's aiortc peer against a real aiortc probe on loopback.

The pure parts (offer checks, the figures' arithmetic) are tested without I/O; the
rest runs the real app on a real database with real peers, and every test is
bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

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
from teleconsult.rtc.figures import percentile, ping_figures, rfc3550_jitter
from teleconsult.rtc.network_test import NetworkTestRunner
from teleconsult.rtc.routes import NETWORK_TESTS
from teleconsult.rtc.sdp import SdpError, check_offer
from teleconsult.scheduling import store as scheduling
from tests.auditkit import chained
from tests.conftest import settings_env
from tests.world import Account, Tenant, assert_problem

Client = TestClient[Any, Any]
LIMIT = 60  # seconds: the bound of every test that runs peers


@pytest.fixture
def rtc_env() -> dict[str, str]:
    """Extra settings for the app; tests parametrize it to set the limits."""
    return {}


@pytest.fixture
def settings(database_url: str, tmp_path: Path, rtc_env: dict[str, str]) -> Settings:
    return load_settings(settings_env(database_url, tmp_path, **rtc_env))


def runner(client: Client) -> NetworkTestRunner:
    peers: NetworkTestRunner = client.app[NETWORK_TESTS].runner
    return peers


async def video_appointment(pool: asyncpg.Pool, tenant: Tenant) -> UUID:
    """A confirmed video appointment of the tenant's patient and doctor, with its room."""
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    end = start + timedelta(minutes=30)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO doctor_profiles (user_id, clinic_id, consultation_minutes, "
            "buffer_minutes, currency, services) "
            "VALUES ($1, $2, 30, 10, 'KES', '{video,in_person}') ON CONFLICT DO NOTHING",
            tenant[Role.DOCTOR].user_id,
            tenant.clinic_id,
        )
        appointment_id: UUID = await conn.fetchval(
            """
            INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at,
                                      ends_at, status)
            VALUES ($1, $2, $3, 'video', $4, $5, 'confirmed') RETURNING id
            """,
            tenant.clinic_id,
            tenant[Role.DOCTOR].user_id,
            tenant[Role.PATIENT].user_id,
            start,
            end,
        )
        await scheduling.insert_consultation(
            conn,
            appointment_id=appointment_id,
            join_opens_at=start - timedelta(minutes=15),
            join_closes_at=end + timedelta(minutes=30),
        )
    return appointment_id


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
    peers = NetworkTestRunner(max_concurrent=1, max_seconds=5)
    await peers.close()

    async def ignore(*_: object) -> None:
        return None

    async with asyncio.timeout(LIMIT):
        with pytest.raises(ClientError) as refused:
            await peers.start(UUID(int=1), owner="x", offer_sdp=await offer_sdp(), on_finish=ignore)
    assert refused.value.status == 503


@pytest.mark.parametrize(
    ("name", "value"), [("RTC_MAX_CONCURRENT_TESTS", "0"), ("RTC_MAX_TEST_SECONDS", "x")]
)
def test_bad_rtc_settings_name_the_variable(
    database_url: str, tmp_path: Path, name: str, value: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(settings_env(database_url, tmp_path, **{name: value}))
    assert refused.value.variable == name
