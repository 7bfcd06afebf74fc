"""The results of a benchmark run, their ratios to the reference, and the printed table."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Result:
    target: str
    mode: str
    round: int
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int
    error_kinds: dict[str, int]
    generator_cpu: float
    server_cpu: float
    database_cpu: float
    core_busy: dict[str, float]
    other_cpu: float  # every other process on the machine (someone else's work, kernel threads)
    target_rate: float | None
    invalid: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    noisy: bool = False  # something outside the benchmark took a noticeable share of CPU


def ratios(results: list[Result]) -> list[dict[str, Any]]:
    """Each target against ``reference`` in the same mode and round: throughput and p99."""
    found = []
    refs = {(r.mode, r.round): r for r in results if r.target == "reference"}
    for r in results:
        ref = refs.get((r.mode, r.round))
        if ref is None or r is ref:
            continue
        found.append(
            {
                "target": r.target,
                "mode": r.mode,
                "round": r.round,
                "throughput_ratio": r.rps / ref.rps if ref.rps else float("nan"),
                "p99_ratio": r.p99_ms / ref.p99_ms if ref.p99_ms else float("nan"),
            }
        )
    return found


def _mode(r: Result) -> str:
    return r.mode if r.target_rate is None else f"open@{r.target_rate:g}"


def _validity(r: Result) -> str:
    return "INVALID" if r.invalid else "noisy" if r.noisy else "yes"


def _label(target: str, round_no: int, rounds: int) -> str:
    return target if rounds == 1 else f"{target} #{round_no}"


def _per_request_us(cpu: float, rps: float) -> float:
    return cpu / rps * 1e6 if rps else float("nan")


def format_table(results: list[Result], found_ratios: list[dict[str, Any]]) -> str:
    """Throughput and latency first, then the ratios, then where the CPU went."""
    rounds = max((r.round for r in results), default=1)
    width = 18 if rounds == 1 else 22

    def name(target: str, round_no: int) -> str:
        return f"{_label(target, round_no, rounds):<{width}}"

    head = (
        f"{'target':<{width}} {'mode':<10} {'req/s':>7} {'p50 ms':>7} {'p90 ms':>7} "
        f"{'p99 ms':>7} {'p99.9 ms':>8} {'max ms':>7} {'errors':>6}  valid"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{name(r.target, r.round)} {_mode(r):<10} {r.rps:>7.0f} {r.p50_ms:>7.2f} "
            f"{r.p90_ms:>7.2f} {r.p99_ms:>7.2f} {r.p999_ms:>8.2f} {r.max_ms:>7.2f} "
            f"{r.errors:>6}  {_validity(r)}"
        )
    for r in results:
        for reason in r.invalid:
            lines.append(f"  ! {_label(r.target, r.round, rounds)} {_mode(r)}: {reason}")
        for note in r.notes:
            lines.append(f"  - {_label(r.target, r.round, rounds)} {_mode(r)}: {note}")
    if found_ratios:
        lines.append("")
        lines.append("vs reference, same mode and round:")
        for ratio in found_ratios:
            lines.append(
                f"  {name(ratio['target'], ratio['round'])} {ratio['mode']:<7} "
                f"throughput x{ratio['throughput_ratio']:.2f}   p99 x{ratio['p99_ratio']:.2f}"
            )
    lines.append("")
    head = (
        f"{'CPU, share of one core':<{width + 11}} {'gen':>5} {'server':>6} {'db':>5} "
        f"{'other':>5} {'core0':>5} {'core1':>5}  {'server us/req':>13} {'db us/req':>9}"
    )
    lines += [head, "-" * len(head)]
    for r in results:
        busy = [r.core_busy[core] for core in sorted(r.core_busy)]
        cores = " ".join(f"{b:>5.0%}" for b in busy[:2])
        lines.append(
            f"{name(r.target, r.round)} {_mode(r):<10} {r.generator_cpu:>5.0%} "
            f"{r.server_cpu:>6.0%} {r.database_cpu:>5.0%} {r.other_cpu:>5.0%} {cores:>11}  "
            f"{_per_request_us(r.server_cpu, r.rps):>13.0f} "
            f"{_per_request_us(r.database_cpu, r.rps):>9.0f}"
        )
    return "\n".join(lines)


def positive(text: str) -> float:
    """argparse type: a number > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def target_list(known: Iterable[str]) -> Callable[[str], list[str]]:
    """argparse type factory: a comma-separated subset of ``known`` target names."""
    choices = tuple(known)

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return names

    return parse
