"""Per-connection event budgets for the real-time transports."""

from __future__ import annotations

import time

from teleconsult.core.errors import RateLimited


class TokenBucket:
    """Per-connection event budget: ``rate`` per second, bursts up to ``burst``."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = time.monotonic()

    def take(self) -> float:
        """0 when an event may go now, else the seconds until one may."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


def rate_limited(wait: float) -> RateLimited:
    return RateLimited(
        "too many events on this connection; slow down", retry_after=int(wait + 0.999)
    )
