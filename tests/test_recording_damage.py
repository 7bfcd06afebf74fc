"""A damaged or tampered recording on disk never answers 500 (issue 13, loose end 1).

Real sealed files on disk, changed byte-wise, played through a real server: damage
found before the answer's status goes out (the header, the final chunk, the first
batch of chunks the range touches) is a 409 ``recording_damaged`` problem; damage
found later cuts the connection, so the body never ends cleanly. Either way one
``recording.damaged`` audit row and one ERROR line without a traceback."""

from __future__ import annotations

import logging
from pathlib import Path
from uuid import UUID

import aiohttp
import pytest

from teleconsult.core.identity import Role
from teleconsult.recording.playback import PLAYBACK_BATCH_CHUNKS
from teleconsult.recording.seal import FIXED_BYTES, HEADER_BYTES, TAG_BYTES
from tests import test_recording_api
from tests.test_recording_api import CHUNK, Room, audit_count, media_url
from tests.world import assert_problem

# The recording API tests' fixtures: small chunks, a consultation of the tenant.
settings = test_recording_api.settings
room = test_recording_api.room

DAMAGED = "recording_damaged"


async def tamper(room: Room, recording_id: UUID, offset: int) -> int:
    """Flip one bit of the sealed object at ``offset`` (negative: from the end); how
    many chunks it has."""
    path = await room.object_path(recording_id)
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x40
    path.write_bytes(bytes(blob))
    return -(-(len(blob) - HEADER_BYTES) // (CHUNK + TAG_BYTES))


def chunk_offset(index: int) -> int:
    """A byte inside chunk ``index``'s ciphertext."""
    return HEADER_BYTES + index * (CHUNK + TAG_BYTES) + 100


def damage_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The ERROR lines logged; each must come without a traceback."""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert all(r.exc_info is None and r.exc_text is None for r in errors), [
        r.getMessage() for r in errors
    ]
    return errors


async def refused(room: Room, recording_id: UUID, byte_range: str | None) -> None:
    headers = dict(room.tenant[Role.DOCTOR].headers)
    if byte_range is not None:
        headers["Range"] = byte_range
    resp = await room.client.get(media_url(recording_id), headers=headers)
    body = await assert_problem(resp, 409, DAMAGED)
    assert "Content-Range" not in resp.headers
    assert "chunk" not in body["detail"]  # what failed is for the log, not the client


async def still_ready(room: Room, recording_id: UUID) -> None:
    state = await room.pool.fetchval("SELECT state FROM recordings WHERE id = $1", recording_id)
    assert state == "ready"


async def test_a_changed_header_answers_409_audited_and_logged_once(
    room: Room, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recording_id, _ = await room.record(tmp_path)
    await tamper(room, recording_id, FIXED_BYTES - 3)  # the nonce prefix: every chunk's AD
    caplog.clear()
    caplog.set_level(logging.INFO)
    await refused(room, recording_id, None)
    await refused(room, recording_id, "bytes=100-199")
    assert await audit_count(room.pool, "recording.damaged", recording_id) == 2
    lines = damage_lines(caplog)
    assert len(lines) == 2 and all(str(recording_id) in r.getMessage() for r in lines)
    await still_ready(room, recording_id)


async def test_a_changed_first_chunk_answers_409(
    room: Room, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recording_id, media = await room.record(tmp_path)
    chunks = await tamper(room, recording_id, chunk_offset(0))
    caplog.clear()
    await refused(room, recording_id, None)
    await refused(room, recording_id, "bytes=0-9")
    assert len(damage_lines(caplog)) == 2
    # A range whose chunks are whole still plays.
    far = (chunks - 2) * CHUNK
    resp = await room.client.get(
        media_url(recording_id),
        headers={**room.tenant[Role.DOCTOR].headers, "Range": f"bytes={far}-{far + 99}"},
    )
    assert resp.status == 206 and await resp.read() == media[far : far + 100]
    assert await audit_count(room.pool, "recording.damaged", recording_id) == 2


async def test_a_changed_middle_chunk_answers_409_to_a_range_that_starts_there(
    room: Room, tmp_path: Path
) -> None:
    recording_id, media = await room.record(tmp_path)
    middle = PLAYBACK_BATCH_CHUNKS + 3
    chunks = await tamper(room, recording_id, chunk_offset(middle))
    assert chunks > middle + 2, "the test media is too short for a middle chunk"
    await refused(room, recording_id, f"bytes={middle * CHUNK + 10}-{middle * CHUNK + 20}")
    await refused(room, recording_id, f"bytes={middle * CHUNK}-")
    resp = await room.client.get(
        media_url(recording_id), headers={**room.tenant[Role.DOCTOR].headers, "Range": "bytes=0-99"}
    )
    assert resp.status == 206 and await resp.read() == media[:100]
    assert await audit_count(room.pool, "recording.damaged", recording_id) == 2
    await still_ready(room, recording_id)


async def test_a_changed_last_chunk_answers_409_whatever_the_range(
    room: Room, tmp_path: Path
) -> None:
    recording_id, _ = await room.record(tmp_path)
    await tamper(room, recording_id, -5)
    await refused(room, recording_id, None)
    await refused(room, recording_id, "bytes=0-9")
    await refused(room, recording_id, "bytes=-10")
    assert await audit_count(room.pool, "recording.damaged", recording_id) == 3


async def test_damage_found_mid_stream_cuts_the_connection_and_is_audited(
    room: Room, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recording_id, media = await room.record(tmp_path)
    # Past the first batch, which is checked before the status goes out.
    middle = PLAYBACK_BATCH_CHUNKS + 3
    await tamper(room, recording_id, chunk_offset(middle))
    caplog.clear()
    resp = await room.client.get(media_url(recording_id), headers=room.tenant[Role.DOCTOR].headers)
    assert resp.status == 200
    assert resp.content_length == len(media)
    with pytest.raises(aiohttp.ClientError):
        await resp.read()  # never a clean end of a short body
    lines = damage_lines(caplog)
    assert len(lines) == 1 and "mid stream" in lines[0].getMessage()
    detail = await room.pool.fetchval(
        """
        SELECT detail->>'stage' FROM (
            SELECT action, object_id, detail FROM audit_intake
            UNION ALL SELECT action, object_id, detail FROM audit_log
        ) AS a WHERE action = 'recording.damaged' AND object_id = $1
        """,
        str(recording_id),
    )
    assert detail == "mid_stream"
    # The server is still fine: the undamaged start plays.
    resp = await room.client.get(
        media_url(recording_id), headers={**room.tenant[Role.DOCTOR].headers, "Range": "bytes=0-99"}
    )
    assert resp.status == 206 and await resp.read() == media[:100]


async def test_a_playback_ticket_on_a_damaged_recording_answers_409(
    room: Room, tmp_path: Path
) -> None:
    recording_id, _ = await room.record(tmp_path)
    resp = await room.client.post(
        f"/api/v1/recordings/{recording_id}/playback-ticket",
        headers=room.tenant[Role.PATIENT].headers,
    )
    assert resp.status == 200, await resp.text()
    url = (await resp.json())["url"]
    await tamper(room, recording_id, chunk_offset(0))
    await assert_problem(await room.client.get(url), 409, DAMAGED)
    assert await audit_count(room.pool, "recording.damaged", recording_id) == 1


async def test_a_ready_recording_whose_object_is_gone_answers_409(
    room: Room, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recording_id, _ = await room.record(tmp_path)
    (await room.object_path(recording_id)).unlink()
    caplog.clear()
    await refused(room, recording_id, None)
    assert len(damage_lines(caplog)) == 1
    assert await audit_count(room.pool, "recording.damaged", recording_id) == 1
