"""LiveKit room state as pure functions over events (docs/rtc.md, "Order-robust intake").

LiveKit's webhooks come out of order, twice, or not at all (a participant_left
before its participant_joined; no egress_ended). So the state of a room is not
a sequence of transitions but a *merge* of facts that does not depend on the
order the facts arrive in, nor on how often:

- a participant's connection (its ``sid``) joined at ``joined_ms``; a
  ``participant_left`` for that sid is final for it. An identity is in the room
  when its newest connection (by ``joined_ms``) has not left. A left before its
  joined, a duplicate, a reconnect with a new sid whose old sid's left comes
  late: all merge to the same answer.
- an egress (recording) has a status; a final status (complete, failed,
  aborted, limit reached) beats any non-final one, and among equals the newest
  ``updated_ns`` wins. Once final it stays final.

``merge`` is commutative, associative and idempotent over events (the
contract tests check it over permutations and duplicates). What a dropped
event hides, ``reconcile_participants`` and ``merge_egress`` put back from
LiveKit's own ListParticipants and ListEgress answers, and ``give_up`` ends a
recording whose final state never comes.

Nothing here does I/O; ``to_json``/``from_json`` are how the store keeps it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any
from uuid import UUID

from livekit.protocol import egress as egress_pb


class EgressStatus(IntEnum):
    """livekit.EgressStatus, by value (livekit-protocol egress.proto)."""

    STARTING = 0
    ACTIVE = 1
    ENDING = 2
    COMPLETE = 3
    FAILED = 4
    ABORTED = 5
    LIMIT_REACHED = 6

    @property
    def final(self) -> bool:
        return self >= EgressStatus.COMPLETE


# LiveKit's participant and egress event names (webhook ``event``).
PARTICIPANT_JOINED = "participant_joined"
PARTICIPANT_LEFT = "participant_left"
EGRESS_EVENTS = ("egress_started", "egress_updated", "egress_ended")
ROOM_STARTED = "room_started"
ROOM_FINISHED = "room_finished"
KNOWN_EVENTS = (PARTICIPANT_JOINED, PARTICIPANT_LEFT, *EGRESS_EVENTS, ROOM_STARTED, ROOM_FINISHED)


@dataclass(frozen=True)
class Connection:
    """One connection (sid) of an identity."""

    joined_ms: int
    left: bool


@dataclass(frozen=True)
class Egress:
    egress_id: str
    status: EgressStatus
    updated_ns: int
    file_path: str | None = None
    error: str = ""

    def rank(self) -> tuple[bool, int, int]:
        return (self.status.final, self.updated_ns, int(self.status))


# --- names and LiveKit's messages ---------------------------------------------------

ROOM_PREFIX = "tc-"


def room_name(consultation_id: UUID) -> str:
    return f"{ROOM_PREFIX}{consultation_id}"


def consultation_of(room: str) -> UUID | None:
    """The consultation a LiveKit room name belongs to, or None for a room not ours."""
    if not room.startswith(ROOM_PREFIX):
        return None
    try:
        return UUID(room.removeprefix(ROOM_PREFIX))
    except ValueError:
        return None


def egress_of(info: egress_pb.EgressInfo) -> Egress:
    """Our view of an EgressInfo (a webhook's or a ListEgress answer's)."""
    path = None
    if info.file_results:
        path = info.file_results[-1].filename or None
    elif info.HasField("file") and info.file.filename:
        path = info.file.filename
    updated = info.updated_at or info.ended_at or info.started_at
    try:
        status = EgressStatus(int(info.status))
    except ValueError:  # a status newer than this code: not final; the reconciler decides
        status = EgressStatus.ACTIVE
    return Egress(
        egress_id=info.egress_id,
        status=status,
        updated_ns=int(updated),
        file_path=path,
        error=info.error[:500],
    )


@dataclass(frozen=True)
class LkEvent:
    """A webhook, reduced to what the state needs."""

    event_id: str
    event: str
    room: str
    created_at: int  # unix seconds, LiveKit's own event time
    identity: str | None = None
    sid: str | None = None
    joined_ms: int = 0
    egress: Egress | None = None


@dataclass(frozen=True)
class RoomState:
    # identity -> sid -> connection
    connections: Mapping[str, Mapping[str, Connection]] = field(default_factory=dict)
    egress: Mapping[str, Egress] = field(default_factory=dict)
    # Newest room_finished time (unix seconds), if any; a room_started after it reopens.
    finished_at: int | None = None
    started_at: int | None = None
    # Our own bookkeeping, not a LiveKit fact: final recordings whose end the SFU's
    # handler has taken (the reconciler hands on the others again).
    announced: frozenset[str] = frozenset()

    def present(self) -> frozenset[str]:
        """The identities in the room now, by the facts merged so far."""
        found = set()
        for identity, sids in self.connections.items():
            if sids:
                _, newest = max(sids.items(), key=lambda item: (item[1].joined_ms, item[0]))
                if not newest.left:
                    found.add(identity)
        return frozenset(found)

    @property
    def closed(self) -> bool:
        if self.finished_at is None:
            return False
        return self.started_at is None or self.finished_at >= self.started_at


def _merge_connection(old: Connection | None, new: Connection) -> Connection:
    if old is None:
        return new
    return Connection(joined_ms=max(old.joined_ms, new.joined_ms), left=old.left or new.left)


def _merge_egress(old: Egress | None, new: Egress) -> Egress:
    if old is None:
        return new
    winner, other = (new, old) if new.rank() > old.rank() else (old, new)
    # A file name may be told by an earlier update only; keep it.
    if winner.file_path is None and other.file_path is not None:
        winner = replace(winner, file_path=other.file_path)
    return winner


def _with_connection(state: RoomState, identity: str, sid: str, conn: Connection) -> RoomState:
    sids = dict(state.connections.get(identity, {}))
    sids[sid] = _merge_connection(sids.get(sid), conn)
    connections = dict(state.connections)
    connections[identity] = sids
    return replace(state, connections=connections)


def merge_egress(state: RoomState, egress: Egress) -> RoomState:
    """Merge one egress fact (a webhook's or a ListEgress answer's)."""
    merged = dict(state.egress)
    merged[egress.egress_id] = _merge_egress(merged.get(egress.egress_id), egress)
    return replace(state, egress=merged)


def merge(state: RoomState, event: LkEvent) -> RoomState:
    """The state with one more event; order- and repetition-independent."""
    if event.event in (PARTICIPANT_JOINED, PARTICIPANT_LEFT):
        if not event.identity or not event.sid:
            return state
        # A left that overtook its joined still knows when the connection joined
        # (ParticipantInfo rides along); else its own time stands in.
        joined_ms = event.joined_ms or event.created_at * 1000
        conn = Connection(joined_ms=joined_ms, left=event.event == PARTICIPANT_LEFT)
        return _with_connection(state, event.identity, event.sid, conn)
    if event.event in EGRESS_EVENTS and event.egress is not None:
        return merge_egress(state, event.egress)
    if event.event == ROOM_FINISHED:
        return replace(state, finished_at=max(state.finished_at or 0, event.created_at))
    if event.event == ROOM_STARTED:
        return replace(state, started_at=max(state.started_at or 0, event.created_at))
    return state


def doubtful(state: RoomState, event: LkEvent) -> bool:
    """Whether ``event`` shows that some event was lost or overtaken: time to ask LiveKit.

    A left for a connection never seen joining, a joined for a connection that
    already left, or a recording fact older than what is known.
    """
    if event.event in (PARTICIPANT_JOINED, PARTICIPANT_LEFT) and event.identity and event.sid:
        known = state.connections.get(event.identity, {}).get(event.sid)
        if event.event == PARTICIPANT_LEFT:
            return known is None
        return known is not None and known.left
    if event.event in EGRESS_EVENTS and event.egress is not None:
        old = state.egress.get(event.egress.egress_id)
        return old is not None and event.egress.rank() < old.rank()
    return False


def fold(events: Iterable[LkEvent], state: RoomState | None = None) -> RoomState:
    result = state or RoomState()
    for event in events:
        result = merge(result, event)
    return result


@dataclass(frozen=True)
class Listed:
    """A participant as ListParticipants answers it."""

    identity: str
    sid: str
    joined_ms: int
    publishing: bool = False


def reconcile_participants(state: RoomState, listed: Iterable[Listed], at_ms: int) -> RoomState:
    """Merge a ListParticipants answer taken at ``at_ms``.

    Listed connections are live. A connection we believe live, that joined
    before the listing and is not in it, left (its participant_left was
    dropped). One that joined after the listing was taken is left alone.
    """
    live = {(p.identity, p.sid) for p in listed}
    result = state
    for p in listed:
        result = _with_connection(result, p.identity, p.sid, Connection(p.joined_ms, left=False))
    for identity, sids in state.connections.items():
        for sid, conn in sids.items():
            if not conn.left and conn.joined_ms <= at_ms and (identity, sid) not in live:
                result = _with_connection(result, identity, sid, replace(conn, left=True))
    return result


def unannounced(state: RoomState) -> list[Egress]:
    """Final recordings whose end the handler has not taken yet."""
    return [
        e
        for egress_id, e in sorted(state.egress.items())
        if e.status.final and egress_id not in state.announced
    ]


def mark_announced(state: RoomState, egress_ids: Iterable[str]) -> RoomState:
    return replace(state, announced=state.announced | frozenset(egress_ids))


def needs_attention(state: RoomState) -> bool:
    """Some recording is not final, or its end was not handed on: the reconciler's list."""
    return any(not e.status.final for e in state.egress.values()) or bool(unannounced(state))


def overdue(state: RoomState, now_ns: int, after_ns: int) -> list[str]:
    """Egress ids still not final with no news for ``after_ns``: ask ListEgress."""
    return sorted(
        e.egress_id
        for e in state.egress.values()
        if not e.status.final and now_ns - e.updated_ns >= after_ns
    )


def give_up(state: RoomState, egress_id: str, now_ns: int, reason: str) -> RoomState:
    """End a recording LiveKit never finished (nor lists any more) as failed."""
    old = state.egress.get(egress_id)
    if old is None or old.status.final:
        return state
    return merge_egress(
        state,
        Egress(egress_id, EgressStatus.FAILED, max(now_ns, old.updated_ns), old.file_path, reason),
    )


@dataclass(frozen=True)
class Change:
    """What became true between two states: who came, who went, which recordings ended."""

    joined: frozenset[str] = frozenset()
    left: frozenset[str] = frozenset()
    finished: tuple[Egress, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.joined or self.left or self.finished)


def changes(before: RoomState, after: RoomState) -> Change:
    was, now = before.present(), after.present()
    finished = tuple(
        e
        for egress_id, e in sorted(after.egress.items())
        if e.status.final
        and not (egress_id in before.egress and before.egress[egress_id].status.final)
    )
    return Change(joined=now - was, left=was - now, finished=finished)


def summary(state: RoomState) -> tuple[frozenset[str], dict[str, tuple[bool, str | None]]]:
    """The observable outcome: who is in, and each recording's finality and file."""
    return state.present(), {
        egress_id: (e.status.final, e.file_path) for egress_id, e in state.egress.items()
    }


# --- storage form ---------------------------------------------------------------------


def to_json(state: RoomState) -> dict[str, Any]:
    return {
        "connections": {
            identity: {sid: [c.joined_ms, c.left] for sid, c in sids.items()}
            for identity, sids in state.connections.items()
        },
        "egress": {
            egress_id: [int(e.status), e.updated_ns, e.file_path, e.error]
            for egress_id, e in state.egress.items()
        },
        "finished_at": state.finished_at,
        "started_at": state.started_at,
        "announced": sorted(state.announced),
    }


def from_json(document: Mapping[str, Any]) -> RoomState:
    return RoomState(
        connections={
            identity: {sid: Connection(int(c[0]), bool(c[1])) for sid, c in sids.items()}
            for identity, sids in document.get("connections", {}).items()
        },
        egress={
            egress_id: Egress(egress_id, EgressStatus(int(e[0])), int(e[1]), e[2], str(e[3]))
            for egress_id, e in document.get("egress", {}).items()
        },
        finished_at=document.get("finished_at"),
        started_at=document.get("started_at"),
        announced=frozenset(document.get("announced", ())),
    )
