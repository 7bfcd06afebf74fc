"""Message-rate steps and the search for the highest rate within a p99 budget.

Shared by ``bench.chat_delivery`` and ``bench.mqtt_path``. A *step* offers one rate
in open loop (``bench.harness.load.open_loop``); :class:`Deliveries` keeps, by
message index, when each message was due, acknowledged and delivered. Latency
runs from the *due* time to the delivery; a message that never arrives counts as
infinitely late. A step passes when p99 <= budget and every message was acked
``ok``. The search doubles the rate from a start until a step fails, bisects
(geometric mean) until the passing and failing rates are within a resolution, and
runs the best passing rate again for longer: that *confirm* run is the row.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.harness.latency import Recorder
from bench.harness.load import GENERATOR_LIMIT, SEND_LAG_LIMIT, Schedule, say
from bench.harness.report import Row

LATE_SHARE = 0.01  # a search step is given up once this share of it came late


class Deliveries:
    """Due, acked and delivered times of one step's messages, by index (``base`` up)."""

    def __init__(
        self, base: int, count: int, budget: float, *, first: int = 0, acks: bool = True
    ) -> None:
        self.base, self.count, self.budget, self.acks = base, count, budget, acks
        self.first = first  # the first measured message: only those count as late
        self.due = [math.nan] * count
        self.acked = [math.nan] * count
        self.delivered = [math.nan] * count
        self.errors: Counter[str] = Counter()
        self.refused = 0
        self.late = 0
        self.oldest = 0  # every message before it has arrived
        self.sent = 0
        self.idle = asyncio.Event()
        self.outstanding = 0

    def send(self, j: int, due: float) -> None:
        self.due[j] = due
        self.sent = j + 1
        self.outstanding += 2 if self.acks else 1
        if not self.acks:  # nothing acknowledges: a message counts as acked once sent
            self.acked[j] = due
        self.idle.clear()

    def ack(self, index: int, error: str | None) -> None:
        j = index - self.base
        if 0 <= j < self.count and math.isnan(self.acked[j]):
            self.acked[j] = time.perf_counter()
            if error is not None:
                self.errors[error] += 1
                self.refused += 1
                self._done()  # it will not be delivered
            self._done()

    def deliver(self, index: int) -> None:
        j = index - self.base
        if 0 <= j < self.count and math.isnan(self.delivered[j]):
            now = self.delivered[j] = time.perf_counter()
            self.late += j >= self.first and now - self.due[j] > self.budget
            self._done()

    def lost_link(self) -> None:
        self.errors["connection_lost"] += 1
        self.idle.set()

    def _done(self) -> None:
        self.outstanding -= 1
        if self.outstanding <= 0:
            self.idle.set()

    def hopeless(self, measured: int) -> bool:
        """Over budget for sure: many came late, or the oldest is long overdue."""
        while self.oldest < self.sent and not math.isnan(self.delivered[self.oldest]):
            self.oldest += 1
        stalled = self.oldest < self.sent
        stalled = stalled and time.perf_counter() - self.due[self.oldest] > max(
            1.0, 10 * self.budget
        )
        return stalled or self.late > max(3, LATE_SHARE * measured)

    async def drain(self, within: float) -> None:
        """Stragglers count; and none may spill into the next step."""
        if self.outstanding > 0 and not self.errors.get("connection_lost"):
            try:
                await asyncio.wait_for(self.idle.wait(), within)
            except TimeoutError:
                pass


@dataclass
class Step:
    target: str
    kind: str  # search, confirm, same-load
    rate: float
    plan: Schedule
    latency: Recorder = field(default_factory=Recorder)
    scheduled: int = 0  # measured messages sent
    delivered: int = 0
    acked_ok: int = 0  # every message of the step, warm-up included
    sent: int = 0
    acked_not_delivered: int = 0
    delivered_not_acked: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    passed: bool = False

    @property
    def delivered_rate(self) -> float:
        wall = self.plan.cpu.wall if self.plan.cpu is not None else 0.0
        return self.delivered / wall if wall else 0.0

    def per_message_us(self, group: str) -> float:
        cpu = self.plan.cpu
        return (
            cpu.seconds.get(group, 0.0) / self.delivered * 1e6
            if cpu and self.delivered
            else math.nan
        )

    @property
    def gen_peak(self) -> float:
        return self.plan.cpu.peak.get("gen", 0.0) if self.plan.cpu is not None else 0.0

    def line(self) -> str:
        verdict = "ok" if self.passed else "over budget"
        if self.plan.stopped_early:
            verdict += " (given up early)"
        if self.errors:
            verdict += f" {dict(self.errors)}"
        return (
            f"{self.target:<22} {self.kind:<9} {self.rate:>8.0f} {self.latency.p(50) * 1e3:>8.2f} "
            f"{self.latency.p(99) * 1e3:>9.2f} {f'{self.delivered}/{self.scheduled}':>13} "
            f"{self.gen_peak:>5.0%} {self.plan.lag.p(99) * 1e3:>7.2f} "
            f"{self.per_message_us('server'):>7.0f}  {verdict}"
        )

    def json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "kind": self.kind,
            "rate": self.rate,
            "latency_ms": self.latency.ms(),
            "scheduled": self.scheduled,
            "delivered": self.delivered,
            "sent": self.sent,
            "acked_ok": self.acked_ok,
            "errors": dict(self.errors),
            "send_lag_ms": self.plan.lag.ms(),
            "cpu": vars(self.plan.cpu) if self.plan.cpu is not None else None,
            "server_us_per_message": self.per_message_us("server"),
            "passed": self.passed,
        }


STEP_HEAD = (
    f"{'target':<22} {'step':<9} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>9} {'delivered':>13} "
    f"{'gen':>5} {'lag p99':>7} {'srv us':>7}  verdict"
)


def score(target: str, kind: str, d: Deliveries, plan: Schedule) -> Step:
    step = Step(target, kind, plan.rate, plan, errors=Counter(d.errors))
    # A step given up in its warm-up is judged on what it sent.
    first = plan.first if plan.sent > plan.first else 0
    for j in range(plan.sent):
        acked, delivered = not math.isnan(d.acked[j]), not math.isnan(d.delivered[j])
        step.sent += 1
        step.acked_not_delivered += acked and not delivered
        step.delivered_not_acked += delivered and not acked
        if j >= first:
            step.scheduled += 1
            if delivered:
                step.delivered += 1
                step.latency.record(d.delivered[j] - d.due[j])
            else:
                step.latency.missing += 1
    answered = sum(1 for j in range(plan.sent) if not math.isnan(d.acked[j]))
    step.acked_ok = answered - d.refused
    if step.sent > answered:
        step.errors["unacked"] += step.sent - answered
    step.passed = (
        not plan.stopped_early
        and not step.errors
        and step.scheduled > 0
        and step.latency.p(99) <= d.budget
    )
    say(step.line())
    return step


RunStep = Callable[[float, float, str], Awaitable[Step]]  # (rate, seconds, kind)


async def search(
    run: RunStep,
    *,
    start: float,
    resolution: float,
    max_steps: int,
    step_seconds: float,
    confirm_seconds: float,
    max_rate: float = 100_000.0,
    min_rate: float = 5.0,
) -> tuple[list[Step], Step | None]:
    """Every step tried and the confirming run at the best passing rate (None: none passed)."""
    steps: list[Step] = []
    good: float | None = None
    bad: float | None = None
    rate = start
    while len(steps) < max_steps:
        step = await run(rate, step_seconds, "search")
        steps.append(step)
        if step.errors.get("connection_lost"):
            break
        if step.passed:
            good = rate
        else:
            bad = rate if bad is None else min(bad, rate)
        if bad is None:
            rate *= 2
        elif good is None:
            rate /= 2
        elif bad / good <= 1 + resolution:
            break
        else:
            rate = float(round(math.sqrt(good * bad)))
        if not min_rate <= rate <= max_rate:
            break
    if good is None:
        return steps, None
    confirm = await run(good, confirm_seconds, "confirm")
    for _ in range(2):  # a longer run may not hold the rate: a notch lower, twice at most
        if confirm.passed:
            break
        steps.append(confirm)  # shown as a failed confirm step
        good = float(round(good / (1 + resolution)))
        confirm = await run(good, confirm_seconds, "confirm")
    return steps, confirm


def rate_row(target: str, steps: list[Step], confirm: Step | None, budget_ms: float) -> Row:
    """A target's row: the confirmed rate (``>=`` when the generator bounded it) and its cost."""
    row = Row(target)
    failed = [s for s in steps if not s.passed and s.kind == "search"]
    bound = min(failed, key=lambda s: s.rate) if failed else None
    for s in steps:
        if s.kind == "confirm":
            row.notes.append(f"a confirm run at {s.rate:.0f}/s went over budget; tried lower")
    if confirm is None:
        row.invalid.append(f"no rate kept p99 within {budget_ms:g} ms")
        return row
    # The generator, not the server, may have ended the search: then the rate is a floor.
    lower = bound is None or bound.gen_peak >= GENERATOR_LIMIT
    lower = lower or (bound is not None and bound.plan.lag.p(99) > SEND_LAG_LIMIT)
    if bound is not None:
        row.notes.append(
            f"bounded by {bound.rate:.0f}/s: p99 {bound.latency.p(99) * 1e3:.1f} ms, "
            f"delivered {bound.delivered}/{bound.scheduled}, generator peak {bound.gen_peak:.0%}"
        )
    if lower:
        row.notes.append("a lower bound: the search or the generator ended before the server did")
    fill(row, confirm)
    row.fields["rate"] = confirm.rate
    row.fields["rate_text"] = f"{'>=' if lower else ''}{confirm.rate:.0f}"
    if not confirm.passed:
        row.invalid.append(
            f"the confirm run went over budget (p99 {confirm.latency.p(99) * 1e3:.1f} ms)"
        )
    return row


def fill(row: Row, step: Step) -> None:
    """The step's figures and confirm steps into ``row``."""
    row.cpu, row.lag = step.plan.cpu, step.plan.lag
    row.fields.update(
        rate=step.rate,
        rate_text=f"{step.rate:.0f}",
        delivered_per_s=step.delivered_rate,
        p50_ms=step.latency.p(50) * 1e3,
        p99_ms=step.latency.p(99) * 1e3,
        max_ms=step.latency.max * 1e3,
        server_us=step.per_message_us("server"),
        broker_us=step.per_message_us("broker"),
        db_us=step.per_message_us("db"),
        delivered=step.delivered,
    )
    row.check(f"every message acked ok ({step.acked_ok}/{step.sent})", step.acked_ok == step.sent)
    row.check(
        f"every acked message delivered ({step.acked_not_delivered} not)",
        not step.acked_not_delivered,
    )
    row.check(
        f"every delivered message acked ({step.delivered_not_acked} not)",
        not step.delivered_not_acked,
    )
