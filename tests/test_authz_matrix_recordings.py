"""Recording routes, called by every role, against a written policy (issue 13).

A table of the authorization matrix beside ``tests/test_authz_matrix.py`` (helpers,
route-coverage tests), written by hand without importing ``teleconsult.core.policy``;
docs/policy.md and docs/rtc.md ("Recordings") are its prose.

Target kinds (the scheduling table's appointments): the caller's own appointment /
the other patient's (with the clinic's doctor) / the colleague doctor's (with the
clinic's patient) / the other clinic's. For ``getRecordingMedia`` the target is a
sealed recording of such an appointment; for ``setRecordingRetention``, the caller's
clinic / the other clinic.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest

from teleconsult.core.identity import Principal, Role
from teleconsult.recording.routes import RECORDINGS
from teleconsult.recording.service import RecordingService
from tests.authzkit import (
    APPOINTMENT_OBJECT,
    SchedulingWorld,
    scheduling_world,
)
from tests.test_authz_matrix import (
    CLINIC_OBJECT,
    A,
    Client,
    F,
    N,
    Prepared,
    PrepareFn,
    Rule,
    Target,
    assert_malformed_ids_not_found,
    assert_route_follows_policy,
    public,
    read,
    row,
)
from tests.world import Tenant

DENIED = (F, F, F, F)
CONSENT = "/api/v1/appointments/{appointment_id}/recording-consent"

# The written policy. Columns: patient, doctor, nurse, receptionist, admin; inside each,
# one answer per target kind: own, other patient's, colleague's, other clinic's.
# fmt: off
RECORDINGS_TABLE: dict[str, Rule] = {
    #   patient       doctor        nurse         reception.    admin
    "giveRecordingConsent": row(f"POST {CONSENT}", APPOINTMENT_OBJECT,
        (A, N, A, N), DENIED,       DENIED,       DENIED,       DENIED),
    "withdrawRecordingConsent": row(f"DELETE {CONSENT}", APPOINTMENT_OBJECT,
        (A, N, A, N), DENIED,       DENIED,       DENIED,       DENIED),
    "listRecordings": row("GET /api/v1/appointments/{appointment_id}/recordings",
        APPOINTMENT_OBJECT,
        (A, N, A, N), (A, A, N, N), (A, A, A, N), (A, A, A, N), (A, A, A, N)),
    # The media plays to the consultation's doctor and its patient, to no other role.
    "getRecordingMedia": row("GET /api/v1/recordings/{recording_id}/media", APPOINTMENT_OBJECT,
        (A, N, A, N), (A, A, N, N), DENIED,       DENIED,       DENIED),
    # --- playback tickets (issue 13, pages): issued like the media plays; the
    # ticket itself is the credential of the playback route (tests/test_recording_tickets.py)
    "issueRecordingPlaybackTicket": row(
        "POST /api/v1/recordings/{recording_id}/playback-ticket", APPOINTMENT_OBJECT,
        (A, N, A, N), (A, A, N, N), DENIED,       DENIED,       DENIED),
    "playRecordingWithTicket": public("GET /api/v1/recordings/{recording_id}/playback"),
    # --- end playback tickets ---
    # A clinic's retention: its admins set it (own clinic / other clinic).
    "setRecordingRetention": row(
        "PUT /api/v1/clinics/{clinic_id}/recording-retention", CLINIC_OBJECT,
        (F, F),       (F, F),       (F, F),       (F, F),       (A, N)),
}
# fmt: on
AUTHENTICATED = sorted(op for op, r in RECORDINGS_TABLE.items() if not r.public)
MEDIA = b"not really a webm, but opaque bytes all the same. " * 200


def as_principal(world: SchedulingWorld, user_id: UUID) -> Principal:
    for tenant in (world.own, world.other):
        for account in [*tenant.users.values(), tenant.other_patient, world.colleague]:
            if account is not None and account.user_id == user_id:
                return Principal(account.user_id, account.clinic_id, account.role, account.user_id)
    raise AssertionError("unknown user")


async def sealed_recording(world: SchedulingWorld, target: Target, tmp: Path) -> UUID:
    """A ready recording of a fresh appointment of ``target`` kind."""
    service: RecordingService = world.client.app[RECORDINGS]
    appointment_id = await world.appointment(target)
    _, doctor, patient = world.parties(target)
    await service.give_consent(as_principal(world, patient.user_id), appointment_id)
    started = await service.begin(as_principal(world, doctor.user_id), appointment_id, "rec")
    plain = tmp / f"{secrets.token_hex(4)}.webm"
    plain.write_bytes(MEDIA)
    await service.ingest(started.id, plain, "video/webm")
    return world._note_foreign(world.parties(target)[0], started.id)


@pytest.fixture
async def world(
    client: Client, app_pool: asyncpg.Pool, tenant: Tenant, other_tenant: Tenant
) -> SchedulingWorld:
    return await scheduling_world(SchedulingWorld, client, app_pool, tenant, other_tenant)


def make_prepare(tmp: Path) -> PrepareFn[SchedulingWorld]:
    async def prepare(
        world: SchedulingWorld, op: str, role: Role | None, target: Target
    ) -> Prepared:
        own, pool = world.own, world.pool
        caller = own[role] if role is not None else None
        prep = Prepared(caller, {})
        match op:
            case "giveRecordingConsent":
                appointment_id = prep.params["appointment_id"] = await world.appointment(target)
                prep.probe = read(
                    pool,
                    "SELECT count(*) FROM recording_consents WHERE appointment_id = $1",
                    appointment_id,
                )
            case "withdrawRecordingConsent":
                appointment_id = prep.params["appointment_id"] = await world.appointment(target)
                clinic, _, patient = world.parties(target)
                await pool.execute(
                    "INSERT INTO recording_consents (appointment_id, clinic_id, patient_id) "
                    "VALUES ($1, $2, $3)",
                    appointment_id,
                    clinic.clinic_id,
                    patient.user_id,
                )
                prep.probe = read(
                    pool,
                    "SELECT withdrawn_at FROM recording_consents WHERE appointment_id = $1",
                    appointment_id,
                )
            case "listRecordings":
                prep.params["appointment_id"] = await world.appointment(target)
            case "getRecordingMedia" | "issueRecordingPlaybackTicket":
                prep.params["recording_id"] = await sealed_recording(world, target, tmp)
            case "setRecordingRetention":
                clinic = world.other if target is Target.OTHER_TENANT else own
                prep.params["clinic_id"] = clinic.clinic_id
                now = await pool.fetchval(
                    "SELECT recording_retention_days FROM clinics WHERE id = $1", clinic.clinic_id
                )
                prep.body = {"days": 30 + (now - 30 + 1 + secrets.randbelow(3000)) % 3001}
                prep.probe = read(
                    pool,
                    "SELECT recording_retention_days FROM clinics WHERE id = $1",
                    clinic.clinic_id,
                )
            case _:
                raise AssertionError(f"no request factory for operation {op}")
        return prep

    return prepare


@pytest.mark.parametrize("op", AUTHENTICATED)
async def test_route_answers_every_role_as_the_policy_says(
    op: str, world: SchedulingWorld, tmp_path: Path
) -> None:
    await assert_route_follows_policy(world, op, RECORDINGS_TABLE[op], make_prepare(tmp_path))


async def test_malformed_path_id_is_not_found(world: SchedulingWorld, tmp_path: Path) -> None:
    await assert_malformed_ids_not_found(world, RECORDINGS_TABLE, make_prepare(tmp_path))
