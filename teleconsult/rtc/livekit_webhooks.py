"""LiveKit's webhooks in: verified, deduplicated, merged in any order (docs/rtc.md).

A webhook is taken in only when all of these hold, else nothing changes:

1. its ``Authorization`` JWT is signed with our API key and secret and carries
   the base64 sha256 of the exact body (livekit-api's ``WebhookReceiver`` and
   ``TokenVerifier``) -- else 401 ``bad_signature``;
2. it names an event id and its ``created_at`` is within ``webhook_max_age``
   seconds of our clock -- else 409 (a stale or replayed event);
3. its event id was not taken in within the last 24 hours -- else 409.

The event is then merged into its room's state (``livekit_state.merge``: the
order and repetition of events do not matter), in the same transaction as the
event id and the audit rows of what changed. What changed (someone joined or
left, a recording ended) is handed to the SFU's event handler after commit.

``reconcile`` asks LiveKit itself (ListParticipants, ListEgress) when in
doubt, and ``tick`` is the reconciler: recordings with no news are looked up,
and ended as failed past their deadline, so each reaches a final state even if
its egress_ended never comes. Run ``tick`` from one task; ``receive`` is safe
concurrently (rows are locked per room).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

import asyncpg
from livekit.api import TokenVerifier, WebhookReceiver
from livekit.protocol.webhook import WebhookEvent

from teleconsult.audit.store import AuditEvent, AuditTrail
from teleconsult.core.errors import BadRequest, Conflict, ErrorCode, FieldError, Unauthenticated
from teleconsult.core.settings import LiveKitSettings
from teleconsult.rtc import livekit_store as store
from teleconsult.rtc.livekit_state import (
    EGRESS_EVENTS,
    PARTICIPANT_JOINED,
    PARTICIPANT_LEFT,
    Change,
    Egress,
    EgressStatus,
    Listed,
    LkEvent,
    RoomState,
    changes,
    consultation_of,
    doubtful,
    egress_of,
    give_up,
    mark_announced,
    merge,
    merge_egress,
    overdue,
    reconcile_participants,
    unannounced,
)
from teleconsult.rtc.sfu import SfuEvent, SfuEventKind

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024


class LiveKitLookups(Protocol):
    """What the intake asks LiveKit (``LiveKitSfu`` answers it)."""

    async def list_participants(self, room: str) -> list[Listed]: ...

    async def list_egress(self, room: str, egress_id: str | None = None) -> list[Egress]: ...


@dataclass(frozen=True)
class Taken:
    """The answer to one webhook."""

    event_id: str
    event: str
    room: str | None
    change: Change


def parse_event(event: WebhookEvent) -> LkEvent:
    """A verified WebhookEvent, reduced to what the room state needs."""
    room = event.room.name or event.egress_info.room_name
    identity = sid = None
    joined_ms = 0
    if event.HasField("participant"):
        identity = event.participant.identity or None
        sid = event.participant.sid or None
        joined_ms = int(event.participant.joined_at_ms or event.participant.joined_at * 1000)
    egress = egress_of(event.egress_info) if event.HasField("egress_info") else None
    return LkEvent(
        event_id=event.id,
        event=event.event,
        room=room,
        created_at=int(event.created_at),
        identity=identity,
        sid=sid,
        joined_ms=joined_ms,
        egress=egress,
    )


class LiveKitIntake:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: LiveKitSettings,
        *,
        audit: AuditTrail,
        lookups: LiveKitLookups,
        deliver: Callable[[SfuEvent], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._audit = audit
        self._lookups = lookups
        self._deliver = deliver
        self._clock = clock
        self._receiver = WebhookReceiver(TokenVerifier(settings.api_key, settings.api_secret))

    # -- verification (pure but for the clock) --------------------------------------------

    def verify(self, body: bytes, authorization: str | None) -> WebhookEvent:
        """The webhook, if signed by LiveKit for this exact body and fresh; else raise."""
        if not authorization:
            raise Unauthenticated("no Authorization token", code=ErrorCode.BAD_SIGNATURE)
        token = authorization.removeprefix("Bearer ").strip()
        try:
            text = body.decode("utf-8")
            event = self._receiver.receive(text, token)
        except Exception:  # jwt, base64, hash or JSON: all mean "not LiveKit's"
            raise Unauthenticated(
                "the webhook's signature does not verify", code=ErrorCode.BAD_SIGNATURE
            ) from None
        now = self._clock()
        if not event.id or not event.event:
            raise Unauthenticated("the webhook names no event id", code=ErrorCode.BAD_SIGNATURE)
        if abs(now - event.created_at) > self._settings.webhook_max_age:
            raise Conflict("the webhook is too old (or from the future); refused as a replay")
        return event

    # -- intake ---------------------------------------------------------------------------

    async def receive(self, body: bytes, authorization: str | None) -> Taken:
        event = self.verify(body, authorization)
        lk = parse_event(event)
        _check_fields(lk)
        consultation_id = consultation_of(lk.room) if lk.room else None
        created = datetime.fromtimestamp(event.created_at, UTC)
        async with self._pool.acquire() as conn, conn.transaction():
            if not await store.remember_event(
                conn, event.id, event.event, lk.room or None, created
            ):
                raise Conflict("this webhook was already taken in; refused as a replay")
            if consultation_id is None:  # not one of our rooms: noted, nothing to merge
                return Taken(event.id, event.event, lk.room or None, Change())
            before = await store.lock_room(conn, lk.room, consultation_id)
            after = merge(before, lk)
            change = changes(before, after)
            await store.save_room(conn, lk.room, after)
            await self._audit_change(conn, consultation_id, change, source=event.event)
        await self._announce(lk.room, consultation_id, change, lk.created_at, event.id)
        if doubtful(before, lk):  # an event was lost or overtaken: ask LiveKit now
            try:
                change = _joined(change, await self.reconcile(lk.room))
            except Exception:  # the reconciler's tick asks again
                logger.warning(
                    "reconciling LiveKit room after a doubtful event failed", exc_info=True
                )
        return Taken(event.id, event.event, lk.room, change)

    async def reconcile(self, room: str) -> Change:
        """Merges LiveKit's own ListParticipants and ListEgress answers for ``room``."""
        consultation_id = consultation_of(room)
        if consultation_id is None:
            return Change()
        at_ms = int(self._clock() * 1000)
        listed = await self._lookups.list_participants(room)
        egresses = await self._lookups.list_egress(room)
        return await self._update(
            room, consultation_id, "reconcile", lambda s: _with_lists(s, listed, egresses, at_ms)
        )

    async def tick(self) -> int:
        """One reconciler pass over rooms with unfinished recordings; answers how many ended."""
        now = self._clock()
        now_ns = int(now * 1e9)
        check_ns = self._settings.egress_check_seconds * 1_000_000_000
        deadline_ns = self._settings.egress_deadline_seconds * 1_000_000_000
        quiet_since = datetime.fromtimestamp(now - self._settings.egress_check_seconds, UTC)
        async with self._pool.acquire() as conn:
            await store.forget_old_events(conn)
            rooms = await store.rooms_with_open_egress(conn)
            states = {room: await store.load_room(conn, room) for room in rooms}
            occupied = await store.quiet_occupied_rooms(conn, quiet_since)
        # Someone in a room with no news for a while: did their participant_left get lost?
        ended = 0
        for room in occupied:
            try:
                ended += len((await self.reconcile(room)).finished)
            except Exception:  # LiveKit down: the next tick asks again
                logger.warning("reconciling a quiet LiveKit room failed", exc_info=True)
        for room, state in states.items():
            consultation_id = consultation_of(room)
            if state is None or consultation_id is None:
                continue
            for egress_id in overdue(state, now_ns, check_ns):
                ended += await self._settle(room, state, egress_id, now_ns, deadline_ns)
            # Ends the handler did not take (it failed, or the process stopped after the
            # commit): hand them on again, once the live path has had its chance.
            again = tuple(e for e in unannounced(state) if now_ns - e.updated_ns >= check_ns)
            if again:
                change = Change(finished=again)
                await self._announce(room, consultation_id, change, int(now), "retry")
        return ended

    async def _settle(
        self, room: str, state: RoomState, egress_id: str, now_ns: int, deadline_ns: int
    ) -> int:
        consultation_id = consultation_of(room)
        if consultation_id is None:
            return 0
        try:
            listed = await self._lookups.list_egress(room, egress_id)
        except Exception:  # LiveKit down: the deadline still holds
            logger.warning("ListEgress failed for %s", egress_id, exc_info=True)
            listed = []
        late = now_ns - state.egress[egress_id].updated_ns >= deadline_ns

        def settle(s: RoomState) -> RoomState:
            for egress in listed:
                s = merge_egress(s, egress)
            if late:
                s = give_up(s, egress_id, now_ns, "no final state from LiveKit before the deadline")
            return s

        change = await self._update(room, consultation_id, "reconcile", settle)
        return len(change.finished)

    async def _update(
        self,
        room: str,
        consultation_id: UUID,
        source: str,
        how: Callable[[RoomState], RoomState],
    ) -> Change:
        async with self._pool.acquire() as conn, conn.transaction():
            before = await store.lock_room(conn, room, consultation_id)
            after = how(before)
            change = changes(before, after)
            if change or after != before:
                await store.save_room(conn, room, after)
                await self._audit_change(conn, consultation_id, change, source=source)
        await self._announce(
            room, consultation_id, change, int(self._clock()), f"{source}:{self._clock():.6f}"
        )
        return change

    async def _audit_change(
        self, conn: asyncpg.Connection, consultation_id: UUID, change: Change, *, source: str
    ) -> None:
        if not change:
            return
        clinic_id = await store.clinic_of(conn, consultation_id)
        events: list[AuditEvent] = []
        for action, identities in (
            ("rtc.participant.joined", change.joined),
            ("rtc.participant.left", change.left),
        ):
            events.extend(
                AuditEvent(
                    action=action,
                    clinic_id=clinic_id,
                    object_type="consultation",
                    object_id=str(consultation_id),
                    detail={"backend": "livekit", "identity": identity[:200], "source": source},
                )
                for identity in sorted(identities)
            )
        events.extend(
            AuditEvent(
                action="rtc.recording.finished",
                outcome="success" if e.status == EgressStatus.COMPLETE else "failure",
                clinic_id=clinic_id,
                object_type="consultation",
                object_id=str(consultation_id),
                detail={"backend": "livekit", "egress_id": e.egress_id, "status": e.status.name},
            )
            for e in change.finished
        )
        await self._audit.record_many(events, conn)

    async def _announce(
        self, room: str, consultation_id: UUID, change: Change, at: int, origin: str
    ) -> None:
        """Hands what changed to the SFU's handler, after the commit.

        A recording's end is handed on at least once: it is marked taken only
        when the handler returned, and ``tick`` hands on the unmarked ones again,
        so the handler must be idempotent on ``recording_id`` (the event id of a
        recording's end is the same every time). Joins and leaves are handed on
        once; a failing handler is logged.
        """
        when = datetime.fromtimestamp(at, UTC)
        out: list[SfuEvent] = []
        for kind, identities in (
            (SfuEventKind.JOINED, change.joined),
            (SfuEventKind.LEFT, change.left),
        ):
            out.extend(
                SfuEvent(f"{origin}:{kind}:{i}", kind, consultation_id, when, identity=i)
                for i in sorted(identities)
            )
        for e in change.finished:
            ok = e.status == EgressStatus.COMPLETE and e.file_path is not None
            out.append(
                SfuEvent(
                    f"livekit:recording:{e.egress_id}",
                    SfuEventKind.RECORDING_FINISHED if ok else SfuEventKind.RECORDING_FAILED,
                    consultation_id,
                    when,
                    recording_id=e.egress_id,
                    file_path=e.file_path if ok else None,
                )
            )
        taken: list[str] = []
        for event in out:
            try:
                await self._deliver(event)
            except Exception:
                logger.exception("the SFU event handler failed on %s", event.kind)
                continue
            if event.recording_id is not None:
                taken.append(event.recording_id)
        if taken:
            async with self._pool.acquire() as conn, conn.transaction():
                state = await store.lock_room(conn, room, consultation_id)
                await store.save_room(conn, room, mark_announced(state, taken))


def _check_fields(event: LkEvent) -> None:
    """Names the store keeps must fit it: a signed but odd event is a 400, never a 500."""
    texts = {
        "id": event.event_id,
        "event": event.event,
        "room": event.room,
        "identity": event.identity or "",
        "sid": event.sid or "",
        "egress_id": event.egress.egress_id if event.egress else "",
        "file": (event.egress.file_path or "") if event.egress else "",
    }
    for name, text in texts.items():
        limit = 4096 if name == "file" else (64 if name == "event" else 200)
        if len(text) > limit or "\x00" in text:
            raise BadRequest(
                f"the webhook's {name} is longer than {limit} characters or holds NUL",
                fields=[FieldError(field=f"body.{name}", message="too long or holds NUL")],
            )


def _joined(first: Change, second: Change) -> Change:
    """Two changes one after the other, as one."""
    return Change(
        joined=(first.joined - second.left) | second.joined,
        left=(first.left - second.joined) | second.left,
        finished=first.finished + second.finished,
    )


def _with_lists(
    state: RoomState, listed: Sequence[Listed], egresses: Sequence[Egress], at_ms: int
) -> RoomState:
    state = reconcile_participants(state, listed, at_ms)
    for egress in egresses:
        state = merge_egress(state, egress)
    return state


__all__ = [
    "EGRESS_EVENTS",
    "MAX_BODY_BYTES",
    "PARTICIPANT_JOINED",
    "PARTICIPANT_LEFT",
    "LiveKitIntake",
    "LiveKitLookups",
    "Taken",
    "parse_event",
]
