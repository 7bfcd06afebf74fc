"""Network-test routes, called by every role, against a written policy.

The fourth table of the authorization matrix, beside ``tests/test_authz_matrix.py``
(helpers, route-coverage tests). RTC is written by hand and does not import
``teleconsult.core.policy``; docs/policy.md is its prose.

Target kinds:

* appointment routes (start, list): appointments as in the scheduling table (own /
  other patient's / colleague's / other clinic's), each a video appointment with its
  consultation room;
* ``reportNetworkTest``: a test started by the caller / by the other patient of the
  clinic / by the colleague doctor / by a user of the other clinic.

An allowed start is a real aiortc offer, answered by a real server peer; the app
closes those peers when the test ends.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest

from teleconsult.client.probe import NetworkProbe
from teleconsult.core.identity import Role
from teleconsult.core.settings import Settings, load_settings
from teleconsult.scheduling import store as scheduling
from tests.authzkit import (
    APPOINTMENT_OBJECT,
    SchedulingWorld,
    scheduling_world,
)
from tests.conftest import settings_env
from tests.test_authz_matrix import (
    A,
    Client,
    F,
    N,
    Prepared,
    Rule,
    Target,
    assert_malformed_ids_not_found,
    assert_route_follows_policy,
    public,  # livekit (issue 13, part L)
    read,
    row,
)
from tests.world import Account, Tenant

STARTER = APPOINTMENT_OBJECT  # own / other patient's / colleague's / other clinic's
DENIED = (F, F, F, F)
TESTS = "/api/v1/appointments/{appointment_id}/network-tests"

# The written policy. Columns: patient, doctor, nurse, receptionist, admin; inside each,
# one answer per target kind, in the order of the row's target tuple (see above).
# fmt: off
RTC: dict[str, Rule] = {
    #   patient       doctor        nurse         reception.    admin
    "startNetworkTest": row(f"POST {TESTS}", APPOINTMENT_OBJECT,
        (A, N, A, N), (A, A, N, N), (A, A, A, N), DENIED,       DENIED),
    "listNetworkTests": row(f"GET {TESTS}", APPOINTMENT_OBJECT,
        (A, N, A, N), (A, A, N, N), (A, A, A, N), (A, A, A, N), (A, A, A, N)),
    # A test of the caller / the other patient / the colleague / the other clinic.
    "reportNetworkTest": row("POST /api/v1/network-tests/{network_test_id}/result", STARTER,
        (A, N, N, N), (A, N, N, N), (A, N, N, N), DENIED,       DENIED),
    # --- livekit (issue 13, part L): LiveKit's signature over the body is the credential;
    # refusals are tested in tests/test_sfu_livekit_contract.py ---
    "receiveLiveKitWebhook": public("POST /api/v1/webhooks/livekit"),
}
# fmt: on
AUTHENTICATED = sorted(op for op, rule in RTC.items() if not rule.public)

REPORT = {
    "duration_s": 3.0,
    "pings_sent": 60,
    "pings_echoed": 59,
    "loss": 0.0167,
    "rtt_ms_min": 1.0,
    "rtt_ms_p50": 2.0,
    "rtt_ms_p95": 5.0,
    "rtt_ms_max": 9.0,
    "jitter_ms": 0.8,
    "bitrate_bps": 400_000.0,
    "media_packets_received": 400,
    "media_packets_lost": 0,
    "media_jitter_ms": 3.0,
    "audio_frames": 150,
    "video_frames": 45,
}


class RtcWorld(SchedulingWorld):
    """The scheduling world; its appointments are video calls with a consultation."""

    async def room(self, target: Target) -> tuple[UUID, UUID]:
        """A fresh video appointment of ``target`` kind and its consultation's id."""
        appointment_id = await self.appointment(target)
        start = datetime.now(UTC) + timedelta(days=1)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE appointments SET service = 'video' WHERE id = $1", appointment_id
            )
            consultation = await scheduling.insert_consultation(
                conn,
                appointment_id=appointment_id,
                join_opens_at=start,
                join_closes_at=start + timedelta(hours=1),
            )
        return appointment_id, consultation.id

    async def network_test(self, target: Target, user: Account) -> UUID:
        """A running test of ``user`` for a room of ``target`` kind, written straight
        to the database (no peer)."""
        clinic = self.parties(target)[0]
        appointment_id, consultation_id = await self.room(target)
        test_id: UUID = await self.pool.fetchval(
            """
            INSERT INTO network_tests (id, clinic_id, appointment_id, consultation_id, user_id,
                                       user_role, expires_at)
            VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, now() + interval '30 seconds')
            RETURNING id
            """,
            clinic.clinic_id,
            appointment_id,
            consultation_id,
            user.user_id,
            user.role.value,
        )
        return self._note_foreign(clinic, test_id)


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    # Every allowed start holds a real peer until the app closes.
    return load_settings(settings_env(database_url, tmp_path, RTC_MAX_CONCURRENT_TESTS="100"))


@pytest.fixture
async def world(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> RtcWorld:
    return await scheduling_world(RtcWorld, client, app_pool, tenant, other_tenant)


async def offer_sdp() -> str:
    async with NetworkProbe(media=False) as probe:
        return await probe.offer()


async def prepare(world: RtcWorld, op: str, role: Role | None, target: Target) -> Prepared:
    """Build the request for ``op`` as ``role`` (None: no token) on ``target``."""
    own, pool = world.own, world.pool
    caller = own[role] if role is not None else None
    subject = caller or own[Role.PATIENT]
    prep = Prepared(caller, {})
    match op:
        case "startNetworkTest":
            appointment_id = prep.params["appointment_id"] = (await world.room(target))[0]
            prep.body = {"sdp": await offer_sdp(), "type": "offer"}
            prep.probe = read(
                pool, "SELECT count(*) FROM network_tests WHERE appointment_id = $1", appointment_id
            )
        case "listNetworkTests":
            appointment_id = prep.params["appointment_id"] = (await world.room(target))[0]
        case "reportNetworkTest":
            assert own.other_patient is not None
            starter = {
                Target.OWN: subject,
                Target.SAME_CLINIC_OTHER_PATIENT: own.other_patient,
                Target.SAME_CLINIC_OTHER_DOCTOR: world.colleague,
                Target.OTHER_TENANT: world.other[subject.role],
            }[target]
            room = Target.OTHER_TENANT if target is Target.OTHER_TENANT else Target.OWN
            test_id = prep.params["network_test_id"] = await world.network_test(room, starter)
            prep.body = REPORT
            prep.probe = read(pool, "SELECT reported_at FROM network_tests WHERE id = $1", test_id)
        case _:
            raise AssertionError(f"no request factory for operation {op}")
    return prep


@pytest.mark.parametrize("op", AUTHENTICATED)
async def test_route_answers_every_role_as_the_policy_says(op: str, world: RtcWorld) -> None:
    await assert_route_follows_policy(world, op, RTC[op], prepare)


async def test_malformed_path_id_is_not_found(world: RtcWorld) -> None:
    await assert_malformed_ids_not_found(world, RTC, prepare)
