"""An in-process stand-in for a LiveKit server, as strict as the real one (STYLE 17).

A LiveKit server cannot run here (no registry ships its binary), so the LiveKit
backend is contract-tested against this: it speaks LiveKit's Twirp API
(``/twirp/livekit.RoomService/*``, ``/twirp/livekit.Egress/*``) with the real
``livekit-protocol`` messages, in binary protobuf or protojson as the request's
Content-Type says (the real server accepts both); it checks each call's
``Authorization: Bearer`` JWT with the API key and secret and the grant LiveKit
asks for that method (room_create; room_admin bound to the request's room;
room_record); errors are Twirp's JSON (``{"code", "msg"}``) with its statuses.

``join`` plays a client connecting with a join token: signature, expiry,
``room_join`` for that room, and ``revoke_token_ts`` (a token whose ``nbf`` is
before the identity's revocation time is refused), as LiveKit does.

A stopped room-composite egress (StopEgress, or DeleteRoom while it runs, as
LiveKit ends a room's recordings with the room) writes a real media file of the
requested type (an H.264 MP4 or an Opus Ogg, made with PyAV) at the requested
path; ``written`` keeps its bytes for comparison.

Webhooks are signed like the real ones: a protojson body, and an
``Authorization`` JWT (API key as issuer, 5 minutes) whose ``sha256`` claim is
the base64 sha256 of the body. ``outbox`` keeps every webhook made; ``deliver``
posts them, and tests can drop, duplicate, reorder, delay or forge them first.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit import api
from livekit.api.access_token import Claims
from livekit.protocol import egress as egress_pb
from livekit.protocol import models as models_pb
from livekit.protocol import room as room_pb
from livekit.protocol.webhook import WebhookEvent

from tests.recordingkit import make_mp4, make_ogg


class JoinRefused(Exception):
    """What a LiveKit client would see as a 401 on connect."""


class TwirpFailure(Exception):
    def __init__(self, status: int, code: str, msg: str) -> None:
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


@dataclass(frozen=True)
class Webhook:
    event: WebhookEvent
    body: bytes
    authorization: str


def sign_webhook(event: WebhookEvent, key: str, secret: str) -> Webhook:
    body = json_format.MessageToJson(event, indent=None).encode()
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    token = api.AccessToken(key, secret).with_sha256(digest).with_ttl(timedelta(minutes=5)).to_jwt()
    return Webhook(event, body, token)


@dataclass
class LiveKitStandIn:
    api_key: str
    api_secret: str
    webhook_url: str | None = None
    clock: Callable[[], float] = time.time
    rooms: dict[str, models_pb.Room] = field(default_factory=dict)
    participants: dict[str, dict[str, models_pb.ParticipantInfo]] = field(default_factory=dict)
    revocations: dict[tuple[str, str], int] = field(default_factory=dict)
    egress: dict[str, egress_pb.EgressInfo] = field(default_factory=dict)
    outbox: list[Webhook] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    # Events of these kinds are made (in ``outbox``) but never sent by ``deliver``.
    withhold: set[str] = field(default_factory=set)
    # egress id -> the bytes of the media file that egress wrote.
    written: dict[str, bytes] = field(default_factory=dict)
    _sent: int = 0
    _last_ms: int = 0

    # -- Twirp ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/twirp/livekit.{service}/{method}", self._twirp)
        return app

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """The Twirp API on a real port of 127.0.0.1 (a server process can call it); its
        URL (``LIVEKIT_URL``)."""
        server = TestServer(self.app(), host="127.0.0.1")
        await server.start_server()
        try:
            yield str(server.make_url("")).rstrip("/")
        finally:
            await server.close()

    async def _twirp(self, request: web.Request) -> web.Response:
        service, method = request.match_info["service"], request.match_info["method"]
        content_type = request.content_type
        try:
            handler, request_type, needs = self._route(service, method)
            claims = self._authorize(request.headers.get("Authorization", ""))
            raw = await request.read()
            message = request_type()
            if content_type == "application/protobuf":
                message.ParseFromString(raw)
            elif content_type == "application/json":
                json_format.Parse(raw.decode(), message)
            else:
                raise TwirpFailure(400, "malformed", f"unsupported content type {content_type}")
            self._check_grant(claims, needs, message)
            self.calls.append(method)
            answer = handler(message)
        except TwirpFailure as exc:
            return web.json_response({"code": exc.code, "msg": exc.msg}, status=exc.status)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
            return web.json_response({"code": "malformed", "msg": str(exc)}, status=400)
        if content_type == "application/json":
            return web.Response(
                text=json_format.MessageToJson(answer), content_type="application/json"
            )
        return web.Response(body=answer.SerializeToString(), content_type="application/protobuf")

    def _route(
        self, service: str, method: str
    ) -> tuple[Callable[[Any], Message], type[Message], str]:
        routes: dict[tuple[str, str], tuple[Callable[[Any], Message], type[Message], str]] = {
            ("RoomService", "CreateRoom"): (self._create_room, room_pb.CreateRoomRequest, "create"),
            ("RoomService", "DeleteRoom"): (self._delete_room, room_pb.DeleteRoomRequest, "create"),
            ("RoomService", "ListParticipants"): (
                self._list_participants,
                room_pb.ListParticipantsRequest,
                "admin",
            ),
            ("RoomService", "RemoveParticipant"): (
                self._remove_participant,
                room_pb.RoomParticipantIdentity,
                "admin",
            ),
            ("Egress", "StartRoomCompositeEgress"): (
                self._start_egress,
                egress_pb.RoomCompositeEgressRequest,
                "record",
            ),
            ("Egress", "StopEgress"): (self._stop_egress, egress_pb.StopEgressRequest, "record"),
            ("Egress", "ListEgress"): (self._list_egress, egress_pb.ListEgressRequest, "record"),
        }
        if (service, method) not in routes:
            raise TwirpFailure(404, "bad_route", f"no handler for {service}/{method}")
        return routes[(service, method)]

    def _authorize(self, header: str) -> Claims:
        if not header.startswith("Bearer "):
            raise TwirpFailure(401, "unauthenticated", "authorization header is missing")
        try:
            return api.TokenVerifier(self.api_key, self.api_secret).verify(header[7:])
        except Exception as exc:
            raise TwirpFailure(401, "unauthenticated", f"invalid token: {exc}") from None

    @staticmethod
    def _check_grant(claims: Claims, needs: str, message: Message) -> None:
        video = claims.video or api.VideoGrants()
        if needs == "create" and not video.room_create:
            raise TwirpFailure(403, "permission_denied", "room_create grant required")
        if needs == "record" and not video.room_record:
            raise TwirpFailure(403, "permission_denied", "room_record grant required")
        if needs == "admin":
            room = getattr(message, "room", "")
            if not video.room_admin or video.room != room:
                raise TwirpFailure(403, "permission_denied", "room_admin for this room required")

    # -- RoomService ---------------------------------------------------------------------

    def _create_room(self, req: room_pb.CreateRoomRequest) -> models_pb.Room:
        if not req.name:
            raise TwirpFailure(400, "invalid_argument", "name is required")
        if req.name not in self.rooms:
            now = self.clock()
            self.rooms[req.name] = models_pb.Room(
                sid="RM_" + secrets.token_hex(6),
                name=req.name,
                empty_timeout=req.empty_timeout,
                creation_time=int(now),
                creation_time_ms=int(now * 1000),
            )
            self.participants[req.name] = {}
            self._emit("room_started", room=self.rooms[req.name])
        return self.rooms[req.name]

    def _delete_room(self, req: room_pb.DeleteRoomRequest) -> room_pb.DeleteRoomResponse:
        room = self.rooms.get(req.room)
        if room is None:
            raise TwirpFailure(404, "not_found", "room not found")
        for identity in list(self.participants.get(req.room, {})):
            self.leave(req.room, identity)
        for info in list(self.egress.values()):  # the room's recordings end with it
            if info.room_name == req.room and info.status < egress_pb.EgressStatus.EGRESS_ENDING:
                self._finish_egress(info.egress_id)
        del self.rooms[req.room]
        self._emit("room_finished", room=room)
        return room_pb.DeleteRoomResponse()

    def _list_participants(
        self, req: room_pb.ListParticipantsRequest
    ) -> room_pb.ListParticipantsResponse:
        if req.room not in self.rooms:
            raise TwirpFailure(404, "not_found", "room not found")
        return room_pb.ListParticipantsResponse(
            participants=list(self.participants[req.room].values())
        )

    def _remove_participant(
        self, req: room_pb.RoomParticipantIdentity
    ) -> room_pb.RemoveParticipantResponse:
        if req.revoke_token_ts:
            key = (req.room, req.identity)
            self.revocations[key] = max(self.revocations.get(key, 0), req.revoke_token_ts)
        if req.identity not in self.participants.get(req.room, {}):
            raise TwirpFailure(404, "not_found", "participant not found")
        self.leave(req.room, req.identity)
        return room_pb.RemoveParticipantResponse()

    # -- a client connecting -------------------------------------------------------------

    def join(self, token: str) -> models_pb.ParticipantInfo:
        """A client connects with ``token``; a new connection (sid) of its identity."""
        try:
            claims = api.TokenVerifier(self.api_key, self.api_secret).verify(token)
        except Exception as exc:
            raise JoinRefused(f"invalid token: {exc}") from None
        # The signature verified above; nbf is when the token was minted.
        nbf = int(jwt.decode(token, options={"verify_signature": False}).get("nbf", 0))
        video = claims.video
        if video is None or not video.room_join or not video.room or not claims.identity:
            raise JoinRefused("no room_join grant")
        room = video.room
        if room not in self.rooms:
            raise JoinRefused("room not found")
        revoked = self.revocations.get((room, claims.identity))
        if revoked is not None and nbf < revoked:
            raise JoinRefused("token revoked")
        previous = self.participants[room].get(claims.identity)
        if previous is not None:  # same identity again: LiveKit replaces the old connection
            self.leave(room, claims.identity)
        now = self.clock()
        # Connection times are strictly increasing, as one server's clock makes them.
        self._last_ms = max(int(now * 1000), self._last_ms + 1)
        info = models_pb.ParticipantInfo(
            sid="PA_" + secrets.token_hex(6),
            identity=claims.identity,
            name=claims.name,
            state=models_pb.ParticipantInfo.State.ACTIVE,
            joined_at=self._last_ms // 1000,
            joined_at_ms=self._last_ms,
            permission=models_pb.ParticipantPermission(
                can_publish=video.can_publish,
                can_subscribe=video.can_subscribe,
                can_publish_data=video.can_publish_data,
            ),
        )
        self.participants[room][claims.identity] = info
        self._emit("participant_joined", room=self.rooms[room], participant=info)
        return info

    def leave(self, room: str, identity: str) -> None:
        info = self.participants[room].pop(identity)
        left = models_pb.ParticipantInfo()
        left.CopyFrom(info)
        left.state = models_pb.ParticipantInfo.State.DISCONNECTED
        self._emit("participant_left", room=self.rooms[room], participant=left)

    # -- Egress --------------------------------------------------------------------------

    def _start_egress(self, req: egress_pb.RoomCompositeEgressRequest) -> egress_pb.EgressInfo:
        if req.room_name not in self.rooms:
            raise TwirpFailure(404, "not_found", "room not found")
        if len(req.file_outputs) != 1 or not req.file_outputs[0].filepath:
            raise TwirpFailure(400, "invalid_argument", "one file output with a filepath")
        now_ns = int(self.clock() * 1e9)
        info = egress_pb.EgressInfo(
            egress_id="EG_" + secrets.token_hex(6),
            room_id=self.rooms[req.room_name].sid,
            room_name=req.room_name,
            status=egress_pb.EgressStatus.EGRESS_STARTING,
            started_at=now_ns,
            updated_at=now_ns,
        )
        info.room_composite.CopyFrom(req)
        self.egress[info.egress_id] = info
        self._emit("egress_started", egress_info=info)
        self._advance_egress(info.egress_id, egress_pb.EgressStatus.EGRESS_ACTIVE)
        return self.egress[info.egress_id]

    def _stop_egress(self, req: egress_pb.StopEgressRequest) -> egress_pb.EgressInfo:
        info = self.egress.get(req.egress_id)
        if info is None:
            raise TwirpFailure(404, "not_found", "egress not found")
        if info.status >= egress_pb.EgressStatus.EGRESS_COMPLETE:
            raise TwirpFailure(412, "failed_precondition", "egress already ended")
        self._finish_egress(req.egress_id)
        return self.egress[req.egress_id]

    def _finish_egress(self, egress_id: str) -> None:
        """Ending, then complete with a real media file of the requested type."""
        info = self.egress[egress_id]
        self._advance_egress(egress_id, egress_pb.EgressStatus.EGRESS_ENDING)
        output = info.room_composite.file_outputs[0]
        path = Path(output.filepath)
        path.parent.mkdir(parents=True, exist_ok=True)
        if output.file_type == egress_pb.EncodedFileType.OGG:
            self.written[egress_id] = make_ogg(path)
        else:  # MP4, LiveKit's default for a room composite
            self.written[egress_id] = make_mp4(path)
        self._advance_egress(
            egress_id,
            egress_pb.EgressStatus.EGRESS_COMPLETE,
            file=egress_pb.FileInfo(filename=str(path), size=path.stat().st_size),
        )

    def _advance_egress(
        self, egress_id: str, status: int, file: egress_pb.FileInfo | None = None
    ) -> None:
        info = self.egress[egress_id]
        info.status = status  # type: ignore[assignment]
        info.updated_at = max(info.updated_at + 1, int(self.clock() * 1e9))
        if file is not None:
            info.file_results.append(file)
            info.ended_at = info.updated_at
        final = status >= egress_pb.EgressStatus.EGRESS_COMPLETE
        self._emit("egress_ended" if final else "egress_updated", egress_info=info)

    def _list_egress(self, req: egress_pb.ListEgressRequest) -> egress_pb.ListEgressResponse:
        items = [
            info
            for info in self.egress.values()
            if (not req.room_name or info.room_name == req.room_name)
            and (not req.egress_id or info.egress_id == req.egress_id)
            and (not req.active or info.status < egress_pb.EgressStatus.EGRESS_COMPLETE)
        ]
        return egress_pb.ListEgressResponse(items=items)

    # -- webhooks ------------------------------------------------------------------------

    def _emit(self, kind: str, **fields: Any) -> None:
        event = WebhookEvent(
            event=kind, id="EV_" + secrets.token_hex(8), created_at=int(self.clock())
        )
        for name, value in fields.items():
            getattr(event, name).CopyFrom(value)
        self.outbox.append(sign_webhook(event, self.api_key, self.api_secret))

    async def deliver(self, session: aiohttp.ClientSession) -> list[int]:
        """Posts every webhook made since the last call (but withheld kinds)."""
        statuses = []
        pending, self._sent = self.outbox[self._sent :], len(self.outbox)
        for hook in pending:
            if hook.event.event not in self.withhold:
                statuses.append(await post_webhook(session, self.webhook_url or "", hook))
        return statuses


async def post_webhook(session: aiohttp.ClientSession, url: str, hook: Webhook) -> int:
    """Posts one webhook the way LiveKit's notifier does; answers the HTTP status."""
    headers = {"Content-Type": "application/webhook+json", "Authorization": hook.authorization}
    async with session.post(url, data=hook.body, headers=headers) as response:
        await response.read()
        return response.status
