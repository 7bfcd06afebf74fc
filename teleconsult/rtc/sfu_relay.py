"""The SDP relay to an SFU that browsers do not reach themselves (Janus).

With Janus, ``/signal`` carries a participant's publish offer, subscription answer
and candidates, and the server forwards them on that participant's own Janus
session, joined with their own token (docs/rtc.md, "Why /signal relays the SDP").
LiveKit has no relay: its clients connect to LiveKit with their JoinGrant.

One subscription carries every other publisher's tracks on one connection, so it says
which of its streams (by the SDP ``mid``) is whose: the page shows one tile per person.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID


@dataclass(frozen=True)
class SubscribedStream:
    """One media stream of a subscription: its ``mid`` in the SFU's offer, and the
    identity of the publisher it comes from."""

    mid: str
    identity: str


@dataclass(frozen=True)
class Subscription:
    """The SFU's offer for a subscription, and whose each of its streams is."""

    sdp: str
    streams: tuple[SubscribedStream, ...]


class SfuRelay(Protocol):
    async def publish(self, consultation_id: UUID, identity: str, sdp: str) -> str:
        """Publish the participant's media (an offer); the SFU's answer."""
        ...

    async def wait_live(self, consultation_id: UUID, identity: str, within: float = 30) -> bool:
        """Whether the participant's published media reached the SFU within ``within`` s."""
        ...

    async def subscription(
        self, consultation_id: UUID, identity: str, feeds: list[str]
    ) -> Subscription:
        """Subscribe to the publishers ``feeds`` (identities); the SFU's offer, with the
        publisher of each of its streams."""
        ...

    async def answer(self, consultation_id: UUID, identity: str, sdp: str) -> None:
        """The participant's answer to its subscription offer."""
        ...

    async def trickle(
        self, consultation_id: UUID, identity: str, target: str, candidate: dict[str, Any] | None
    ) -> None:
        """A candidate for the ``publisher`` or ``subscriber`` connection (None: done)."""
        ...

    async def leave_media(self, consultation_id: UUID, identity: str) -> None: ...
