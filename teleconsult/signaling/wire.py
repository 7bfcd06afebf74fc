"""Payloads of the /signal namespace, checked strictly (docs/signaling.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from teleconsult.realtime.acks import Event, Id

RoomId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{16,64}$")]
PeerId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]


class JoinRequest(Event):
    room_id: RoomId
    peer_id: PeerId | None = None


class PeerRequest(Event):
    peer_id: PeerId


class InviteRequest(Event):
    user_id: Id


class Candidate(Event):
    candidate: Annotated[str, StringConstraints(max_length=2048)]
    sdpMid: Annotated[str, StringConstraints(max_length=64)] | None = None  # noqa: N815 - WebRTC's name
    sdpMLineIndex: Annotated[int, Field(ge=0, le=255)] | None = None  # noqa: N815


class SignalRequest(Event):
    to: PeerId
    kind: Literal["offer", "answer", "candidate"]
    sdp: str | None = None
    candidate: Candidate | None = None
    restart: bool = False

    @model_validator(mode="after")
    def _complete(self) -> SignalRequest:
        if self.kind in ("offer", "answer") and not self.sdp:
            raise ValueError(f"an {self.kind} needs its sdp")
        if self.kind == "candidate" and self.candidate is None:
            raise ValueError("a candidate message needs its candidate")
        return self


class SfuRequest(Event):
    """A message for the SFU, relayed on the sender's own SFU session (Janus)."""

    kind: Literal["publish", "subscribe", "answer", "candidate", "leave"]
    sdp: str | None = None
    peers: Annotated[list[PeerId], Field(max_length=16)] = []
    target: Literal["publisher", "subscriber"] = "publisher"
    candidate: Candidate | None = None

    @model_validator(mode="after")
    def _complete(self) -> SfuRequest:
        if self.kind in ("publish", "answer") and not self.sdp:
            raise ValueError(f"a {self.kind} needs its sdp")
        if self.kind == "subscribe" and not self.peers:
            raise ValueError("a subscribe names the peers to receive")
        return self


class RecordRequest(Event):
    on: bool
