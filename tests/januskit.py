"""Debian's Janus on loopback for tests (installed if missing; a missing Janus FAILS),
and aiortc peers that publish to and subscribe from it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack

from teleconsult.rtc.janus_process import JanusProcess, find_janus
from teleconsult.rtc.janus_sfu import JanusSfu


def _install_janus() -> str | None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "not root or no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "janus", "janus-tools"]
    done = subprocess.run(command, env=env, capture_output=True, timeout=600, check=False)
    return None if done.returncode == 0 else done.stderr.decode(errors="replace")[-500:]


def require_janus() -> tuple[str, str]:
    """Paths of janus and janus-pp-rec, installing them if need be."""
    found, pp = find_janus(), shutil.which("janus-pp-rec")
    why = None if found and pp else _install_janus()
    found, pp = find_janus(), shutil.which("janus-pp-rec")
    if found is None or pp is None:
        pytest.fail(f"janus/janus-pp-rec are not installed ({why}); .ci/run installs them")
    return found, pp


# Janus gathers ICE candidates on loopback only. aiortc gathers on every interface but
# loopback (aioice); its checks still reach 127.0.0.1 on this machine, and Janus's
# checks reach the peers' own addresses, so the pair connects without leaving the host.
ICE_INTERFACES = "lo"


@contextlib.asynccontextmanager
async def running_janus(workdir: Path) -> AsyncIterator[tuple[JanusProcess, JanusSfu]]:
    binary, pp = require_janus()
    process = JanusProcess(binary, workdir, ice_enforce_list=ICE_INTERFACES)
    await process.start()
    sfu = JanusSfu(
        url=process.url,
        admin_key=process.admin_key,
        room_key=os.urandom(32),
        recordings=process.recordings,
        pp_rec=pp,
    )
    try:
        await sfu.start()
        yield process, sfu
    finally:
        await sfu.close()
        await process.stop()


class SfuPeer:
    """An aiortc participant: one publishing connection, one subscribing connection."""

    def __init__(self, identity: str, *, video: bool = True) -> None:
        self.identity = identity
        self.video = video
        self.pub = RTCPeerConnection()
        self.sub: RTCPeerConnection | None = None
        self.tracks: list[MediaStreamTrack] = []

    async def offer(self) -> str:
        self.pub.addTrack(AudioStreamTrack())
        if self.video:
            self.pub.addTrack(VideoStreamTrack())
        await self.pub.setLocalDescription(await self.pub.createOffer())
        return str(self.pub.localDescription.sdp)

    async def published(self, answer: str) -> None:
        await self.pub.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def answer(self, offer: str) -> str:
        if self.sub is not None:
            await self.sub.close()
        self.sub = RTCPeerConnection()
        self.tracks = []

        @self.sub.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self.tracks.append(track)

        await self.sub.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await self.sub.setLocalDescription(await self.sub.createAnswer())
        return str(self.sub.localDescription.sdp)

    async def inbound_packets(self) -> dict[str, int]:
        """Packets received so far per inbound stream (ssrc), read from the stats."""
        assert self.sub is not None
        stats = await self.sub.getStats()
        return {
            str(s.ssrc): int(s.packetsReceived) for s in stats.values() if s.type == "inbound-rtp"
        }

    async def close(self) -> None:
        await self.pub.close()
        if self.sub is not None:
            await self.sub.close()


async def wait_for(predicate: Any, *, within: float = 30.0, every: float = 0.2) -> None:
    """Poll an async predicate until it holds (fails after ``within`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(every)


def assert_streams_are_whose(
    offer: dict[str, Any], peers: Sequence[str | None], per_peer: int
) -> None:
    """A /signal ``subscribe`` answer says whose each stream is: ``per_peer`` streams of
    each of ``peers``, each by a mid of its offer (docs/signaling.md, "SFU rooms")."""
    mids = set(re.findall(r"^a=mid:(\S+)", offer["sdp"], re.MULTILINE))
    streams = offer["streams"]
    assert {s["mid"] for s in streams} <= mids and len({s["mid"] for s in streams}) == len(
        streams
    ), (streams, mids)
    expected = sorted(str(p) for p in peers for _ in range(per_peer))
    assert sorted(s["peer_id"] for s in streams) == expected, streams
