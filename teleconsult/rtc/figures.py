"""The figures of a network test and the arithmetic behind them (pure).

Both sides of a test use these: the probe (client) for its data-channel pings and
the echoed media it receives, the server's peer for what RTCP and its transport
tell it. Times are reported in milliseconds, rates in bits per second, loss as a
fraction between 0 and 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must lie between 0 and 1")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def rfc3550_jitter(samples: Iterable[float]) -> float:
    """Interarrival jitter as RFC 3550 (6.4.1) smooths it: J += (|D| - J) / 16.

    ``samples`` are transit times (here round trips) in the order they were sent;
    D is the difference between consecutive ones. Same unit in and out.
    """
    jitter = 0.0
    previous: float | None = None
    for sample in samples:
        if previous is not None:
            jitter += (abs(sample - previous) - jitter) / 16
        previous = sample
    return jitter


def rate_bps(byte_count: int, seconds: float) -> float:
    """Bits per second over an interval; 0 for an empty interval."""
    return byte_count * 8 / seconds if seconds > 0 else 0.0


def fraction(part: int, whole: int) -> float | None:
    return part / whole if whole > 0 else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


@dataclass(frozen=True)
class PingFigures:
    """Round trips of the data-channel pings: those echoed, in the order sent."""

    sent: int
    echoed: int
    loss: float
    rtt_ms_min: float | None
    rtt_ms_p50: float | None
    rtt_ms_p95: float | None
    rtt_ms_max: float | None
    jitter_ms: float | None


def ping_figures(sent: int, rtts: Sequence[float]) -> PingFigures:
    """Figures for ``sent`` pings of which ``rtts`` (seconds, in send order) came back."""
    if len(rtts) > sent:
        raise ValueError("more echoes than pings")
    loss = 1.0 - len(rtts) / sent if sent else 0.0
    if not rtts:
        return PingFigures(sent, 0, round(loss, 4), None, None, None, None, None)
    return PingFigures(
        sent=sent,
        echoed=len(rtts),
        loss=round(loss, 4),
        rtt_ms_min=_ms(min(rtts)),
        rtt_ms_p50=_ms(percentile(rtts, 0.5)),
        rtt_ms_p95=_ms(percentile(rtts, 0.95)),
        rtt_ms_max=_ms(max(rtts)),
        jitter_ms=_ms(rfc3550_jitter(rtts)),
    )


@dataclass(frozen=True)
class ClientFigures:
    """What the probe measured; the body of ``POST /network-tests/{id}/result``.

    ``bitrate_bps`` counts every byte the client's transport received during the
    measurement: the echoed media, and the (small) data-channel echoes.
    """

    duration_s: float
    pings_sent: int
    pings_echoed: int
    loss: float
    rtt_ms_min: float | None
    rtt_ms_p50: float | None
    rtt_ms_p95: float | None
    rtt_ms_max: float | None
    jitter_ms: float | None
    bitrate_bps: float
    media_packets_received: int
    media_packets_lost: int
    media_jitter_ms: float | None
    audio_frames: int
    video_frames: int

    def as_report(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ServerFigures:
    """What the server's peer measured, from its side of the connection.

    ``rtt_ms`` is the median of the RTCP round-trip estimates sampled while the
    test ran (``rtt_ms_max`` the largest); ``jitter_ms`` and ``loss`` describe
    the media the client sent (RTP, per the receiver's reports), ``remote_loss``
    what the client's receiver reported of the echo; the bitrates count every
    byte of the transport over the connected time.
    """

    connected: bool
    duration_s: float
    rtt_ms: float | None
    rtt_ms_max: float | None
    jitter_ms: float | None
    packets_received: int
    packets_lost: int
    loss: float | None
    remote_loss: float | None
    bitrate_in_bps: float
    bitrate_out_bps: float
    messages_echoed: int
    media: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ServerSamples:
    """What the server's peer gathers while a test runs (not safe across threads)."""

    rtts: list[float] = field(default_factory=list)
    messages_echoed: int = 0


@dataclass(frozen=True)
class RtpCounts:
    """Inbound RTP of one media kind: packets, losses, jitter in timestamp units."""

    kind: str
    packets_received: int
    packets_lost: int
    jitter: int


def server_figures(
    *,
    connected_seconds: float | None,
    samples: ServerSamples,
    inbound: Sequence[RtpCounts],
    remote_fraction_lost: Sequence[float],
    bytes_in: int,
    bytes_out: int,
    clock_rates: Mapping[str, int],
) -> ServerFigures:
    """Combine the samples and the final counters into the stored figures.

    ``remote_fraction_lost`` are RTCP ``fraction lost`` values (0..255, an
    8-bit fixed-point fraction); the worst is kept.
    """
    seconds = connected_seconds or 0.0
    received = sum(c.packets_received for c in inbound)
    lost = max(0, sum(c.packets_lost for c in inbound))  # duplicates can make it negative
    jitters = [c.jitter / clock_rates[c.kind] for c in inbound if clock_rates.get(c.kind, 0) > 0]
    loss = fraction(lost, received + lost)
    return ServerFigures(
        connected=connected_seconds is not None,
        duration_s=round(seconds, 3),
        rtt_ms=_ms(percentile(samples.rtts, 0.5)) if samples.rtts else None,
        rtt_ms_max=_ms(max(samples.rtts)) if samples.rtts else None,
        jitter_ms=_ms(max(jitters)) if jitters else None,
        packets_received=received,
        packets_lost=lost,
        loss=None if loss is None else round(loss, 4),
        remote_loss=round(max(remote_fraction_lost) / 256, 4) if remote_fraction_lost else None,
        bitrate_in_bps=round(rate_bps(bytes_in, seconds), 1),
        bitrate_out_bps=round(rate_bps(bytes_out, seconds), 1),
        messages_echoed=samples.messages_echoed,
        media=sorted({c.kind for c in inbound}),
    )
