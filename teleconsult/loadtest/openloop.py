"""Open-loop scheduling: when each virtual user acts, and ramping connections up.

Each user acts at ``t0 + phase + k / rate`` for every ``k`` that falls inside the
duration, ``phase`` being a random offset in ``[0, 1 / rate)`` so users do not
act in lock-step. A user acts once at a time, in order; one that falls behind
(the server answers slower than the schedule) acts again at once, and since
latency is measured from the *scheduled* time, the backlog shows in the
latency instead of silently lowering the rate (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
Action = Callable[[int, float], Awaitable[None]]  # (k, scheduled loop time)


@dataclass(frozen=True)
class Schedule:
    t0: float  # the event loop's clock (monotonic) at the run's start
    rate: float  # actions per user per second
    duration: float  # seconds in which actions are scheduled

    def phase(self, rng: random.Random) -> float:
        return rng.uniform(0.0, 1.0 / self.rate)

    def count(self, phase: float) -> int:
        """How many actions a user with this phase has in the duration."""
        if phase >= self.duration:
            return 0
        return math.ceil((self.duration - phase) * self.rate - 1e-9)

    def at(self, phase: float, k: int) -> float:
        return self.t0 + phase + k / self.rate


class Lag:
    """How late actions started against their schedule (the senders' backlog)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.behind = 0  # actions that started more than 10 ms late

    def note(self, seconds: float) -> None:
        self.worst = max(self.worst, seconds)
        if seconds > 0.010:
            self.behind += 1


async def run_user(schedule: Schedule, phase: float, action: Action, lag: Lag) -> None:
    """Call ``action(k, scheduled)`` for each of this user's slots, one after another."""
    loop = asyncio.get_running_loop()
    for k in range(schedule.count(phase)):
        scheduled = schedule.at(phase, k)
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        lag.note(loop.time() - scheduled)
        await action(k, scheduled)


async def ramp(
    items: Sequence[T],
    start: Callable[[T], Awaitable[None]],
    seconds: float,
    rng: random.Random,
) -> list[BaseException | None]:
    """Start ``items`` spread over ``seconds``, each at its share of the ramp plus jitter.

    Returns each item's failure (or None), in order; none is raised.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    step = seconds / len(items) if items else 0.0

    async def one(i: int, item: T) -> BaseException | None:
        await asyncio.sleep(max(0.0, began + i * step + rng.uniform(0.0, step) - loop.time()))
        try:
            await start(item)
        except Exception as exc:  # reported by the caller, with the others
            return exc
        return None

    return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))
