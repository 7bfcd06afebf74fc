"""Real aiortc peers that call each other through the /signal namespace.

The newcomer offers to the peers already admitted (no glare to resolve in
these tests); the other side answers. aiortc gathers every candidate before
``setLocalDescription`` returns, so candidates travel inside the SDP and no
trickle is needed. aiortc cannot restart ICE in place, so a restart here is a
new RTCPeerConnection negotiated with ``restart: true`` (browsers use
``restartIce()``; the signaling is the same).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
from aioice.ice import get_host_addresses
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from teleconsult.client.signal import SignalClient
from teleconsult.core.identity import Role
from teleconsult.scheduling import store as scheduling
from tests.world import Tenant


def host_addresses() -> list[str]:
    """The addresses aiortc peers on this machine gather host candidates on (aioice's
    own list: every interface but loopback). On a test machine they are usually
    private, so the server's peer must be told it may contact them."""
    return get_host_addresses(use_ipv4=True, use_ipv6=True)


def host_networks(*more: str) -> str:
    """``RTC_ALLOWED_PEER_NETWORKS`` for tests whose peers talk on this machine."""
    return ",".join([*host_addresses(), *more])


def configuration(ice_servers: list[dict[str, Any]], *, relay_only: bool) -> RTCConfiguration:
    servers = [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in ice_servers
    ]
    policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


class CallPeer:
    """One side of a call: its signaling client and its current peer connection."""

    def __init__(self, signal: SignalClient, *, relay_only: bool = True) -> None:
        self.signal = signal
        self.relay_only = relay_only
        self.ice_servers: list[dict[str, Any]] = []
        self.pc: RTCPeerConnection | None = None
        self.channel: RTCDataChannel | None = None
        self.channel_open = asyncio.Event()
        self.received: asyncio.Queue[str] = asyncio.Queue()
        self.remote_track: asyncio.Future[MediaStreamTrack] | None = None
        self.local_sdp = ""

    def _new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(configuration(self.ice_servers, relay_only=self.relay_only))
        pc.addTrack(AudioStreamTrack())
        loop = asyncio.get_running_loop()
        self.remote_track = loop.create_future()
        self.channel_open = asyncio.Event()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if self.remote_track is not None and not self.remote_track.done():
                self.remote_track.set_result(track)

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            self._use(channel)

        return pc

    def _use(self, channel: RTCDataChannel) -> None:
        self.channel = channel

        @channel.on("message")
        def on_message(message: Any) -> None:
            self.received.put_nowait(str(message))

        if channel.readyState == "open":
            self.channel_open.set()
        else:
            channel.on("open", self.channel_open.set)

    async def offer_to(self, peer_id: str, *, restart: bool = False) -> None:
        await self.hang_up()
        self.pc = self._new_pc()
        self._use(self.pc.createDataChannel("chat"))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        self.local_sdp = self.pc.localDescription.sdp
        await self.signal.call(
            "signal",
            {"to": peer_id, "kind": "offer", "sdp": self.local_sdp, "restart": restart},
        )
        answer = await self.signal.next_event("signal", within=30)
        assert answer["kind"] == "answer" and answer["from"] == peer_id
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))

    async def answer_next_offer(self) -> dict[str, Any]:
        offer = await self.signal.next_event("signal", within=30)
        assert offer["kind"] == "offer"
        await self.hang_up()
        self.pc = self._new_pc()
        await self.pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self.local_sdp = self.pc.localDescription.sdp
        await self.signal.call(
            "signal", {"to": offer["from"], "kind": "answer", "sdp": self.local_sdp}
        )
        return dict(offer)

    async def exchange(self, text: str) -> None:
        await asyncio.wait_for(self.channel_open.wait(), 30)
        assert self.channel is not None
        self.channel.send(text)

    async def media_frame(self) -> Any:
        assert self.remote_track is not None
        track = await asyncio.wait_for(self.remote_track, 30)
        return await asyncio.wait_for(track.recv(), 30)

    async def hang_up(self) -> None:
        if self.pc is not None:
            with contextlib.suppress(Exception):
                await self.pc.close()
            self.pc = None


async def video_appointment(pool: asyncpg.Pool, tenant: Tenant, *, days: int = 1) -> UUID:
    """A confirmed video appointment of the tenant's patient and doctor, with its room,
    ``days`` from now."""
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(days=days)
    end = start + timedelta(minutes=30)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO doctor_profiles (user_id, clinic_id, consultation_minutes, "
            "buffer_minutes, currency, services) "
            "VALUES ($1, $2, 30, 10, 'KES', '{video,in_person}') ON CONFLICT DO NOTHING",
            tenant[Role.DOCTOR].user_id,
            tenant.clinic_id,
        )
        appointment_id: UUID = await conn.fetchval(
            """
            INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at,
                                      ends_at, status)
            VALUES ($1, $2, $3, 'video', $4, $5, 'confirmed') RETURNING id
            """,
            tenant.clinic_id,
            tenant[Role.DOCTOR].user_id,
            tenant[Role.PATIENT].user_id,
            start,
            end,
        )
        await scheduling.insert_consultation(
            conn,
            appointment_id=appointment_id,
            join_opens_at=start - timedelta(minutes=15),
            join_closes_at=end + timedelta(minutes=30),
        )
    return appointment_id
