"""Real small media files for recording tests, made with PyAV (installed with aiortc)."""

from __future__ import annotations

import datetime as dt
import math
import random
import struct
from fractions import Fraction
from pathlib import Path
from uuid import UUID

import asyncpg
import av

from teleconsult.audit import AuditTrail
from teleconsult.core.identity import Principal, Role
from teleconsult.recording.keys import KeyRing
from teleconsult.recording.seal import MasterKey
from teleconsult.recording.service import RecordingService
from teleconsult.recording.storage import LocalBlobStore
from tests.world import Account

# Container magic numbers that must never appear in a sealed object.
MEDIA_MAGIC = {
    "webm/matroska EBML": b"\x1a\x45\xdf\xa3",
    "webm doctype": b"webm",
    "ogg": b"OggS",
    "mp4 ftyp": b"ftyp",
    "opus head": b"OpusHead",
}


def make_webm(path: Path, *, seconds: float = 2.0, size: tuple[int, int] = (320, 240)) -> bytes:
    """A VP8 WebM of moving noise (so it does not compress to nothing); its bytes."""
    return _noise_video(path, "webm", "libvpx", seconds, size)


def make_mp4(path: Path, *, seconds: float = 1.0, size: tuple[int, int] = (320, 240)) -> bytes:
    """An H.264 MP4 of moving noise (what LiveKit's room-composite egress writes); its bytes."""
    return _noise_video(path, "mp4", "libx264", seconds, size)


def _noise_video(
    path: Path, container_format: str, codec: str, seconds: float, size: tuple[int, int]
) -> bytes:
    rng = random.Random(7)
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=15)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = 600_000
        for index in range(int(seconds * 15)):
            frame = av.VideoFrame(size[0], size[1], "rgb24")
            frame.planes[0].update(rng.randbytes(frame.planes[0].buffer_size))
            frame.pts = index
            frame.time_base = Fraction(1, 15)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def make_ogg(path: Path, *, seconds: float = 1.0) -> bytes:
    """An Opus-in-Ogg tone (what an audio-only recording looks like); its bytes."""
    rate = 48_000
    with av.open(str(path), mode="w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=rate)
        stream.layout = "mono"
        samples = int(seconds * rate)
        for start in range(0, samples - 959, 960):
            block = [math.sin(2 * math.pi * 440 * (start + i) / rate) * 0.3 for i in range(960)]
            frame = av.AudioFrame(format="flt", layout="mono", samples=960)
            frame.planes[0].update(struct.pack("<960f", *block))
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


class Lab:
    """Recordings made and played straight through a RecordingService (no HTTP): a
    doctor and a patient, blobs under ``root/recordings``."""

    def __init__(self, pool: asyncpg.Pool, root: Path, doctor: Account, patient: Account) -> None:
        self.pool = pool
        self.root = root
        self.doctor = doctor
        self.patient = patient
        self.blobs = LocalBlobStore(root / "recordings")

    def service(self, *keys: MasterKey) -> RecordingService:
        return RecordingService(
            pool=self.pool,
            audit=AuditTrail(self.pool),
            blobs=self.blobs,
            keys=KeyRing(keys),
            chunk_size=1024,
        )

    async def recording(self, service: RecordingService, media: bytes, n: int) -> UUID:
        start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=n + 1)
        appointment_id: UUID = await self.pool.fetchval(
            """
            INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at,
                                      ends_at, status)
            VALUES ($1, $2, $3, 'video', $4, $5, 'confirmed') RETURNING id
            """,
            self.doctor.clinic_id,
            self.doctor.user_id,
            self.patient.user_id,
            start,
            start + dt.timedelta(minutes=30),
        )
        patient = Principal(
            self.patient.user_id, self.patient.clinic_id, Role.PATIENT, self.patient.user_id
        )
        doctor = Principal(
            self.doctor.user_id, self.doctor.clinic_id, Role.DOCTOR, self.doctor.user_id
        )
        await service.give_consent(patient, appointment_id)
        started = await service.begin(doctor, appointment_id, f"rec-{n}")
        plain = self.root / f"plain-{n}"
        plain.write_bytes(media)
        await service.ingest(started.id, plain, "video/webm")
        return started.id

    async def play(self, service: RecordingService, recording_id: UUID) -> bytes:
        doctor = Principal(
            self.doctor.user_id, self.doctor.clinic_id, Role.DOCTOR, self.doctor.user_id
        )
        playback = await service.play(doctor, recording_id, None)
        return b"".join([part async for part in playback.chunks])
