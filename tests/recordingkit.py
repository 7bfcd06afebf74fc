"""Real small media files for recording tests, made with PyAV (installed with aiortc)."""

from __future__ import annotations

import math
import random
import struct
from fractions import Fraction
from pathlib import Path

import av

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
