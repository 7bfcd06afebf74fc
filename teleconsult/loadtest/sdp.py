"""Synthetic session descriptions and ICE candidates for the signal scenario.

The server relays SDP and candidates without reading them (docs/signaling.md),
so a load test needs no WebRTC stack, only text of a browser's shape and size:
an audio and a video section with the codec lines a browser offers, about 4 KB
in all. Each room's text differs (session id, ufrag, fingerprint, ports), so a
message relayed to the wrong room would be noticed.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

_AUDIO_CODECS = (
    (111, "opus/48000/2", "minptime=10;useinbandfec=1"),
    (63, "red/48000/2", "111/111"),
    (9, "G722/8000", None),
    (0, "PCMU/8000", None),
    (8, "PCMA/8000", None),
    (13, "CN/8000", None),
    (110, "telephone-event/48000", None),
    (126, "telephone-event/8000", None),
)
_VIDEO_CODECS = (
    ("VP8/90000", None),
    ("VP9/90000", "profile-id=0"),
    ("VP9/90000", "profile-id=2"),
    ("H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
    ("H264/90000", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f"),
    ("H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"),
    ("H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f"),
    ("AV1/90000", "level-idx=5;profile=0;tier=0"),
    ("H264/90000", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f"),
)
_VIDEO_FEEDBACK = ("goog-remb", "transport-cc", "ccm fir", "nack", "nack pli")
# Dynamic payload types the audio section does not use; reused past 29 (a size test).
_VIDEO_TYPES = tuple(pt for pt in range(96, 128) if pt not in (110, 111, 126))


def _token(*parts: object, length: int = 16) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:length]


@lru_cache(maxsize=4096)
def synthetic_sdp(kind: str, room: int, size: int) -> str:
    """An offer or answer for ``room`` of at least ``size`` bytes (CRLF lines).

    Video codecs (each with its feedback, parameters and retransmission lines)
    are added until the text reaches ``size``, so it overshoots by at most one
    codec's lines (about 300 bytes). Past 14 codecs the list repeats.
    """
    session = int(_token(kind, room, "session", length=15), 16)
    ufrag = _token(kind, room, "ufrag", length=4)
    pwd = _token(kind, room, "pwd", length=24)
    digest = _token(kind, room, "fingerprint", length=64).upper()
    fingerprint = ":".join(digest[i : i + 2] for i in range(0, 64, 2))
    setup = "actpass" if kind == "offer" else "active"
    stream = _token(kind, room, "stream", length=36)
    head = [
        "v=0",
        f"o=- {session} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=extmap-allow-mixed",
        f"a=msid-semantic: WMS {stream}",
    ]

    def transport(mid: int) -> list[str]:
        return [
            "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
            f"a=ice-ufrag:{ufrag}",
            f"a=ice-pwd:{pwd}",
            "a=ice-options:trickle",
            f"a=fingerprint:sha-256 {fingerprint}",
            f"a=setup:{setup}",
            f"a=mid:{mid}",
            "a=sendrecv",
            f"a=msid:{stream} {_token(kind, room, 'track', mid, length=36)}",
            "a=rtcp-mux",
        ]

    audio_types = " ".join(str(pt) for pt, _, _ in _AUDIO_CODECS)
    audio = [f"m=audio 9 UDP/TLS/RTP/SAVPF {audio_types}", *transport(0)]
    audio += [
        "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    ]
    for pt, name, params in _AUDIO_CODECS:
        audio.append(f"a=rtpmap:{pt} {name}")
        if params:
            audio.append(f"a=fmtp:{pt} {params}")
    audio.append(f"a=ssrc:{int(_token(kind, room, 'a-ssrc', length=8), 16)} cname:{ufrag}")

    ssrc = f"a=ssrc:{int(_token(kind, room, 'v-ssrc', length=8), 16)} cname:{ufrag}"
    fixed = [
        *transport(1),
        "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset",
        "a=extmap:13 urn:3gpp:video-orientation",
        "a=rtcp-rsize",
    ]
    m_line = "m=video 9 UDP/TLS/RTP/SAVPF"
    length = sum(len(line) + 2 for line in [*head, *audio, m_line, *fixed, ssrc])
    types: list[int] = []
    codecs: list[str] = []
    n = 0
    while length < size:
        pt = _VIDEO_TYPES[(2 * n) % len(_VIDEO_TYPES)]
        rtx = _VIDEO_TYPES[(2 * n + 1) % len(_VIDEO_TYPES)]
        name, params = _VIDEO_CODECS[n % len(_VIDEO_CODECS)]
        lines = [f"a=rtpmap:{pt} {name}", *(f"a=rtcp-fb:{pt} {fb}" for fb in _VIDEO_FEEDBACK)]
        if params:
            lines.append(f"a=fmtp:{pt} {params}")
        lines += [f"a=rtpmap:{rtx} rtx/90000", f"a=fmtp:{rtx} apt={pt}"]
        types += [pt, rtx]
        codecs += lines
        length += sum(len(line) + 2 for line in lines) + len(f" {pt} {rtx}")
        n += 1
    video = [f"{m_line} {' '.join(map(str, types))}".rstrip(), *fixed, *codecs, ssrc]
    return "\r\n".join(head + audio + video) + "\r\n"


def candidate_line(room: int, role: str, k: int) -> str:
    """The ``k``-th ICE candidate of ``role`` in ``room``: host, srflx and relay in turn.

    Unique per (room, role, k): the foundation and port carry them.
    """
    foundation = int(_token(room, role, k, "foundation", length=8), 16)
    port = 50_000 + (k * 97 + room * 13 + (role == "doctor") * 7) % 15_000
    ufrag = _token("offer" if role == "patient" else "answer", room, "ufrag", length=4)
    kind = ("host", "srflx", "relay")[k % 3]
    priority = {"host": 2122260223, "srflx": 1686052607, "relay": 41885439}[kind] - k
    address = {"host": "192.168.1.23", "srflx": "203.0.113.45", "relay": "198.51.100.7"}[kind]
    related = "" if kind == "host" else f" raddr 192.168.1.23 rport {port - 1}"
    return (
        f"candidate:{foundation} 1 udp {priority} {address} {port} typ {kind}{related} "
        f"generation 0 ufrag {ufrag} network-id 1 network-cost 10 x-lt {room}-{role}-{k}"
    )
