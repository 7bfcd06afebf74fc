"""What one window of ``bench.mqtt_path`` measured, and the tables it prints.

* :class:`Run` -- one window at one offered rate: latencies in HDR histograms
  (``teleconsult.loadtest.report.Latency``), errors, CPU of each side;
* :class:`Window` -- the bookkeeping while it runs: each message's scheduled
  time, its arrival and its ack, by message index;
* :class:`Probe` -- ``bench.cpu.CpuProbe`` plus the broker's own process;
* ``verdict``, ``tables``, ``ratios`` -- validity, the printed tables, and the
  project's figures over the reference's.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench.api_requests import NOISE_LIMIT
from bench.cpu import CpuProbe, _process_seconds
from bench.loadgen import GENERATOR_CPU_LIMIT
from bench.mqtt_targets import REFERENCE, MqttTarget
from teleconsult.loadtest.report import Latency

ms = 1e3


@dataclass
class Run:
    """One window at one offered rate: what it measured."""

    target: str
    kind: str  # fixed, search, confirm, profiled
    rate: float
    scheduled: int = 0  # messages due in the measured window
    delivered: int = 0
    acked: int = 0
    latency: Latency = field(default_factory=Latency, repr=False)
    ack: Latency = field(default_factory=Latency, repr=False)
    errors: Counter[str] = field(default_factory=Counter)
    generator_cpu: float = 0.0
    server_cpu: float = 0.0
    broker_cpu: float = 0.0  # a broker process of its own (Mosquitto behind the server)
    database_cpu: float = 0.0
    other_cpu: float = 0.0
    wall: float = 0.0
    max_send_lag: float = 0.0
    stopped_early: bool = False
    passed: bool = False
    retries: int = 0

    def p(self, q: float, which: str = "latency") -> float:
        """Percentile ``q`` in seconds, counting a message that never came as infinitely late."""
        hist, got = (self.latency, self.delivered) if which == "latency" else (self.ack, self.acked)
        rank = q / 100 * self.scheduled
        if not got or rank > got:
            return math.inf
        return float(hist.total.get_value_at_percentile(100 * rank / got)) / 1e6

    def worst(self) -> float:
        if self.delivered < self.scheduled or not self.delivered:
            return math.inf
        return float(self.latency.total.get_max_value()) / 1e6

    @property
    def lost(self) -> int:
        return self.scheduled - self.delivered

    @property
    def noisy(self) -> bool:
        return self.other_cpu > NOISE_LIMIT

    @property
    def saturated(self) -> bool:
        return self.generator_cpu >= GENERATOR_CPU_LIMIT

    def per_message_us(self, cpu: float) -> float:
        rate = self.delivered / self.wall if self.wall else 0.0
        return cpu / rate * 1e6 if rate else math.nan

    def line(self) -> str:
        verdict = "ok" if self.passed else "over budget"
        if self.errors:
            verdict += f" errors {dict(self.errors)}"
        if self.stopped_early:
            verdict += " (stopped early)"
        if self.saturated:
            verdict += f" (generator {self.generator_cpu:.0%}: saturated)"
        if self.noisy:
            verdict += f" (noisy: others {self.other_cpu:.0%})"
        return (
            f"[{self.target}] {self.kind:<8} {self.rate:7.0f}/s  p50 {_ms(self.p(50))}  "
            f"p99 {_ms(self.p(99))}  delivered {self.delivered}/{self.scheduled}  "
            f"gen {self.generator_cpu:4.0%} server {self.server_cpu:4.0%} "
            f"broker {self.broker_cpu:4.0%} db {self.database_cpu:4.0%}  -> {verdict}"
        )

    def as_json(self) -> dict[str, Any]:
        def finite(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {
            "target": self.target,
            "kind": self.kind,
            "rate": self.rate,
            "scheduled": self.scheduled,
            "delivered": self.delivered,
            "lost": self.lost,
            **{f"p{q:g}_ms": finite(self.p(q) * ms) for q in (50, 90, 99, 99.9)},
            "max_ms": finite(self.worst() * ms),
            "ack_p50_ms": finite(self.p(50, "ack") * ms) if self.acked else None,
            "ack_p99_ms": finite(self.p(99, "ack") * ms) if self.acked else None,
            "errors": dict(self.errors),
            "generator_cpu": self.generator_cpu,
            "server_cpu": self.server_cpu,
            "broker_cpu": self.broker_cpu,
            "database_cpu": self.database_cpu,
            "other_cpu": self.other_cpu,
            "server_us_per_message": finite(self.per_message_us(self.server_cpu)),
            "broker_us_per_message": finite(self.per_message_us(self.broker_cpu)),
            "max_send_lag_ms": self.max_send_lag * ms,
            "stopped_early": self.stopped_early,
            "passed": self.passed,
            "retries": self.retries,
        }


def _ms(seconds: float) -> str:
    return f"{seconds * ms:8.2f}" if math.isfinite(seconds) else f"{'inf':>8}"


class Probe(CpuProbe):
    """``CpuProbe`` plus a broker process of its own, taken out of 'other'."""

    def __init__(
        self, target: MqttTarget, monitor: asyncpg.Connection, database: str, result: Run
    ) -> None:
        super().__init__(target.server_pid, monitor, database)
        self._broker_pid = target.broker_pid
        self._result = result
        self._began = (0.0, 0.0, 0.0)  # wall, generator CPU, broker CPU
        self.started = False

    def _now(self) -> tuple[float, float, float]:
        broker = _process_seconds(self._broker_pid) if self._broker_pid else 0.0
        return time.perf_counter(), time.process_time(), broker

    async def __call__(self, edge: str) -> None:
        now = self._now()
        await super().__call__(edge)
        if edge == "start":
            self._began, self.started = now, True
            return
        r = self._result
        r.wall = now[0] - self._began[0]
        r.generator_cpu = (now[1] - self._began[1]) / r.wall
        r.broker_cpu = (now[2] - self._began[2]) / r.wall
        r.server_cpu, r.database_cpu = self.server, self.database_cpu
        r.other_cpu = max(0.0, self.other - r.broker_cpu)


class Window:
    """Sends one run's messages on schedule; records arrivals and acks by message index."""

    def __init__(
        self, result: Run, base: int, count: int, first: int, budget: float, *, acks: bool
    ) -> None:
        self.result = result
        self.base, self.count, self.first = base, count, first
        self.budget = budget
        self.due = [math.inf] * count
        self.arrived = bytearray(count)
        self.answered = bytearray(count)
        self.late = 0
        # What each message still owes: its delivery, and its ack where the server acks
        # (the bridge publishes the inboxes before the ack, so the ack comes last).
        self.per_message = 2 if acks else 1
        self.outstanding = self.per_message * count
        self.last_arrival = time.perf_counter()
        self.idle = asyncio.Event()

    def _slot(self, index: int) -> int:
        j = index - self.base
        return j if 0 <= j < self.count else -1

    def deliver(self, index: int) -> None:
        now = self.last_arrival = time.perf_counter()
        j = self._slot(index)
        if j < 0 or self.arrived[j]:
            return
        self.arrived[j] = 1
        if j >= self.first:
            took = now - self.due[j]
            self.result.delivered += 1
            self.result.latency.record(took)
            if took > self.budget:
                self.late += 1
        self._done()

    def ack(self, index: int, error: str | None) -> None:
        j = self._slot(index)
        if j < 0 or self.answered[j]:
            return
        self.answered[j] = 1
        if j >= self.first:
            self.result.acked += 1
            self.result.ack.record(time.perf_counter() - self.due[j])
            if error is not None:
                self.result.errors[error] += 1
        if error is not None and not self.arrived[j]:
            self.arrived[j] = 1  # refused: it will not come
            self._done()
        self._done()

    def _done(self) -> None:
        self.outstanding -= 1
        if self.outstanding <= 0:
            self.idle.set()


def verdict(found: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Validity and notes of one target's fixed-rate rows and highest-rate row."""
    fixed: list[Run] = found["fixed"]
    confirm: Run | None = found["confirm"]
    bound: Run | None = found["bound"]
    invalid: list[str] = []  # the highest-rate row's
    notes: list[str] = list(found["notes"])
    fixed_valid: list[str] = []
    fixed_invalid: list[str] = []
    for run in fixed:
        reasons = [f"generator at {run.generator_cpu:.0%} of its core"] if run.saturated else []
        if run.errors:
            reasons.append(f"errors {dict(run.errors)}")
        fixed_invalid += [f"fixed {run.rate:g}/s: {reason}" for reason in reasons]
        fixed_valid.append(_valid(reasons, run.noisy))
        if run.lost:
            notes.append(f"fixed {run.rate:g}/s: {run.lost} of {run.scheduled} never arrived")
    lower_bound = False
    if not args.no_search:
        if confirm is None:
            invalid.append(f"no rate from {args.min_rate:g}/s up kept p99 <= {args.budget_ms:g} ms")
        elif confirm.saturated or (bound is not None and bound.saturated):
            lower_bound = True
            invalid.append(
                "highest rate: the generator saturated its core "
                f"({max(confirm.generator_cpu, bound.generator_cpu if bound else 0):.0%}): "
                "the figure is the generator's limit, a lower bound for the target"
            )
        if bound is None and confirm is not None:
            lower_bound = True
            notes.append("the search never went over budget: the rate is a lower bound")
        if confirm is not None and not confirm.passed:
            notes.append(f"the confirming run went over budget (p99 {confirm.p(99) * ms:.1f} ms)")
        target_cpu = bound.server_cpu + bound.broker_cpu if bound is not None else 0.0
        if bound is not None and bound.generator_cpu >= max(0.5, target_cpu):
            # Below the 90 % line, but the generator was the busier side: its event loop,
            # not the target, most likely set the latency that ended the search.
            lower_bound = True
            notes.append(
                f"at the bound the generator ({bound.generator_cpu:.0%} of its core) was busier "
                f"than the target ({target_cpu:.0%}): the rate is mostly the generator's, "
                "a lower bound for the target"
            )
        if bound is not None:
            notes.append(
                f"bounded by {bound.rate:.0f}/s: p99 {bound.p(99) * ms:.1f} ms, delivered "
                f"{bound.delivered}/{bound.scheduled}, errors {dict(bound.errors) or 'none'}, "
                f"generator {bound.generator_cpu:.0%}, server {bound.server_cpu:.0%}, "
                f"broker {bound.broker_cpu:.0%}"
            )
    for run in [*fixed, *([confirm] if confirm is not None else [])]:
        label = f"{run.kind} {run.rate:g}/s"
        if run.max_send_lag > 0.005:
            lag = run.max_send_lag * ms
            notes.append(f"{label}: the generator sent up to {lag:.1f} ms late (counted)")
        if run.noisy:
            notes.append(f"{label}: {run.other_cpu:.0%} of a core went to other processes")
    return {
        "fixed_valid": fixed_valid,
        "rate_valid": _valid(invalid, confirm is not None and confirm.noisy),
        "invalid": fixed_invalid + invalid,
        "notes": notes,
        "lower_bound": lower_bound,
    }


def _valid(invalid: list[str], noisy: bool) -> str:
    return "INVALID" if invalid else "noisy" if noisy else "yes"


WIDTH = 29


def _row(r: Run, rate: str, valid: str) -> str:
    ack = _ms(r.p(99, "ack")) if r.acked else f"{'-':>8}"
    return (
        f"{r.target:<{WIDTH}} {rate:>7} {_ms(r.p(50))} {_ms(r.p(99))} {_ms(r.worst())} "
        f"{ack} {r.lost:>5} {r.generator_cpu:>5.0%} {r.server_cpu:>6.0%} "
        f"{r.broker_cpu:>6.0%} {r.database_cpu:>5.0%} "
        f"{r.per_message_us(r.server_cpu):>10.0f} {r.per_message_us(r.broker_cpu):>10.0f}  "
        f"{valid}"
    )


def tables(found: list[dict[str, Any]], judged: list[dict[str, Any]], args: Any) -> str:
    head = (
        f"{'target':<{WIDTH}} {'msg/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'ack p99':>8} {'lost':>5} {'gen':>5} {'server':>6} {'broker':>6} {'db':>5} "
        f"{'srv us/msg':>10} {'brk us/msg':>10}  valid"
    )
    lines = [f"send->delivered at fixed rates, open loop, {args.duration:g} s each:"]
    lines += [head, "-" * len(head)]
    for k in range(len(args.rates)):
        for item, v in zip(found, judged, strict=True):
            run = item["fixed"][k]
            lines.append(_row(run, f"{run.rate:.0f}", v["fixed_valid"][k]))
    if not args.no_search:
        lines += ["", f"highest rate with send->delivered p99 <= {args.budget_ms:g} ms:"]
        lines += [head, "-" * len(head)]
        for item, v in zip(found, judged, strict=True):
            c: Run | None = item["confirm"]
            if c is None:
                lines.append(f"{item['target']:<{WIDTH}} {'none':>7}  {v['rate_valid']}")
            else:
                rate = f"{'>=' if v['lower_bound'] else ''}{c.rate:.0f}"
                lines.append(_row(c, rate, v["rate_valid"]))
    lines.append("(CPU: share of one core; us/msg: CPU microseconds per delivered message)")
    for item, v in zip(found, judged, strict=True):
        lines += [f"  ! {item['target']}: {reason}" for reason in v["invalid"]]
        lines += [f"  - {item['target']}: {note}" for note in v["notes"]]
    return "\n".join(lines)


def ratios(found: list[dict[str, Any]], judged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each teleconsult target over the reference: latencies at each fixed rate, highest rate."""
    by_name = {item["target"]: (item, v) for item, v in zip(found, judged, strict=True)}
    if REFERENCE not in by_name:
        return []
    ref, ref_v = by_name[REFERENCE]
    out: list[dict[str, Any]] = []
    for name, (item, v) in by_name.items():
        if name == REFERENCE:
            continue
        entry: dict[str, Any] = {"ratio": f"{name} / {REFERENCE}", "fixed": []}
        for f, rf in zip(item["fixed"], ref["fixed"], strict=True):
            entry["fixed"].append(
                {
                    "rate": f.rate,
                    "p50": f.p(50) / rf.p(50),
                    "p99": f.p(99) / rf.p(99),
                    "max": f.worst() / rf.worst(),
                }
            )
        if item["confirm"] is not None and ref["confirm"] is not None:
            entry["rate"] = item["confirm"].rate / ref["confirm"].rate
            # Over a lower bound the ratio is an upper bound (unless both are).
            entry["rate_qualifier"] = "<=" if ref_v["lower_bound"] and not v["lower_bound"] else ""
        out.append(entry)
    return out


def ratio_text(found_ratios: list[dict[str, Any]]) -> str:
    if not found_ratios:
        return ""
    lines = ["", f"ratios, project / {REFERENCE} alone:"]
    width = max(len(r["ratio"]) for r in found_ratios)
    for r in found_ratios:
        parts = [
            f"at {f['rate']:g}/s p50 x{f['p50']:.1f} p99 x{f['p99']:.1f} max x{f['max']:.1f}"
            for f in r["fixed"]
        ]
        if "rate" in r:
            parts.append(f"highest rate {r['rate_qualifier']}x{r['rate']:.3f}")
        lines.append(f"  {r['ratio']:<{width}}  " + ";  ".join(parts))
    return "\n".join(lines)
