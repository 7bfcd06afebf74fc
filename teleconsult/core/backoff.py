"""Capped, jittered exponential backoff for reconnect loops (server listeners and clients)."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``first`` up to ``most``, each jittered to 50–150 %.

    Not safe for concurrent use: one reconnect loop owns one instance.
    """

    def __init__(self, first: float = 0.2, most: float = 10.0) -> None:
        self._first, self._most, self._next = first, most, first

    def reset(self) -> None:
        self._next = self._first

    def delay(self) -> float:
        value = self._next * (0.5 + random.random())  # noqa: S311 - jitter, not crypto
        self._next = min(self._most, self._next * 2)
        return value
