"""The Janus backend of :class:`teleconsult.rtc.sfu.Sfu`, and the media relay.

Rooms are VideoRoom rooms created by this server with VideoRoom's ``admin_key``,
a room ``secret`` and ``is_private``, and ``allowed`` join tokens: one token per
participant, added when they are granted and removed when they are removed (then
``kick``ed), so the same credentials cannot bring them back. The room number, the
room secret, each participant's feed id and join token are derived from
``room_key`` (HMAC-SHA256), the token also from the participant's nonce in the
shared :class:`~teleconsult.rtc.janus_state.JanusState` (Redis with several
processes), so any server process, or one restarted, can grant, relay and remove
anyone of a room it did not create; the running recording is kept there too.

Browsers never talk to Janus (docs/rtc.md): ``/signal`` relays their SDP and
candidates, and this module forwards them on the participant's own Janus
session, joined with the participant's own token (:class:`JanusRelay`). Janus's
HTTP API therefore stays on loopback or a private network.

Recording uses VideoRoom's own recorder (``enable_recording``) into
``<recordings>/<room>/``; on stop, ``janus-pp-rec`` and PyAV make one WebM
(``janus_recording``), handed over in a ``RECORDING_FINISHED`` event, and removed
once the handler returns (the recording store sealed it by then).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp

from teleconsult.core.errors import Conflict, ErrorCode, Forbidden
from teleconsult.core.tasks import cancel_and_wait
from teleconsult.rtc.janus import (
    NO_SUCH_FEED,
    NO_SUCH_ROOM,
    ROOM_EXISTS,
    JanusError,
    JanusSession,
)
from teleconsult.rtc.janus_recording import post_process
from teleconsult.rtc.janus_state import JanusState, LocalJanusState
from teleconsult.rtc.sfu import (
    RIGHTS,
    JoinGrant,
    Participant,
    SfuEvent,
    SfuEventHandler,
    SfuEventKind,
    SfuRole,
    SfuRoom,
)
from teleconsult.rtc.sfu_relay import SubscribedStream, Subscription

logger = logging.getLogger(__name__)

GRANT_TTL = timedelta(hours=2)
MAX_PUBLISHERS = 8


def _derive(key: bytes, *parts: str) -> bytes:
    return hmac.new(key, "\x1f".join(parts).encode(), hashlib.sha256).digest()


def _number(key: bytes, *parts: str) -> int:
    # JavaScript-safe (below 2**53) and never 0, which VideoRoom reads as "pick one".
    return int.from_bytes(_derive(key, *parts)[:8], "big") % (2**52 - 1) + 1


@dataclass
class _Recording:
    recording_id: str
    folder: Path


@dataclass
class _Room:
    consultation_id: UUID
    number: int
    secret: str = field(repr=False)


@dataclass
class _Member:
    """A participant's own Janus session: a publisher handle and a subscriber handle."""

    session: JanusSession
    feed: int
    token: str = field(repr=False)
    publisher: int | None = None
    subscriber: int | None = None
    # Set once Janus reports the publisher's PeerConnection up (``webrtcup``): only
    # then can others subscribe to its feed.
    live: asyncio.Event = field(default_factory=asyncio.Event)

    def heard(self, event: dict[str, Any]) -> bool:
        """Follow the publisher's state; whether the event says it was kicked."""
        if event.get("janus") == "webrtcup":
            self.live.set()
        elif event.get("janus") == "hangup":
            self.live.clear()
        data = (event.get("plugindata") or {}).get("data") or {}
        return data.get("leaving") == "ok" and data.get("reason") == "kicked"


class JanusSfu:
    """:class:`teleconsult.rtc.sfu.Sfu` on Janus's VideoRoom, plus :class:`JanusRelay`
    methods. Rooms are changed one request at a time per room (a keyed lock)."""

    name = "janus"

    def __init__(
        self,
        *,
        url: str,
        admin_key: str | None,
        room_key: bytes,
        recordings: Path,
        pp_rec: str | None,
        grant_ttl: timedelta = GRANT_TTL,
        state: JanusState | None = None,
    ) -> None:
        self._url = url
        self._admin_key = admin_key
        self._room_key = room_key
        self._recordings = recordings
        self._pp_rec = pp_rec
        self._grant_ttl = grant_ttl
        self._state: JanusState = state or LocalJanusState()
        self._http: aiohttp.ClientSession | None = None
        self._admin: JanusSession | None = None
        self._handle = 0
        self._rooms: dict[UUID, _Room] = {}
        self._members: dict[tuple[UUID, str], _Member] = {}
        self._locks: dict[UUID, asyncio.Lock] = {}
        self._handler: SfuEventHandler | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle --------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Janus's HTTP API (private: loopback or the clinic's network)."""
        return self._url

    async def start(self) -> None:
        # No connection cap: every relayed participant's Janus session holds one
        # connection in its long poll (aiohttp's default of 100 stopped the relay at
        # about 100 participants a process; bench/sfu_relay.py).
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._admin = await JanusSession.create(self._http, self._url)
        self._handle = await self._admin.attach()

    async def close(self) -> None:
        await cancel_and_wait(list(self._tasks))
        for member in list(self._members.values()):
            await member.session.destroy()
        self._members.clear()
        if self._admin is not None:
            await self._admin.destroy()
            self._admin = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self._state.close()

    def on_event(self, handler: SfuEventHandler) -> None:
        self._handler = handler

    async def _emit(self, event: SfuEvent) -> bool:
        """Hand ``event`` to the handler; whether it took it without failing."""
        if self._handler is None:
            return False
        try:
            await self._handler(event)
        except Exception:
            logger.warning("the SFU event handler failed on %s", event.kind, exc_info=True)
            return False
        return True

    def _event(self, kind: SfuEventKind, room: _Room, **extra: Any) -> SfuEvent:
        return SfuEvent(
            event_id=secrets.token_urlsafe(12),
            kind=kind,
            consultation_id=room.consultation_id,
            at=datetime.now(UTC),
            **extra,
        )

    async def _admin_request(self, body: dict[str, Any]) -> dict[str, Any]:
        if self._admin is None or self._admin.closed:
            if self._http is None:
                raise JanusError("the SFU is not started")
            self._admin = await JanusSession.create(self._http, self._url)
            self._handle = await self._admin.attach()
        data, _ = await self._admin.request(self._handle, body)
        return data

    # --- rooms ------------------------------------------------------------------------

    def _room(self, consultation_id: UUID) -> _Room:
        room = self._rooms.get(consultation_id)
        if room is None:
            cid = str(consultation_id)
            room = _Room(
                consultation_id=consultation_id,
                number=_number(self._room_key, "room", cid),
                secret=_derive(self._room_key, "secret", cid).hex(),
            )
            self._rooms[consultation_id] = room
        return room

    def room_number(self, consultation_id: UUID) -> int:
        return self._room(consultation_id).number

    def feed(self, consultation_id: UUID, identity: str) -> int:
        return _number(self._room_key, "feed", str(consultation_id), identity)

    def _token(self, consultation_id: UUID, identity: str, nonce: str) -> str:
        raw = _derive(self._room_key, "token", str(consultation_id), identity, nonce)
        return base64.urlsafe_b64encode(raw[:24]).decode()

    async def _allowed(self, room: _Room, action: str, token: str) -> None:
        await self._admin_request(
            {
                "request": "allowed",
                "room": room.number,
                "secret": room.secret,
                "action": action,
                "allowed": [token],
            }
        )

    def _lock(self, consultation_id: UUID) -> asyncio.Lock:
        return self._locks.setdefault(consultation_id, asyncio.Lock())

    async def create_room(self, consultation_id: UUID) -> SfuRoom:
        room = self._room(consultation_id)
        folder = self._recordings / str(room.number)
        body: dict[str, Any] = {
            "request": "create",
            "room": room.number,
            "secret": room.secret,
            "is_private": True,
            "allowed": [],
            "publishers": MAX_PUBLISHERS,
            "audiocodec": "opus",
            "videocodec": "vp8",
            "record": False,
            "rec_dir": str(folder),
            "permanent": False,
            "description": "consultation",
        }
        if self._admin_key:
            body["admin_key"] = self._admin_key
        async with self._lock(consultation_id):
            try:
                await self._admin_request(body)
            except JanusError as exc:
                if exc.code != ROOM_EXISTS:
                    raise
        return SfuRoom(consultation_id, self.name, str(room.number))

    async def close_room(self, consultation_id: UUID) -> None:
        room = self._room(consultation_id)
        recording = await self._state.recording(consultation_id)
        if recording is not None:
            await self.stop_recording(consultation_id, recording)
        for key in [k for k in self._members if k[0] == consultation_id]:
            await self.leave_media(*key)
        async with self._lock(consultation_id):
            try:
                await self._admin_request(
                    {"request": "destroy", "room": room.number, "secret": room.secret}
                )
            except JanusError as exc:
                if exc.code != NO_SUCH_ROOM:
                    raise
            self._rooms.pop(consultation_id, None)
        self._locks.pop(consultation_id, None)
        await self._emit(self._event(SfuEventKind.ROOM_FINISHED, room))

    async def grant(self, consultation_id: UUID, identity: str, role: SfuRole) -> JoinGrant:
        await self.create_room(consultation_id)
        room = self._room(consultation_id)
        async with self._lock(consultation_id):
            nonce = await self._state.grant(consultation_id, identity, str(role))
            token = self._token(consultation_id, identity, nonce)
            await self._allowed(room, "add", token)  # again is harmless
            if await self._state.granted(consultation_id, identity) is None:
                # Removed meanwhile (by another process): the token goes again.
                await self._allowed(room, "remove", token)
                raise Forbidden("removed from this SFU room", code=ErrorCode.FORBIDDEN)
        return JoinGrant(
            backend=self.name,
            identity=identity,
            role=role,
            expires_at=datetime.now(UTC) + self._grant_ttl,
            details={
                "room": room.number,
                "token": token,
                "feed": self.feed(consultation_id, identity),
            },
        )

    async def remove(self, consultation_id: UUID, identity: str) -> None:
        room = self._room(consultation_id)
        async with self._lock(consultation_id):
            nonce = await self._state.revoke(consultation_id, identity)
            try:
                if nonce is not None:
                    token = self._token(consultation_id, identity, nonce)
                    await self._allowed(room, "remove", token)
                await self._admin_request(
                    {
                        "request": "kick",
                        "room": room.number,
                        "secret": room.secret,
                        "id": self.feed(consultation_id, identity),
                    }
                )
            except JanusError as exc:
                if exc.code not in (NO_SUCH_FEED, NO_SUCH_ROOM):
                    raise
        member = self._members.pop((consultation_id, identity), None)
        if member is not None:
            await member.session.destroy()
            await self._emit(self._event(SfuEventKind.LEFT, room, identity=identity))

    async def participants(self, consultation_id: UUID) -> list[Participant]:
        room = self._room(consultation_id)
        try:
            data = await self._admin_request({"request": "listparticipants", "room": room.number})
        except JanusError as exc:
            if exc.code == NO_SUCH_ROOM:
                return []
            raise
        return [
            Participant(
                identity=str(p.get("display", p.get("id"))),
                joined_at=None,
                publishing=bool(p.get("publisher")),
            )
            for p in data.get("participants", [])
        ]

    # --- recording --------------------------------------------------------------------

    async def start_recording(self, consultation_id: UUID) -> str:
        if self._pp_rec is None:
            raise Conflict(
                "recording needs janus-pp-rec (package janus-tools)",
                code=ErrorCode.CONFLICT,
            )
        await self.create_room(consultation_id)
        room = self._room(consultation_id)
        async with self._lock(consultation_id):
            mine = secrets.token_urlsafe(12)
            running = await self._state.start_recording(consultation_id, mine)
            if running != mine:
                return running
            folder = self._recordings / str(room.number)
            try:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(folder, 0o700)
                await self._admin_request(
                    {
                        "request": "enable_recording",
                        "room": room.number,
                        "secret": room.secret,
                        "record": True,
                    }
                )
            except BaseException:
                await self._state.take_recording(consultation_id, mine)
                raise
            return mine

    async def stop_recording(self, consultation_id: UUID, recording_id: str) -> None:
        room = self._room(consultation_id)
        async with self._lock(consultation_id):
            # Whichever process started it: the folder is derived, the id shared.
            if not await self._state.take_recording(consultation_id, recording_id):
                return
            recording = _Recording(recording_id, self._recordings / str(room.number))
            with contextlib.suppress(JanusError):
                await self._admin_request(
                    {
                        "request": "enable_recording",
                        "room": room.number,
                        "secret": room.secret,
                        "record": False,
                    }
                )
        task = asyncio.create_task(self._finish(room, recording), name="janus-recording")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, room: _Room, recording: _Recording) -> None:
        """Post-process, hand over, and remove every plaintext file whatever happens."""
        assert self._pp_rec is not None
        target = recording.folder / f"{recording.recording_id}.webm"
        try:
            await post_process(self._pp_rec, recording.folder, target)
        except Exception as exc:
            logger.warning("recording %s failed: %s", recording.recording_id, exc)
            await self._emit(
                self._event(
                    SfuEventKind.RECORDING_FAILED, room, recording_id=recording.recording_id
                )
            )
            return
        try:
            taken = await self._emit(
                self._event(
                    SfuEventKind.RECORDING_FINISHED,
                    room,
                    recording_id=recording.recording_id,
                    file_path=str(target),
                )
            )
        finally:
            await asyncio.to_thread(target.unlink, missing_ok=True)
        if not taken:
            await self._emit(
                self._event(
                    SfuEventKind.RECORDING_FAILED, room, recording_id=recording.recording_id
                )
            )

    async def wait_recordings(self) -> None:
        """Wait until the recordings being post-processed were handed over (tests, stop)."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    # --- the media relay (JanusRelay) -------------------------------------------------

    async def _member(self, consultation_id: UUID, identity: str) -> _Member:
        granted = await self._state.granted(consultation_id, identity)
        member = self._members.get((consultation_id, identity))
        token = self._token(consultation_id, identity, granted[0]) if granted else None
        if member is not None and not member.session.closed and member.token == token:
            return member
        if member is not None:  # removed (perhaps by another process), or granted anew
            del self._members[(consultation_id, identity)]
            await member.session.destroy()
        if token is None:
            raise Forbidden("not granted into this SFU room", code=ErrorCode.FORBIDDEN)
        if self._http is None:
            raise JanusError("the SFU is not started")
        session = await JanusSession.create(self._http, self._url)
        member = _Member(session, self.feed(consultation_id, identity), token)
        self._members[(consultation_id, identity)] = member
        return member

    async def publish(self, consultation_id: UUID, identity: str, sdp: str) -> str:
        """Join as a publisher with the participant's own token and publish ``sdp``
        (an offer); the SFU's answer."""
        room = self._room(consultation_id)
        granted = await self._state.granted(consultation_id, identity)
        if granted is not None and not RIGHTS[SfuRole(granted[1])].publish:
            raise Forbidden("this role may not publish", code=ErrorCode.FORBIDDEN)
        member = await self._member(consultation_id, identity)
        if member.publisher is None:
            handle = await member.session.attach(
                listener=functools.partial(self._heard, consultation_id, identity, member)
            )
            await member.session.request(
                handle,
                {
                    "request": "join",
                    "ptype": "publisher",
                    "room": room.number,
                    "id": member.feed,
                    "display": identity,
                    "token": member.token,
                },
            )
            member.publisher = handle
            await self._emit(self._event(SfuEventKind.JOINED, room, identity=identity))
        _, jsep = await member.session.request(
            member.publisher, {"request": "publish"}, {"type": "offer", "sdp": sdp}
        )
        if jsep is None:
            raise JanusError("no answer to a publish")
        return str(jsep["sdp"])

    def _heard(
        self, consultation_id: UUID, identity: str, member: _Member, event: dict[str, Any]
    ) -> None:
        """A kick, perhaps by another process's :meth:`remove`: this process drops the
        participant's own Janus session (it holds their relay)."""
        if not member.heard(event) or self._members.get((consultation_id, identity)) is not member:
            return
        del self._members[(consultation_id, identity)]
        room = self._room(consultation_id)

        async def drop() -> None:
            await member.session.destroy()
            await self._emit(self._event(SfuEventKind.LEFT, room, identity=identity))

        task = asyncio.create_task(drop(), name="janus-kicked")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_live(self, consultation_id: UUID, identity: str, within: float = 30) -> bool:
        """Whether the participant's published media reached Janus within ``within`` s."""
        member = self._members.get((consultation_id, identity))
        if member is None:
            return False
        try:
            await asyncio.wait_for(member.live.wait(), within)
        except TimeoutError:
            return False
        return True

    async def subscription(
        self, consultation_id: UUID, identity: str, feeds: list[str]
    ) -> Subscription:
        """Subscribe to the publishers ``feeds`` (identities) on a fresh subscriber
        handle: the SFU's offer, to answer with :meth:`answer`, and whose each of its
        streams is (VideoRoom's ``attached`` lists them by ``mid`` and ``feed_id``)."""
        room = self._room(consultation_id)
        member = await self._member(consultation_id, identity)
        if member.subscriber is not None:
            await member.session.detach(member.subscriber)
            member.subscriber = None
        handle = await member.session.attach()
        data, jsep = await member.session.request(
            handle,
            {
                "request": "join",
                "ptype": "subscriber",
                "room": room.number,
                "streams": [{"feed": self.feed(consultation_id, f)} for f in feeds],
                "token": member.token,
            },
        )
        member.subscriber = handle
        if jsep is None:
            raise JanusError("no offer for a subscription")
        return Subscription(str(jsep["sdp"]), self._streams(consultation_id, feeds, data))

    def _streams(
        self, consultation_id: UUID, feeds: list[str], attached: dict[str, Any]
    ) -> tuple[SubscribedStream, ...]:
        """The publisher (one of ``feeds``) of each media stream Janus listed."""
        whose = {self.feed(consultation_id, f): f for f in feeds}
        found = []
        for stream in attached.get("streams") or []:
            who = whose.get(stream.get("feed_id"))
            if who is not None and stream.get("mid") is not None:
                found.append(SubscribedStream(str(stream["mid"]), who))
        return tuple(found)

    async def answer(self, consultation_id: UUID, identity: str, sdp: str) -> None:
        """The participant's answer to its subscription offer (VideoRoom's ``start``)."""
        member = await self._member(consultation_id, identity)
        if member.subscriber is None:
            raise Conflict("subscribe first", code=ErrorCode.CONFLICT)
        await member.session.request(
            member.subscriber, {"request": "start"}, {"type": "answer", "sdp": sdp}
        )

    async def trickle(
        self, consultation_id: UUID, identity: str, target: str, candidate: dict[str, Any] | None
    ) -> None:
        member = await self._member(consultation_id, identity)
        handle = member.publisher if target == "publisher" else member.subscriber
        if handle is None:
            raise Conflict(f"no {target} to add a candidate to", code=ErrorCode.CONFLICT)
        await member.session.trickle(handle, candidate)

    async def leave_media(self, consultation_id: UUID, identity: str) -> None:
        member = self._members.pop((consultation_id, identity), None)
        if member is None:
            return
        await member.session.destroy()
        await self._emit(
            self._event(SfuEventKind.LEFT, self._room(consultation_id), identity=identity)
        )
