"""One step of ``bench.chat_delivery``: what a window at one offered rate measured."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.api_requests import NOISE_LIMIT
from bench.loadgen import percentile

ms = 1e3


@dataclass
class Step:
    """One offered rate: what the window measured."""

    target: str
    rate: float
    scheduled: int = 0  # messages due in the measured window
    delivered: int = 0  # of those, delivered to the other end (at any time before the drain)
    latencies: list[float] = field(default_factory=list)  # seconds; undelivered: inf
    ack_latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    generator_cpu: float = 0.0
    server_cpu: float = 0.0
    database_cpu: float = 0.0
    other_cpu: float = 0.0
    cores: dict[str, float] = field(default_factory=dict)
    max_send_lag: float = 0.0
    wall: float = 0.0
    passed: bool = False

    retries: int = 0  # noisy failed attempts discarded before this one

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)

    @property
    def noisy(self) -> bool:
        return self.other_cpu > NOISE_LIMIT

    def line(self, budget: float) -> str:
        verdict = "ok" if self.passed else "over budget"
        if self.errors:
            verdict += f" errors {dict(self.errors)}"
        if self.noisy:
            verdict += f" (noisy: others {self.other_cpu:.0%})"
        return (
            f"[{self.target}] {self.rate:8.0f}/s  p50 {self.p(50) * ms:7.2f} ms  "
            f"p99 {self.p(99) * ms:8.2f} ms (budget {budget * ms:g})  "
            f"delivered {self.delivered}/{self.scheduled}  gen {self.generator_cpu:4.0%}  "
            f"server {self.server_cpu:4.0%}  db {self.database_cpu:4.0%}  -> {verdict}"
        )


class StepRun:
    """Sends one step's messages on schedule and records acks and deliveries by index."""

    def __init__(self, base: int, count: int) -> None:
        self.base = base
        self.count = count
        self.due = [0.0] * count
        self.delivered_at = [math.nan] * count
        self.acked_at = [math.nan] * count
        self.errors: Counter[str] = Counter()
        self.outstanding = 2 * count  # one ack and one delivery each
        self.idle = asyncio.Event()
        self.lost_links = 0

    def ack(self, index: int, error: str | None) -> None:
        j = index - self.base
        if 0 <= j < self.count and math.isnan(self.acked_at[j]):
            self.acked_at[j] = time.perf_counter()
            if error is not None:
                self.errors[error] += 1
                self._done()  # it will not be delivered
            self._done()

    def deliver(self, index: int) -> None:
        j = index - self.base
        if 0 <= j < self.count and math.isnan(self.delivered_at[j]):
            self.delivered_at[j] = time.perf_counter()
            self._done()

    def lost(self) -> None:
        self.lost_links += 1
        self.idle.set()

    def _done(self) -> None:
        self.outstanding -= 1
        if self.outstanding <= 0:
            self.idle.set()
