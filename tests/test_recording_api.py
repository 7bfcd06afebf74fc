"""Recordings end to end against the real PostgreSQL: consent, sealing a real WebM,
playback with Range, scope, tampering, retention (issue 13)."""

from __future__ import annotations

import asyncio
import io
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from teleconsult.core.errors import ClientError
from teleconsult.core.identity import Principal, Role
from teleconsult.core.settings import Settings, load_settings
from teleconsult.recording.routes import RECORDINGS
from teleconsult.recording.seal import (
    HEADER_BYTES,
    TAG_BYTES,
    KeyUnavailable,
    file_reader,
    open_range,
)
from teleconsult.recording.service import RecordingService
from teleconsult.recording.sfu_events import RecordingIntake
from teleconsult.rtc.sfu import SfuEvent, SfuEventKind
from teleconsult.server.app import POOL, SETTINGS
from tests.conftest import StartServer, settings_env
from tests.recordingkit import MEDIA_MAGIC, make_ogg, make_webm
from tests.world import Account, Tenant, assert_problem

Client = TestClient[Any, Any]
CHUNK = 4096


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    # Small chunks: a 125 KB WebM spans ~30 of them. The in-app sweeper stays out of
    # the way; tests sweep when they mean to.
    return load_settings(
        settings_env(
            database_url,
            tmp_path,
            RECORDING_CHUNK_SIZE=str(CHUNK),
            RECORDING_SWEEP_SECONDS="3600",
        )
    )


async def appointment(pool: asyncpg.Pool, tenant: Tenant, patient: Account, *, days: int) -> UUID:
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO doctor_profiles (user_id, clinic_id, consultation_minutes, "
            "buffer_minutes, currency, services) "
            "VALUES ($1, $2, 30, 10, 'KES', '{video,in_person}') ON CONFLICT DO NOTHING",
            tenant[Role.DOCTOR].user_id,
            tenant.clinic_id,
        )
        found: UUID = await conn.fetchval(
            """
            INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at,
                                      ends_at, status)
            VALUES ($1, $2, $3, 'video', $4, $5, 'confirmed') RETURNING id
            """,
            tenant.clinic_id,
            tenant[Role.DOCTOR].user_id,
            patient.user_id,
            start,
            start + timedelta(minutes=30),
        )
    return found


def principal(account: Account) -> Principal:
    return Principal(account.user_id, account.clinic_id, account.role, account.user_id)


async def audit_count(pool: asyncpg.Pool, action: str, object_id: object) -> int:
    """Events of ``action`` on ``object_id``, chained or still in the intake (one
    snapshot: the sequencer moves rows in one transaction)."""
    found: int = await pool.fetchval(
        """
        SELECT count(*) FROM (
            SELECT action, object_id FROM audit_intake
            UNION ALL SELECT action, object_id FROM audit_log
        ) AS a WHERE action = $1 AND object_id = $2
        """,
        action,
        str(object_id),
    )
    return found


class Room:
    """A consultation of the tenant's doctor and patient."""

    def __init__(self, client: Client, tenant: Tenant, appointment_id: UUID) -> None:
        self.client = client
        self.tenant = tenant
        self.appointment_id = appointment_id

    @property
    def pool(self) -> asyncpg.Pool:
        return self.client.app[POOL]

    @property
    def service(self) -> RecordingService:
        service: RecordingService = self.client.app[RECORDINGS]
        return service

    async def consent(self) -> None:
        resp = await self.client.post(
            f"/api/v1/appointments/{self.appointment_id}/recording-consent",
            headers=self.tenant[Role.PATIENT].headers,
        )
        assert resp.status == 200, await resp.text()

    async def record(
        self, tmp_path: Path, media: bytes | None = None, *, content_type: str = "video/webm"
    ) -> tuple[UUID, bytes]:
        """Consent, start, and hand the SFU's finished plaintext file over."""
        await self.consent()
        doctor = principal(self.tenant[Role.DOCTOR])
        recording = await self.service.begin(doctor, self.appointment_id, "janus-rec-1")
        sfu_dir = tmp_path / "sfu"
        sfu_dir.mkdir(exist_ok=True)
        plain = sfu_dir / "rec.media"
        if media is None:
            media = make_webm(sfu_dir / "rec.webm")
            (sfu_dir / "rec.webm").rename(plain)
        else:
            plain.write_bytes(media)
        ready = await self.service.ingest(recording.id, plain, content_type)
        assert ready.state == "ready"
        assert not plain.exists(), "the plaintext file must be gone once sealed"
        return recording.id, media

    async def object_path(self, recording_id: UUID) -> Path:
        name = await self.pool.fetchval(
            "SELECT object_name FROM recordings WHERE id = $1", recording_id
        )
        settings = self.client.app[SETTINGS]
        path: Path = settings.recording.local_dir / name
        return path


@pytest.fixture
async def room(client: Client, app_pool: asyncpg.Pool, tenant: Tenant) -> Room:
    return Room(client, tenant, await appointment(app_pool, tenant, tenant[Role.PATIENT], days=1))


def media_url(recording_id: UUID) -> str:
    return f"/api/v1/recordings/{recording_id}/media"


# --- consent --------------------------------------------------------------------------


async def test_recording_cannot_start_before_the_patient_consents(room: Room) -> None:
    doctor = principal(room.tenant[Role.DOCTOR])
    with pytest.raises(ClientError) as refused:
        await room.service.begin(doctor, room.appointment_id, "janus-rec-1")
    assert refused.value.code == "recording_consent_required"
    assert (
        await room.pool.fetchval(
            "SELECT count(*) FROM recordings WHERE appointment_id = $1", room.appointment_id
        )
        == 0
    )
    await room.consent()
    assert await audit_count(room.pool, "recording.consent.give", room.appointment_id) == 1
    started = await room.service.begin(doctor, room.appointment_id, "janus-rec-1")
    assert started.state == "recording"
    again = await room.service.begin(doctor, room.appointment_id, "janus-rec-1")
    assert again.id == started.id  # idempotent on the SFU's recording id
    assert await audit_count(room.pool, "recording.start", started.id) == 1


async def test_a_withdrawn_consent_stops_new_recordings(room: Room) -> None:
    await room.consent()
    resp = await room.client.delete(
        f"/api/v1/appointments/{room.appointment_id}/recording-consent",
        headers=room.tenant[Role.PATIENT].headers,
    )
    assert resp.status == 204, await resp.text()
    with pytest.raises(ClientError) as refused:
        await room.service.begin(principal(room.tenant[Role.DOCTOR]), room.appointment_id, "r2")
    assert refused.value.code == "recording_consent_required"


async def test_only_the_consultations_patient_consents(room: Room) -> None:
    url = f"/api/v1/appointments/{room.appointment_id}/recording-consent"
    other = room.tenant.other_patient
    assert other is not None
    await assert_problem(await room.client.post(url, headers=other.headers), 404, "not_found")
    doctor = room.tenant[Role.DOCTOR]
    await assert_problem(await room.client.post(url, headers=doctor.headers), 403, "forbidden")
    state = await room.service.state(room.appointment_id)
    assert not state.consent


async def test_both_sides_see_the_recording_state(room: Room, tmp_path: Path) -> None:
    heard = []

    async def listener(state: Any) -> None:
        heard.append(state)

    room.service.on_change(listener)
    await room.consent()
    doctor = principal(room.tenant[Role.DOCTOR])
    recording = await room.service.begin(doctor, room.appointment_id, "janus-rec-9")
    url = f"/api/v1/appointments/{room.appointment_id}/recordings"
    for who in (Role.DOCTOR, Role.PATIENT):
        resp = await room.client.get(url, headers=room.tenant[who].headers)
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["consent"] is True and body["recording"] is True
        assert body["recording_id"] == str(recording.id)
    assert [(s.consent, s.recording) for s in heard] == [(True, False), (True, True)]
    await room.service.fail(recording.id, "the SFU lost the file")
    resp = await room.client.get(url, headers=room.tenant[Role.PATIENT].headers)
    body = await resp.json()
    assert body["recording"] is False and body["items"][0]["state"] == "failed"
    assert heard[-1].recording is False


# --- a recorded call, end to end -----------------------------------------------------------


async def test_the_sealed_file_holds_no_media_header(room: Room, tmp_path: Path) -> None:
    recording_id, media = await room.record(tmp_path)
    at_rest = (await room.object_path(recording_id)).read_bytes()
    assert len(at_rest) > len(media)
    for what, magic in MEDIA_MAGIC.items():
        assert magic not in at_rest, f"{what} found in the sealed file"
    # and no 16-byte run of the media either
    assert all(media[i : i + 16] not in at_rest for i in range(0, len(media) - 16, 997))
    leftovers = list((tmp_path / "sfu").iterdir())
    assert leftovers == []


async def test_the_doctor_plays_it_back_and_seeks_with_a_range(room: Room, tmp_path: Path) -> None:
    recording_id, media = await room.record(tmp_path)
    doctor = room.tenant[Role.DOCTOR]
    resp = await room.client.get(media_url(recording_id), headers=doctor.headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "video/webm"
    assert resp.headers["Accept-Ranges"] == "bytes"
    assert await resp.read() == media
    start = len(media) // 2 + 123  # the middle, not on a chunk boundary
    end = start + 3 * CHUNK + 17
    resp = await room.client.get(
        media_url(recording_id), headers={**doctor.headers, "Range": f"bytes={start}-{end - 1}"}
    )
    assert resp.status == 206
    assert resp.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(media)}"
    assert await resp.read() == media[start:end]
    resp = await room.client.get(
        media_url(recording_id), headers={**doctor.headers, "Range": "bytes=-100"}
    )
    assert resp.status == 206 and await resp.read() == media[-100:]
    # every playback is audited, with its range
    assert await audit_count(room.pool, "recording.play", recording_id) == 3


async def test_a_range_past_the_end_is_416(room: Room, tmp_path: Path) -> None:
    recording_id, media = await room.record(tmp_path)
    resp = await room.client.get(
        media_url(recording_id),
        headers={**room.tenant[Role.DOCTOR].headers, "Range": f"bytes={len(media)}-"},
    )
    await assert_problem(resp, 416, "range_not_satisfiable")
    assert resp.headers["Content-Range"] == f"bytes */{len(media)}"


async def test_an_audio_recording_in_ogg(room: Room, tmp_path: Path) -> None:
    ogg = make_ogg(tmp_path / "a.ogg")
    recording_id, media = await room.record(tmp_path, ogg, content_type="audio/ogg")
    assert b"OggS" not in (await room.object_path(recording_id)).read_bytes()
    resp = await room.client.get(media_url(recording_id), headers=room.tenant[Role.PATIENT].headers)
    assert resp.status == 200 and resp.headers["Content-Type"] == "audio/ogg"
    assert await resp.read() == media


async def test_who_may_play_it(
    client: Client, app_pool: asyncpg.Pool, room: Room, other_tenant: Tenant, tmp_path: Path
) -> None:
    recording_id, media = await room.record(tmp_path)
    tenant = room.tenant
    assert tenant.other_patient is not None
    # The other patient has a consultation of their own with the same doctor.
    await appointment(app_pool, tenant, tenant.other_patient, days=2)
    url = media_url(recording_id)
    await assert_problem(
        await client.get(url, headers=tenant.other_patient.headers), 404, "not_found"
    )
    await assert_problem(
        await client.get(url, headers=other_tenant[Role.PATIENT].headers), 404, "not_found"
    )
    await assert_problem(
        await client.get(url, headers=other_tenant[Role.DOCTOR].headers), 404, "not_found"
    )
    for role in (Role.NURSE, Role.RECEPTIONIST, Role.ADMIN):
        await assert_problem(await client.get(url, headers=tenant[role].headers), 403, "forbidden")
    resp = await client.get(url, headers=tenant[Role.PATIENT].headers)  # right of access
    assert resp.status == 200 and await resp.read() == media
    resp = await client.get(url)
    assert resp.status == 401


async def test_a_tampered_chunk_is_refused(room: Room, tmp_path: Path) -> None:
    recording_id, media = await room.record(tmp_path)
    path = await room.object_path(recording_id)
    blob = bytearray(path.read_bytes())
    chunk = 5
    offset = HEADER_BYTES + chunk * (CHUNK + TAG_BYTES) + 100
    blob[offset] ^= 0x40
    path.write_bytes(bytes(blob))
    doctor = room.tenant[Role.DOCTOR]
    touching = f"bytes={chunk * CHUNK}-{chunk * CHUNK + 10}"
    resp = await room.client.get(
        media_url(recording_id), headers={**doctor.headers, "Range": touching}
    )
    await assert_problem(resp, 409, "recording_damaged")
    # a range that does not touch the damaged chunk still plays
    resp = await room.client.get(
        media_url(recording_id), headers={**doctor.headers, "Range": "bytes=0-99"}
    )
    assert resp.status == 206 and await resp.read() == media[:100]


async def test_a_truncated_file_is_refused_whatever_the_range(room: Room, tmp_path: Path) -> None:
    recording_id, _ = await room.record(tmp_path)
    path = await room.object_path(recording_id)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) - (len(blob) - HEADER_BYTES) % (CHUNK + TAG_BYTES)])
    doctor = room.tenant[Role.DOCTOR]
    resp = await room.client.get(
        media_url(recording_id), headers={**doctor.headers, "Range": "bytes=0-9"}
    )
    await assert_problem(resp, 409, "recording_damaged")


async def test_ingest_again_only_removes_the_plaintext(room: Room, tmp_path: Path) -> None:
    recording_id, media = await room.record(tmp_path)
    again = tmp_path / "again.webm"
    again.write_bytes(b"late duplicate from the SFU")
    ready = await room.service.ingest(recording_id, again, "video/webm")
    assert ready.state == "ready" and ready.size == len(media)
    assert not again.exists()
    assert await audit_count(room.pool, "recording.sealed", recording_id) == 1


def staged(store_dir: Path) -> list[Path]:
    """What a store's temporary folder still holds."""
    return list((store_dir / ".tmp").iterdir())


async def test_a_missing_file_leaves_the_recording_ready_to_seal(
    room: Room, tmp_path: Path
) -> None:
    await room.consent()
    doctor = principal(room.tenant[Role.DOCTOR])
    recording = await room.service.begin(doctor, room.appointment_id, "janus-rec-2")
    with pytest.raises(ClientError) as refused:
        await room.service.ingest(recording.id, tmp_path / "not-there.webm", "video/webm")
    assert refused.value.status == 404
    assert (await room.service.state(room.appointment_id)).recording
    plain = tmp_path / "late.webm"
    media = make_webm(plain, seconds=0.5)
    ready = await room.service.ingest(recording.id, plain, "video/webm")
    assert ready.state == "ready" and ready.size == len(media)
    assert staged(room.client.app[SETTINGS].recording.local_dir) == []


async def test_the_sfus_events_seal_and_fail_recordings(room: Room, tmp_path: Path) -> None:
    intake = RecordingIntake(room.service)
    await room.consent()
    doctor = principal(room.tenant[Role.DOCTOR])
    recording = await room.service.begin(doctor, room.appointment_id, "egress-1")
    plain = tmp_path / "egress-1.webm"
    media = make_webm(plain, seconds=0.5)

    def event(kind: SfuEventKind, backend_id: str, path: Path | None = None) -> SfuEvent:
        return SfuEvent(
            event_id=secrets.token_hex(8),
            kind=kind,
            consultation_id=room.appointment_id,
            at=datetime.now(UTC),
            recording_id=backend_id,
            file_path=None if path is None else str(path),
        )

    done = await intake.handle(event(SfuEventKind.RECORDING_FINISHED, "egress-1", plain))
    assert done is not None and done.id == recording.id and done.state == "ready"
    assert done.content_type == "video/webm" and done.size == len(media) and not plain.exists()
    # twice: nothing more happens; a failure after it does not undo it
    again = await intake.handle(event(SfuEventKind.RECORDING_FINISHED, "egress-1", plain))
    assert again is not None and again.state == "ready"
    assert await intake.handle(event(SfuEventKind.RECORDING_FAILED, "egress-1")) is None
    other = await room.service.begin(doctor, room.appointment_id, "egress-2")
    failed = await intake.handle(event(SfuEventKind.RECORDING_FAILED, "egress-2"))
    assert failed is not None and failed.id == other.id and failed.state == "failed"
    # a file for a recording nobody started (no consent checked) is removed unsealed
    stray = tmp_path / "stray.webm"
    stray.write_bytes(b"\x1a\x45\xdf\xa3 plaintext")
    assert await intake.handle(event(SfuEventKind.RECORDING_FINISHED, "nobody", stray)) is None
    assert not stray.exists()


# --- retention --------------------------------------------------------------------------


async def test_retention_expiry_makes_it_unrecoverable(room: Room, tmp_path: Path) -> None:
    recording_id, media = await room.record(tmp_path)
    days = await room.pool.fetchval(
        "SELECT recording_retention_days FROM clinics WHERE id = $1", room.tenant.clinic_id
    )
    row = await room.pool.fetchrow(
        "SELECT finished_at, expires_at FROM recordings WHERE id = $1", recording_id
    )
    assert row["expires_at"] - row["finished_at"] == timedelta(days=days)
    path = await room.object_path(recording_id)
    # What a disk image or a snapshot of the file's blocks would keep: another link to
    # the same inode, which the deletion does not remove.
    remnant = tmp_path / "remnant"
    os.link(path, remnant)
    await room.pool.execute(
        "UPDATE recordings SET expires_at = now() - interval '1 second' WHERE id = $1", recording_id
    )
    assert await room.service.sweep_expired() == 1
    assert await room.service.sweep_expired() == 0
    row = await room.pool.fetchrow(
        "SELECT state, wrapped_key, key_destroyed_at FROM recordings WHERE id = $1", recording_id
    )
    assert row["state"] == "expired" and row["wrapped_key"] is None and row["key_destroyed_at"]
    assert not path.exists()
    assert await audit_count(room.pool, "recording.expire", recording_id) == 1
    resp = await room.client.get(media_url(recording_id), headers=room.tenant[Role.DOCTOR].headers)
    await assert_problem(resp, 409, "recording_not_ready")
    # Even with every master key, the remnant cannot be opened: its wrapped key is zeros.
    keys = room.service.keys
    blob = remnant.read_bytes()
    with pytest.raises(KeyUnavailable):
        b"".join(open_range(file_reader(io.BytesIO(blob)), len(blob), keys.get))


async def test_the_servers_own_sweeper_expires_recordings(
    start_server: StartServer, tenant: Tenant, tmp_path: Path
) -> None:
    client = await start_server(RECORDING_CHUNK_SIZE=str(CHUNK), RECORDING_SWEEP_SECONDS="0.05")
    room = Room(
        client, tenant, await appointment(client.app[POOL], tenant, tenant[Role.PATIENT], days=3)
    )
    recording_id, _ = await room.record(tmp_path)
    await room.pool.execute(
        "UPDATE recordings SET expires_at = now() - interval '1 second' WHERE id = $1", recording_id
    )
    for _ in range(400):  # no timing is asserted: only that it happens
        if (
            await room.pool.fetchval("SELECT state FROM recordings WHERE id = $1", recording_id)
            == "expired"
        ):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the sweeper did not expire the recording")
    assert not (await room.object_path(recording_id)).exists()


async def test_expiry_follows_the_clinics_retention(room: Room, tmp_path: Path) -> None:
    url = f"/api/v1/clinics/{room.tenant.clinic_id}/recording-retention"
    admin = room.tenant[Role.ADMIN].headers
    for bad in (0, 3651, "7", None):
        await assert_problem(
            await room.client.put(url, json={"days": bad}, headers=admin), 400, "validation_failed"
        )
    resp = await room.client.put(url, json={"days": 7}, headers=admin)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["days"] == 7
    assert await audit_count(room.pool, "recording.retention.set", room.tenant.clinic_id) == 1
    recording_id, _ = await room.record(tmp_path)
    row = await room.pool.fetchrow(
        "SELECT finished_at, expires_at FROM recordings WHERE id = $1", recording_id
    )
    assert row["expires_at"] - row["finished_at"] == timedelta(days=7)
    assert await room.service.sweep_expired() == 0
