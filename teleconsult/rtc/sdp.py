"""Checks on a client's SDP offer before any peer connection exists (pure).

The offer comes from the network, so it is parsed here first, with aiortc's own
parser, and refused with :class:`SdpError` (400 ``invalid_sdp``) unless it is
something the echo peer can answer: one data channel, at most one audio and one
video section, each sending and receiving, with ICE credentials and a DTLS
fingerprint. Nothing here opens a socket; a refused offer costs no peer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from aiortc import sdp as aiortc_sdp

from teleconsult.core.errors import BadRequest, ErrorCode

# Large enough for a browser's offer with audio, video, a data channel and a few
# dozen candidates; anything bigger is refused before parsing.
MAX_SDP_CHARS = 32 * 1024
MAX_SDP_LINES = 1000
_MEDIA_KINDS = ("audio", "video", "application")
_FINGERPRINTS = frozenset({"sha-256", "sha-384", "sha-512"})
_SCTP_PROFILES = frozenset({"UDP/DTLS/SCTP", "DTLS/SCTP"})


class SdpError(BadRequest):
    """The offer cannot be answered; ``detail`` says why, the code is ``invalid_sdp``."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail, code=ErrorCode.INVALID_SDP)


@dataclass(frozen=True)
class OfferSummary:
    """What the offer asks for: its media kinds in order, and the data channel."""

    kinds: tuple[str, ...]

    @property
    def media(self) -> tuple[str, ...]:
        return tuple(kind for kind in self.kinds if kind != "application")


def check_offer(text: str) -> OfferSummary:
    """Parse and check an offer; raise :class:`SdpError` when it cannot be answered."""
    if len(text) > MAX_SDP_CHARS:
        raise SdpError(f"the offer is longer than {MAX_SDP_CHARS} characters")
    if text.count("\n") > MAX_SDP_LINES:
        raise SdpError(f"the offer has more than {MAX_SDP_LINES} lines")
    if not text.lstrip().startswith("v=0"):
        raise SdpError("an SDP offer starts with 'v=0'")
    try:
        parsed = aiortc_sdp.SessionDescription.parse(text)
    except Exception:  # the parser raises whatever the malformed line provokes
        raise SdpError("the offer is not valid SDP") from None
    kinds = tuple(media.kind for media in parsed.media)
    counts = Counter(kinds)
    if not kinds:
        raise SdpError("the offer has no media sections")
    unknown = sorted(set(kinds) - set(_MEDIA_KINDS))
    if unknown:
        raise SdpError(f"unsupported media kinds: {', '.join(unknown)}")
    repeated = sorted(kind for kind, count in counts.items() if count > 1)
    if repeated:
        raise SdpError(f"at most one section of each kind, got several: {', '.join(repeated)}")
    if "application" not in counts:
        raise SdpError("the offer needs a data channel (an m=application section)")
    for media in parsed.media:
        _check_media(media)
    return OfferSummary(kinds)


def _check_media(media: aiortc_sdp.MediaDescription) -> None:
    where = f"the {media.kind} section"
    ice, dtls = media.ice, media.dtls
    if ice is None or not ice.usernameFragment or not ice.password:
        raise SdpError(f"{where} has no ICE username fragment or password")
    if dtls is None or not any(f.algorithm.lower() in _FINGERPRINTS for f in dtls.fingerprints):
        raise SdpError(f"{where} has no DTLS fingerprint (sha-256, sha-384 or sha-512)")
    if media.kind == "application":
        if media.profile not in _SCTP_PROFILES:
            raise SdpError(f"{where} is not an SCTP data channel")
        return
    if not media.rtcp_mux:
        raise SdpError(f"{where} does not multiplex RTCP (a=rtcp-mux)")
    if media.direction not in (None, "sendrecv"):  # None: the default, sendrecv
        raise SdpError(f"{where} must send and receive, so that it can be echoed")
    if not media.rtp.codecs:
        raise SdpError(f"{where} offers no codec")


def clock_rates(text: str) -> dict[str, int]:
    """The RTP clock rate of the first codec of each audio and video section.

    For a negotiated answer that is the codec in use, which turns RTP jitter
    (in timestamp units) into seconds.
    """
    try:
        parsed = aiortc_sdp.SessionDescription.parse(text)
    except Exception:
        return {}
    rates: dict[str, int] = {}
    for media in parsed.media:
        if media.kind in ("audio", "video") and media.rtp.codecs:
            rates.setdefault(media.kind, media.rtp.codecs[0].clockRate)
    return rates
