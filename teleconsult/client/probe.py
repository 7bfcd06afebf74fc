"""The client side of a pre-call network test (aiortc), for apps, tools and tests.

The probe offers a data channel (unordered, no retransmissions, so a lost ping
stays lost) and, unless told otherwise, a silent audio track and a small noisy
video track. Once the server's peer answers, it sends timestamped pings at a
fixed rate and times their echoes, and it counts the echoed media it gets back.
:func:`run_probe` does all of it and returns :class:`ClientFigures`, the body of
``POST /api/v1/network-tests/{id}/result``.

Signalling is the caller's: give :func:`run_probe` a function that sends the
offer's SDP to the server and returns the answer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import os
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from aiortc import (
    AudioStreamTrack,
    MediaStreamTrack,
    RTCInboundRtpStreamStats,
    RTCPeerConnection,
    RTCSessionDescription,
    RTCTransportStats,
)
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from teleconsult.rtc.figures import ClientFigures, ping_figures, rate_bps
from teleconsult.rtc.network_test import IceServer, rtc_configuration
from teleconsult.rtc.sdp import clock_rates

# Sends an offer's SDP to the server; returns the answer's.
Signaller = Callable[[str], Awaitable[str]]
CHANNEL_LABEL = "network-test"
_PING = struct.Struct("!4sI")
_MAGIC = b"tcnt"
_VIDEO_CLOCK = 90_000


class NoiseVideoTrack(MediaStreamTrack):
    """A small video of noise: hard to compress, so the echo carries real bitrate."""

    kind = "video"

    def __init__(self, width: int = 160, height: int = 120, fps: int = 15) -> None:
        super().__init__()
        self._width, self._height, self._fps = width, height, fps
        self._start: float | None = None
        self._count = 0
        template = VideoFrame(width=width, height=height, format="yuv420p")
        sizes = [plane.buffer_size for plane in template.planes]
        self._lumas = [os.urandom(sizes[0]) for _ in range(8)]
        self._chroma = [bytes([128]) * size for size in sizes[1:]]

    async def recv(self) -> VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        else:
            await asyncio.sleep(max(0.0, self._start + self._count / self._fps - now))
        frame = VideoFrame(width=self._width, height=self._height, format="yuv420p")
        frame.planes[0].update(self._lumas[self._count % len(self._lumas)])
        for plane, chroma in zip(frame.planes[1:], self._chroma, strict=True):
            plane.update(chroma)
        frame.pts = self._count * _VIDEO_CLOCK // self._fps
        frame.time_base = fractions.Fraction(1, _VIDEO_CLOCK)
        self._count += 1
        return frame


@dataclass(frozen=True)
class _Counters:
    at: float
    bytes_received: int
    packets_received: int
    packets_lost: int
    jitter_s: float | None


class NetworkProbe:
    """One probe connection. Use ``async with``: leaving closes the connection.

    Not safe to drive from several tasks at once.
    """

    def __init__(
        self, *, ice_servers: Sequence[IceServer] = (), media: bool = True, ping_bytes: int = 64
    ) -> None:
        if ping_bytes < _PING.size:
            raise ValueError(f"ping_bytes must be at least {_PING.size}")
        self._pc = RTCPeerConnection(rtc_configuration(ice_servers))
        self._channel = self._pc.createDataChannel(CHANNEL_LABEL, ordered=False, maxRetransmits=0)
        self._padding = bytes(ping_bytes - _PING.size)
        self._open = asyncio.Event()
        self._ended = asyncio.Event()
        self._echoed = asyncio.Event()
        self._sent: dict[int, float] = {}
        self._rtts: dict[int, float] = {}
        self._frames: Counter[str] = Counter()
        self._consumers: set[asyncio.Task[None]] = set()
        self._clock_rates: dict[str, int] = {}
        self._channel.on("open", self._open.set)
        self._channel.on("message", self._on_message)
        self._pc.on("track", self._on_track)
        self._pc.on("connectionstatechange", self._on_state)
        if media:
            self._pc.addTrack(AudioStreamTrack())
            self._pc.addTrack(NoiseVideoTrack())

    async def __aenter__(self) -> NetworkProbe:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def connection_state(self) -> str:
        return str(self._pc.connectionState)

    async def offer(self) -> str:
        """The offer's SDP, once every local candidate is in it."""
        await self._pc.setLocalDescription(await self._pc.createOffer())
        return str(self._pc.localDescription.sdp)

    async def accept(self, answer_sdp: str) -> None:
        await self._pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        self._clock_rates = clock_rates(answer_sdp)

    async def wait_open(self) -> None:
        """Until the data channel is open (bound it with a timeout)."""
        await self._open.wait()

    async def wait_ended(self) -> None:
        """Until the connection has failed or closed, e.g. the server closed its peer."""
        await self._ended.wait()

    async def measure(
        self, *, seconds: float = 3.0, rate: float = 20.0, grace: float = 1.0
    ) -> ClientFigures:
        """Ping ``rate`` times a second for ``seconds``, wait up to ``grace`` for the
        last echoes, and return the figures of that window."""
        if seconds <= 0 or rate <= 0:
            raise ValueError("seconds and rate must be positive")
        before = await self._counters()
        first = len(self._sent)
        count = max(1, round(seconds * rate))
        for index in range(count):
            await asyncio.sleep(max(0.0, before.at + index / rate - time.monotonic()))
            if self._channel.readyState != "open":
                break  # the server ended the test: what was not sent is not lost
            seq = first + index
            self._sent[seq] = time.monotonic()
            self._channel.send(_PING.pack(_MAGIC, seq) + self._padding)
        window = [seq for seq in self._sent if seq >= first]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while any(seq not in self._rtts for seq in window):
                    self._echoed.clear()
                    await self._echoed.wait()
        after = await self._counters()
        elapsed = after.at - before.at
        pings = ping_figures(len(window), [self._rtts[s] for s in window if s in self._rtts])
        return ClientFigures(
            duration_s=round(elapsed, 3),
            pings_sent=pings.sent,
            pings_echoed=pings.echoed,
            loss=pings.loss,
            rtt_ms_min=pings.rtt_ms_min,
            rtt_ms_p50=pings.rtt_ms_p50,
            rtt_ms_p95=pings.rtt_ms_p95,
            rtt_ms_max=pings.rtt_ms_max,
            jitter_ms=pings.jitter_ms,
            bitrate_bps=round(rate_bps(after.bytes_received - before.bytes_received, elapsed), 1),
            media_packets_received=max(0, after.packets_received - before.packets_received),
            media_packets_lost=max(0, after.packets_lost - before.packets_lost),
            media_jitter_ms=None if after.jitter_s is None else round(after.jitter_s * 1000, 3),
            audio_frames=self._frames["audio"],
            video_frames=self._frames["video"],
        )

    async def close(self) -> None:
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        await self._pc.close()

    def _on_message(self, message: str | bytes) -> None:
        if not isinstance(message, bytes) or len(message) < _PING.size:
            return
        magic, seq = _PING.unpack_from(message)
        sent = self._sent.get(seq)
        if magic == _MAGIC and sent is not None and seq not in self._rtts:
            self._rtts[seq] = time.monotonic() - sent
            self._echoed.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        task = asyncio.create_task(self._consume(track))
        self._consumers.add(task)
        task.add_done_callback(self._consumers.discard)

    async def _consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                self._frames[track.kind] += 1

    def _on_state(self) -> None:
        if self._pc.connectionState in ("failed", "closed"):
            self._ended.set()

    async def _counters(self) -> _Counters:
        received = lost = bytes_in = 0
        jitters: list[float] = []
        for stats in (await self._pc.getStats()).values():
            if isinstance(stats, RTCInboundRtpStreamStats):
                received += stats.packetsReceived
                lost += stats.packetsLost
                rate = self._clock_rates.get(stats.kind, 0)
                if rate:
                    jitters.append(stats.jitter / rate)
            elif isinstance(stats, RTCTransportStats):
                bytes_in += stats.bytesReceived
        return _Counters(time.monotonic(), bytes_in, received, lost, max(jitters, default=None))


async def run_probe(
    signal: Signaller,
    *,
    seconds: float = 3.0,
    rate: float = 20.0,
    ice_servers: Sequence[IceServer] = (),
    media: bool = True,
    connect_timeout: float = 10.0,
) -> ClientFigures:
    """Offer, let ``signal`` carry the offer and bring back the answer, connect,
    measure, close. Raises TimeoutError when the data channel does not open in
    ``connect_timeout`` seconds."""
    async with NetworkProbe(ice_servers=ice_servers, media=media) as probe:
        await probe.accept(await signal(await probe.offer()))
        async with asyncio.timeout(connect_timeout):
            await probe.wait_open()
        return await probe.measure(seconds=seconds, rate=rate)
