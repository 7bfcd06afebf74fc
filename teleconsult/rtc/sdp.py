"""Checks on a client's SDP offer before any peer connection exists (pure).

The offer comes from the network, so it is parsed here first, with aiortc's own
parser, and refused with :class:`SdpError` (400 ``invalid_sdp``) unless it is
something the echo peer can answer: one data channel, at most one audio and one
video section, each sending and receiving, with ICE credentials and a DTLS
fingerprint. Nothing here opens a socket; a refused offer costs no peer.

The offer's candidates are then filtered by address (:func:`filter_candidates`,
see ``rtc/addresses.py``), and the answer can be made to name only the server's
public addresses (:func:`announce`).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aiortc import sdp as aiortc_sdp

from teleconsult.core.errors import BadRequest, ErrorCode, Unprocessable
from teleconsult.rtc.addresses import Address, is_mdns_name

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


class CandidatesRefused(Unprocessable):
    """Every candidate of the offer is on an address the server does not contact."""

    def __init__(self, refused: Sequence[str]) -> None:
        shown = ", ".join(refused[:6]) + (
            f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        )
        super().__init__(
            f"the server sends no ICE checks to these candidates: {shown}; offer a public "
            "address (a server-reflexive or relay candidate)",
            code=ErrorCode.PEER_ADDRESS_REFUSED,
        )
        self.refused = tuple(refused)


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


_CANDIDATE = "a=candidate:"
_END_OF_CANDIDATES = "a=end-of-candidates"
_DISCARD_HOST, _DISCARD_PORT = "0.0.0.0", 9  # what aiortc writes for "no candidate"


@dataclass(frozen=True)
class FilteredOffer:
    """An offer without the candidates the server must not contact.

    ``refused`` names each dropped address and why (``"127.0.0.1 (loopback)"``);
    ``mdns`` counts the dropped mDNS candidates, which are never resolved.
    """

    sdp: str
    kept: int
    refused: tuple[str, ...]
    mdns: int

    @property
    def unusable(self) -> bool:
        """Candidates were offered, and every one is refused: the test cannot work."""
        return bool(self.refused) and not self.kept and not self.mdns


def filter_candidates(text: str, refusal: Callable[[str], str | None]) -> FilteredOffer:
    """Drop each candidate line whose address ``refusal`` names a reason for.

    mDNS (``.local``) candidates are dropped too: resolving one would query the
    server's own network, and what it resolves to is a local address. A media
    section that lost one also loses its ``a=end-of-candidates``, so the peer
    still accepts the client's checks from a public address (peer-reflexive
    candidates, themselves filtered by ``rtc/ice_guard.py``) instead of failing
    at once for want of candidates.
    """
    sections: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    kept, mdns, refused = 0, 0, []
    out: list[str] = []
    for section in sections:
        dropped_mdns = False
        lines: list[str] = []
        for line in section:
            if not line.startswith(_CANDIDATE):
                lines.append(line)
                continue
            host = _candidate_host(line)
            if host is not None and is_mdns_name(host):
                mdns += 1
                dropped_mdns = True
                continue
            why = "malformed" if host is None else refusal(host)
            if why is None:
                kept += 1
                lines.append(line)
            else:
                refused.append(f"{host or '?'} ({why})")
        if dropped_mdns:
            lines = [x for x in lines if x.rstrip("\r\n") != _END_OF_CANDIDATES]
        out.extend(lines)
    return FilteredOffer("".join(out), kept, tuple(refused), mdns)


def _candidate_host(line: str) -> str | None:
    try:
        candidate = aiortc_sdp.candidate_from_sdp(line[len(_CANDIDATE) :].strip())
    except (AssertionError, ValueError, IndexError):
        return None
    return candidate.ip


def announce(text: str, public: Sequence[Address]) -> str:
    """The answer as it shows only ``public`` addresses (``RTC_PUBLIC_IP``).

    Each host or server-reflexive candidate is announced at the public address
    of its IP version, with its own port, as a 1:1 NAT maps it (mediasoup's
    ``announcedAddress``, pion's ``NAT1To1IPs``); a candidate of a version with no
    public address is left out. Relay candidates stay. No candidate keeps its
    related address, which names the interface behind the NAT; duplicates go.
    """
    by_version = {address.version: str(address) for address in public}
    parsed = aiortc_sdp.SessionDescription.parse(text)
    for media in parsed.media:
        seen: set[tuple[int, str, str, int]] = set()
        candidates = []
        for candidate in media.ice_candidates:
            if candidate.type != "relay":
                address = ipaddress.ip_address(candidate.ip.split("%")[0])
                mapped = by_version.get(address.version)
                if mapped is None:
                    continue
                candidate.ip = mapped
            candidate.relatedAddress = candidate.relatedPort = None
            key = (candidate.component, candidate.protocol.lower(), candidate.ip, candidate.port)
            if key not in seen:
                seen.add(key)
                candidates.append(candidate)
        media.ice_candidates = candidates
        if candidates:
            media.host, media.port = candidates[0].ip, candidates[0].port
        else:
            media.host, media.port = _DISCARD_HOST, _DISCARD_PORT
    if parsed.host is not None:
        parsed.host = _DISCARD_HOST
    return str(parsed)
