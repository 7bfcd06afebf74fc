"""``TurnService``: TURN credentials for a user, for the REST route and for signaling.

The REST route calls :meth:`TurnService.issue` (rate-limited per user). The
signaling namespace calls :meth:`TurnService.for_user` for the join answer, and
again at :meth:`TurnService.refresh_at` to send fresh credentials before the
current ones expire during a long call: coturn refuses to refresh an allocation
whose username has expired, so a client that keeps the old credentials loses
its relay.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from uuid import UUID

from teleconsult.core.errors import RateLimited
from teleconsult.core.ratelimit import RateLimiter
from teleconsult.core.settings import TurnSettings
from teleconsult.turn.credentials import TurnCredentials, mint, refresh_at, user_ref

logger = logging.getLogger(__name__)

RATE_WINDOW = 60


class TurnService:
    """Mints TURN credentials. Stateless apart from the rate limiter: safe to share."""

    def __init__(
        self,
        settings: TurnSettings,
        *,
        limiter: RateLimiter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.secrets:
            raise ValueError("TurnSettings has no secret")
        self._settings = settings
        self._limiter = limiter
        self._clock = clock

    @property
    def settings(self) -> TurnSettings:
        return self._settings

    def user_ref(self, user_id: UUID) -> str:
        """The opaque reference coturn sees (and logs) for this user."""
        return user_ref(self._settings.user_ref_key, user_id)

    def for_user(self, user_id: UUID) -> TurnCredentials:
        """Fresh credentials signed with the newest secret; no rate limit (signaling)."""
        s = self._settings
        return mint(s.secrets[0], self.user_ref(user_id), now=self._clock(), ttl=s.ttl, uris=s.uris)

    async def issue(self, user_id: UUID) -> TurnCredentials:
        """Credentials for the REST route: at most ``max_per_minute`` per user."""
        # The limiter's keys may end up in Redis: the opaque reference, not the id.
        key = f"turn:credentials:{self.user_ref(user_id)}"
        decision = await self._limiter.hit(key, self._settings.max_per_minute, RATE_WINDOW)
        if not decision.allowed:
            raise RateLimited(
                "too many TURN credential requests; reuse the last ones until refresh_at",
                retry_after=decision.retry_after,
            )
        return self.for_user(user_id)

    def refresh_at(self, credentials: TurnCredentials) -> int:
        """The Unix time at which a client in a call should get fresh credentials."""
        return refresh_at(credentials, self._settings.refresh_before)

    def refresh_delay(self, credentials: TurnCredentials) -> float:
        """Seconds from now until :meth:`refresh_at` (0 when it has passed)."""
        return max(0.0, self.refresh_at(credentials) - self._clock())
