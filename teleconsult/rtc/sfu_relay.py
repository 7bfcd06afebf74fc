"""The SDP relay to an SFU that browsers do not reach themselves (Janus).

With Janus, ``/signal`` carries a participant's publish offer, subscription answer
and candidates, and the server forwards them on that participant's own Janus
session, joined with their own token (docs/rtc.md, "Why /signal relays the SDP").
LiveKit has no relay: its clients connect to LiveKit with their JoinGrant.
"""

from __future__ import annotations

from typing import Any, Protocol
from uuid import UUID


class SfuRelay(Protocol):
    async def publish(self, consultation_id: UUID, identity: str, sdp: str) -> str:
        """Publish the participant's media (an offer); the SFU's answer."""
        ...

    async def wait_live(self, consultation_id: UUID, identity: str, within: float = 30) -> bool:
        """Whether the participant's published media reached the SFU within ``within`` s."""
        ...

    async def subscribe(self, consultation_id: UUID, identity: str, feeds: list[str]) -> str:
        """Subscribe to the publishers ``feeds`` (identities); the SFU's offer."""
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
