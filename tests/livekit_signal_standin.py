"""LiveKit's client signalling, stood in for (STYLE 17): what a browser's livekit-client
talks to when it joins a room. A LiveKit server cannot run here, so the room page's
LiveKit mode is contract-tested against this (docs/rtc.md, "LiveKit in the page").

It extends :class:`tests.livekit_standin.LiveKitStandIn` (Twirp RoomService/Egress,
signed webhooks, ``join`` with LiveKit's token checks and ``revoke_token_ts``) with
the client WebSocket endpoint, protocol as livekit-client 2.x speaks it on its
dual-peer-connection path:

* ``GET /rtc?access_token=...&auto_subscribe=1&sdk=js&version=...&protocol=...``: the
  token is checked by ``join`` (signature with the API secret, expiry, ``roomJoin``
  for an existing room, refused when its ``nbf`` is before a revocation): a refusal is
  an HTTP 401 before the upgrade, and ``GET /rtc/validate`` (what livekit-client asks
  after a failed upgrade) answers the same 401 with the reason. Other query parameters
  are required where LiveKit requires them (``protocol``) and otherwise ignored.
  There is no ``/rtc/v1`` (single peer connection): a 404, as on a LiveKit server
  without it, which livekit-client answers by falling back to ``/rtc``.
* Frames are binary ``livekit.SignalRequest`` / ``livekit.SignalResponse`` protobufs.
  The first answer is a ``JoinResponse`` (room, the participant with the grant's
  permission, the others, server info, ping interval and timeout, the publisher as the
  primary connection, no ICE servers); the others get a ``participant_update``.
* ``offer`` (the client's publisher connection) is answered by an aiortc
  RTCPeerConnection; ``trickle`` for the PUBLISHER target is added to it;
  ``add_track`` gets ``track_published`` with a TrackInfo sid (refused without
  ``canPublish``: no answer, as LiveKit drops it); ``ping`` / ``ping_req`` get
  ``pong`` / ``pong_resp``; ``leave`` ends the participant. Anything else is logged
  and ignored, as the real server tolerates what it does not act on.
* ``RemoveParticipant`` (Twirp) sends that participant's socket a ``leave`` with
  reason PARTICIPANT_REMOVED and action DISCONNECT, then closes it; ``DeleteRoom``
  does the same with ROOM_DELETED; a second connection of one identity replaces the
  first (DUPLICATE_IDENTITY).

RTP bytes received are counted per participant and kind (``received``) so a test
sees that a page really published. Not an SFU: nothing is forwarded to the other
participants, and there is no subscriber connection, no resume (``reconnect=1`` is
answered with a ``leave`` asking for a full reconnect), no simulcast layers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import WSMsgType, web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import models as models_pb
from livekit.protocol import rtc as rtc_pb

from tests.livekit_standin import JoinRefused, LiveKitStandIn

logger = logging.getLogger(__name__)


def _unverified(token: str) -> dict[str, Any]:
    """A token's claims without checking it (``join`` has, or refused it)."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return {}
    return claims


SERVER_VERSION = "1.9.0"
SERVER_PROTOCOL = 16
PING_INTERVAL = 5
PING_TIMEOUT = 20
Reason = models_pb.DisconnectReason


@dataclass
class RtcSession:
    """One client's WebSocket: its participant and its publisher connection."""

    ws: web.WebSocketResponse
    room: str
    info: models_pb.ParticipantInfo
    query: dict[str, str]
    pc: RTCPeerConnection | None = None
    sink: MediaBlackhole = field(default_factory=MediaBlackhole)
    tracks: dict[str, models_pb.TrackInfo] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    left: models_pb.DisconnectReason | None = None

    @property
    def identity(self) -> str:
        return self.info.identity


@dataclass
class LiveKitSignalStandIn(LiveKitStandIn):
    """Twirp, webhooks and the client signalling of one stand-in LiveKit server."""

    sessions: dict[tuple[str, str], RtcSession] = field(default_factory=dict)
    # identity -> kind -> RTP payload bytes received from that participant
    received: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )
    # Every /rtc or /rtc/validate refusal: (identity or "", reason).
    refusals: list[tuple[str, str]] = field(default_factory=list)
    # Tokens that connected: (identity, room, can_publish, can_subscribe).
    connected: list[tuple[str, str, bool, bool]] = field(default_factory=list)
    _reason: models_pb.DisconnectReason | None = None
    _refused: dict[str, str] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/rtc", self._rtc)
        app.router.add_get("/rtc/validate", self._validate)
        app.on_shutdown.append(self._shutdown)
        return app

    # -- leaving, from the server's side -------------------------------------------------

    def _remove_participant(
        self, req: Any
    ) -> Any:  # RoomParticipantIdentity -> RemoveParticipantResponse
        self._reason = Reason.PARTICIPANT_REMOVED
        try:
            return super()._remove_participant(req)
        finally:
            self._reason = None

    def _delete_room(self, req: Any) -> Any:  # DeleteRoomRequest -> DeleteRoomResponse
        self._reason = Reason.ROOM_DELETED
        try:
            return super()._delete_room(req)
        finally:
            self._reason = None

    def leave(self, room: str, identity: str) -> None:
        super().leave(room, identity)
        session = self.sessions.pop((room, identity), None)
        if session is not None:
            # Not the client's own leave (that pops its session first): tell it why.
            reason = self._reason if self._reason is not None else Reason.DUPLICATE_IDENTITY
            session.left = reason
            leave = rtc_pb.LeaveRequest(
                can_reconnect=False, reason=reason, action=rtc_pb.LeaveRequest.DISCONNECT
            )
            task = asyncio.get_running_loop().create_task(self._kick(session, leave))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _kick(self, session: RtcSession, leave: rtc_pb.LeaveRequest) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._send(session, rtc_pb.SignalResponse(leave=leave))
        await session.ws.close()

    # -- the client's WebSocket ----------------------------------------------------------

    async def _validate(self, request: web.Request) -> web.Response:
        """Why the upgrade with this token failed (livekit-client shows LiveKit's text)."""
        reason = self._refused.get(request.query.get("access_token", ""))
        # Asked cross-origin by the page (fetch): LiveKit answers any origin.
        cors = {"Access-Control-Allow-Origin": "*"}
        if reason is not None:
            return web.Response(status=401, text=reason, headers=cors)
        return web.Response(text="success", headers=cors)

    async def _rtc(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        if not query.get("protocol", "").isdigit():
            return web.Response(status=400, text="protocol is required")
        token = query.get("access_token", "")
        try:
            info = self.join(token)  # signature, expiry, room_join, revocation
        except JoinRefused as exc:
            self._refused[token] = str(exc)
            self.refusals.append((_unverified(token).get("sub", ""), str(exc)))
            return web.Response(status=401, text=str(exc))
        room = str(_unverified(token)["video"]["room"])
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        session = RtcSession(ws=ws, room=room, info=info, query=query)
        self.sessions[(room, info.identity)] = session
        perm = info.permission
        self.connected.append((info.identity, room, perm.can_publish, perm.can_subscribe))
        try:
            if query.get("reconnect") == "1":
                # No resume here: ask for a full reconnect, as LiveKit does for a session
                # it no longer has.
                leave = rtc_pb.LeaveRequest(
                    reason=Reason.STATE_MISMATCH, action=rtc_pb.LeaveRequest.RECONNECT
                )
                await self._send(session, rtc_pb.SignalResponse(leave=leave))
            else:
                await self._joined(session)
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    logger.info("livekit stand-in: a non-binary frame ignored")
                    continue
                request_pb = rtc_pb.SignalRequest()
                request_pb.ParseFromString(msg.data)
                await self._on_request(session, request_pb)
        finally:
            await self._gone(session)
        return ws

    async def _joined(self, session: RtcSession) -> None:
        others = [
            p for who, p in self.participants[session.room].items() if who != session.identity
        ]
        join = rtc_pb.JoinResponse(
            room=self.rooms[session.room],
            participant=session.info,
            other_participants=others,
            server_version=SERVER_VERSION,
            server_info=models_pb.ServerInfo(
                edition=models_pb.ServerInfo.Standard,
                version=SERVER_VERSION,
                protocol=SERVER_PROTOCOL,
                node_id="ND_standin",
            ),
            ping_interval=PING_INTERVAL,
            ping_timeout=PING_TIMEOUT,
            subscriber_primary=False,
        )
        await self._send(session, rtc_pb.SignalResponse(join=join))
        await self._announce(session)

    async def _announce(self, session: RtcSession) -> None:
        """Everyone else in the room learns of ``session``'s participant (and its tracks)."""
        update = rtc_pb.SignalResponse(update=rtc_pb.ParticipantUpdate(participants=[session.info]))
        for (room, who), other in list(self.sessions.items()):
            if room == session.room and who != session.identity:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._send(other, update)

    async def _on_request(self, session: RtcSession, req: rtc_pb.SignalRequest) -> None:
        kind = req.WhichOneof("message")
        handlers: dict[str, Callable[[RtcSession, Any], Awaitable[None]]] = {
            "offer": self._offer,
            "trickle": self._trickle,
            "add_track": self._add_track,
            "mute": self._mute,
            "ping": self._ping,
            "ping_req": self._ping_req,
            "leave": self._leave,
        }
        handler = handlers.get(kind or "")
        if handler is None:
            logger.info("livekit stand-in: %s from %s ignored", kind, session.identity)
            session.ignored.append(kind or "?")
            return
        await handler(session, getattr(req, kind or ""))

    async def _offer(self, session: RtcSession, offer: rtc_pb.SessionDescription) -> None:
        pc = session.pc
        if pc is None:
            pc = session.pc = RTCPeerConnection()

            @pc.on("track")
            def on_track(track: MediaStreamTrack) -> None:
                session.sink.addTrack(track)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.sdp, type="offer"))
        for transceiver in pc.getTransceivers():
            self._count(session, transceiver.receiver, transceiver.kind)
        await session.sink.start()
        await pc.setLocalDescription(await pc.createAnswer())
        answer = rtc_pb.SessionDescription(type="answer", sdp=pc.localDescription.sdp, id=offer.id)
        await self._send(session, rtc_pb.SignalResponse(answer=answer))

    def _count(self, session: RtcSession, receiver: RTCRtpReceiver, kind: str) -> None:
        """Count the RTP payload bytes ``receiver`` gets, before aiortc handles them."""
        if getattr(receiver, "_standin_counted", False):
            return
        handle = receiver._handle_rtp_packet
        counts = self.received[session.identity]

        async def counted(packet: RtpPacket, arrival_time_ms: int) -> None:
            counts[kind] += len(packet.payload)
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = counted  # type: ignore[method-assign]
        receiver._standin_counted = True  # type: ignore[attr-defined]

    async def _trickle(self, session: RtcSession, trickle: rtc_pb.TrickleRequest) -> None:
        if trickle.target != rtc_pb.SignalTarget.PUBLISHER:
            logger.info("livekit stand-in: a subscriber candidate ignored (no subscriber)")
            return
        init = json.loads(trickle.candidateInit or "{}")
        line = init.get("candidate", "")
        if session.pc is None or not line:
            return  # end of candidates, or before the offer (the client sends them after)
        candidate = candidate_from_sdp(line.removeprefix("candidate:"))
        candidate.sdpMid = init.get("sdpMid")
        candidate.sdpMLineIndex = init.get("sdpMLineIndex")
        await session.pc.addIceCandidate(candidate)

    async def _add_track(self, session: RtcSession, req: rtc_pb.AddTrackRequest) -> None:
        if not session.info.permission.can_publish:
            logger.info("livekit stand-in: %s may not publish", session.identity)
            session.ignored.append("add_track")
            return
        track = models_pb.TrackInfo(
            sid="TR_" + secrets.token_hex(6),
            type=req.type,
            name=req.name,
            muted=req.muted,
            width=req.width,
            height=req.height,
            source=req.source,
            stream=req.stream,
        )
        session.tracks[track.sid] = track
        session.info.tracks.append(track)
        session.info.is_publisher = True
        published = rtc_pb.TrackPublishedResponse(cid=req.cid, track=track)
        await self._send(session, rtc_pb.SignalResponse(track_published=published))
        await self._announce(session)

    async def _mute(self, session: RtcSession, req: rtc_pb.MuteTrackRequest) -> None:
        if req.sid in session.tracks:
            session.tracks[req.sid].muted = req.muted

    async def _ping(self, session: RtcSession, ping: int) -> None:
        await self._send(session, rtc_pb.SignalResponse(pong=int(time.time() * 1000)))

    async def _ping_req(self, session: RtcSession, ping: rtc_pb.Ping) -> None:
        pong = rtc_pb.Pong(last_ping_timestamp=ping.timestamp, timestamp=int(time.time() * 1000))
        await self._send(session, rtc_pb.SignalResponse(pong_resp=pong))

    async def _leave(self, session: RtcSession, leave: rtc_pb.LeaveRequest) -> None:
        session.left = Reason.CLIENT_INITIATED
        await session.ws.close()

    async def _gone(self, session: RtcSession) -> None:
        """The socket closed: the participant leaves (unless the server already took it)."""
        if self.sessions.get((session.room, session.identity)) is session:
            del self.sessions[(session.room, session.identity)]
            if session.identity in self.participants.get(session.room, {}):
                super().leave(session.room, session.identity)
        await session.sink.stop()
        if session.pc is not None:
            await session.pc.close()

    @staticmethod
    async def _send(session: RtcSession, response: rtc_pb.SignalResponse) -> None:
        await session.ws.send_bytes(response.SerializeToString())

    async def _shutdown(self, app: web.Application) -> None:
        for session in list(self.sessions.values()):
            await session.ws.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
