"""Playback tickets (issue 13, pages): what a ``<video src>`` plays a recording with.

A ticket opens exactly one recording for the user it was issued to, for a few
minutes; a ticket for another recording, an altered, forged or expired one is
refused as ``not_found`` and plays nothing; every use is audited
(teleconsult/recording/tickets.py, docs/rtc.md "Playback in the pages")."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from uuid import UUID

import asyncpg

from teleconsult.accounts.routes import ACCOUNTS
from teleconsult.core.identity import Role
from teleconsult.recording.keys import KeyRing
from teleconsult.recording.routes import RECORDINGS
from teleconsult.recording.tickets import PlaybackTickets
from tests.auditkit import chained
from tests.test_authz_matrix import Client, Target
from tests.test_authz_matrix_recordings import (
    MEDIA,
    as_principal,
    sealed_recording,
    world,  # noqa: F401 (the fixture)
)
from tests.test_authz_matrix_scheduling import SchedulingWorld


async def ticket_url(client: Client, headers: dict[str, str], recording_id: UUID) -> str:
    resp = await client.post(f"/api/v1/recordings/{recording_id}/playback-ticket", headers=headers)
    assert resp.status == 200, await resp.text()
    url: str = (await resp.json())["url"]
    assert url.startswith(f"/api/v1/recordings/{recording_id}/playback?ticket=v1.")
    return url


async def plays(client: Client, url: str, headers: dict[str, str] | None = None) -> int:
    resp = await client.get(url, headers=headers or {})
    return resp.status


async def audited(pool: asyncpg.Pool, recording_id: UUID) -> int:
    await chained(pool)
    count: int = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'recording.play' AND object_id = $1",
        str(recording_id),
    )
    return count


async def test_a_ticket_plays_its_recording_with_range_and_is_audited(
    world: SchedulingWorld,  # noqa: F811 (the imported fixture)
    tmp_path: Path,
) -> None:
    client = world.client
    recording_id = await sealed_recording(world, Target.OWN, tmp_path)
    doctor = world.own[Role.DOCTOR]
    url = await ticket_url(client, doctor.headers, recording_id)
    before = await audited(world.pool, recording_id)

    # No Authorization header: the ticket is the credential, as for a <video src>.
    whole = await client.get(url)
    assert whole.status == 200, await whole.text()
    assert await whole.read() == MEDIA
    part = await client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status == 206, await part.text()
    assert await part.read() == MEDIA[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(MEDIA)}"
    assert await audited(world.pool, recording_id) == before + 2


async def test_a_ticket_opens_no_other_recording_and_bad_tickets_are_refused(
    world: SchedulingWorld,  # noqa: F811 (the imported fixture)
    tmp_path: Path,
) -> None:
    client = world.client
    mine = await sealed_recording(world, Target.OWN, tmp_path)
    other = await sealed_recording(world, Target.SAME_CLINIC_OTHER_PATIENT, tmp_path)
    patient = world.own[Role.PATIENT]
    url = await ticket_url(client, patient.headers, mine)
    ticket = url.split("ticket=", 1)[1]
    assert await plays(client, url) == 200
    before = await audited(world.pool, other)

    # The same ticket presented for another consultation's recording.
    assert await plays(client, f"/api/v1/recordings/{other}/playback?ticket={ticket}") == 404
    # The patient cannot get a ticket for the other patient's recording either.
    resp = await client.post(f"/api/v1/recordings/{other}/playback-ticket", headers=patient.headers)
    assert resp.status == 404, await resp.text()

    # Altered: the payload names the other recording, the tag is the original one.
    version, payload, tag = ticket.split(".")[1:]
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    swapped = raw.replace(str(mine).encode(), str(other).encode())
    forged_payload = base64.urlsafe_b64encode(swapped).rstrip(b"=").decode()
    altered = f"v1.{version}.{forged_payload}.{tag}"
    assert await plays(client, f"/api/v1/recordings/{other}/playback?ticket={altered}") == 404

    # Forged with a key the server does not hold, for the other patient's recording and as
    # its own patient (every field right but the key).
    owner = world.parties(Target.SAME_CLINIC_OTHER_PATIENT)[2]
    stranger = PlaybackTickets(KeyRing.of([(int(version), b"k" * 32)]))
    forged = stranger.issue(as_principal(world, owner.user_id), other).ticket
    assert await plays(client, f"/api/v1/recordings/{other}/playback?ticket={forged}") == 404

    # Expired: issued with the server's own keys, but its minutes are over.
    keys = client.app[RECORDINGS].keys
    real = PlaybackTickets(keys)
    # The patient as the server knows them now, with their real login session.
    me = await client.app[ACCOUNTS].authenticate(patient.access_token)
    old = real.issue(me, mine, now=time.time() - 3600).ticket
    assert await plays(client, f"/api/v1/recordings/{mine}/playback?ticket={old}") == 404
    # (and the same call, fresh, does play: the refusals above are the ticket's)
    fresh = real.issue(me, mine).ticket
    assert await plays(client, f"/api/v1/recordings/{mine}/playback?ticket={fresh}") == 200

    for junk in ("x", "v1.1.AAAA.AAAA", "v1.nope.a.b", "v1.1." + "A" * 700 + ".A"):
        assert await plays(client, f"/api/v1/recordings/{mine}/playback?ticket={junk}") in (
            400,
            404,
        ), junk
    assert await plays(client, f"/api/v1/recordings/{mine}/playback") == 400
    # Nothing of the other recording was played (nor audited as played).
    assert await audited(world.pool, other) == before
