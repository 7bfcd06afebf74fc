"""Rows, their validity, ratios against the reference of the same run, tables and JSON.

A :class:`Row` is one target's result. It is **INVALID** when the load generator's
busiest second used 90 % of a core or its send lag p99 passed the limit (it
measured itself), when a confirm step failed (a message acked but never
delivered, rows in the database that do not add up...), or for a reason of the
scenario's own. It is **noisy** when something outside the benchmark took more
than a quarter of a core. Every table ends with the same columns: the generator's
peak, its send lag, the confirm steps and the verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness.cpu import CpuReport
from bench.harness.latency import Recorder
from bench.harness.load import GENERATOR_LIMIT, SEND_LAG_LIMIT, say


@dataclass
class Row:
    target: str
    fields: dict[str, Any] = field(default_factory=dict)
    cpu: CpuReport | None = None
    lag: Recorder | None = None  # open loop: how late the generator's sends left
    checks: list[tuple[str, bool]] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def check(self, what: str, ok: bool) -> bool:
        """A confirm step: ``what`` must hold; a failure makes the row INVALID."""
        self.checks.append((what, ok))
        return ok

    @property
    def failed(self) -> list[str]:
        return [what for what, ok in self.checks if not ok]

    def per_unit_us(self, group: str, units: float) -> float:
        """CPU microseconds of ``group`` per unit of work (message, request...)."""
        if self.cpu is None or not units:
            return math.nan
        return self.cpu.seconds.get(group, 0.0) / units * 1e6

    def judge(self) -> Row:
        """The shared rules; call once the row is complete."""
        if self.cpu is not None:
            peak = self.cpu.peak.get("gen", 0.0)
            if peak >= GENERATOR_LIMIT:
                self.invalid.append(
                    f"the generator's busiest second used {peak:.0%} of its core: "
                    "it measured itself"
                )
            if self.cpu.noisy:
                self.notes.append(f"{self.cpu.share('other'):.0%} of a core went elsewhere: noisy")
        if self.lag is not None and self.lag.p(99) > SEND_LAG_LIMIT:
            self.invalid.append(
                f"the generator's sends left up to {self.lag.p(99) * 1e3:.1f} ms late (p99; limit "
                f"{SEND_LAG_LIMIT * 1e3:g} ms): it could not keep its schedule"
            )
        for what in self.failed:
            self.invalid.append(f"confirm step failed: {what}")
        return self

    @property
    def verdict(self) -> str:
        if self.invalid:
            return "INVALID"
        return "noisy" if self.cpu is not None and self.cpu.noisy else "yes"

    def json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            **self.fields,
            "cpu": vars(self.cpu) if self.cpu is not None else None,
            "send_lag_ms": self.lag.ms() if self.lag is not None else None,
            "checks": [{"what": w, "ok": ok} for w, ok in self.checks],
            "invalid": self.invalid,
            "notes": self.notes,
            "verdict": self.verdict,
        }


@dataclass(frozen=True)
class Column:
    title: str
    key: str
    spec: str  # a format spec such as ">8.1f"


def _width(spec: str) -> int:
    return int("".join(ch for ch in spec.split(".")[0] if ch.isdigit()) or "0")


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{_width(spec)}}"
    if isinstance(value, float) and math.isinf(value):
        return f"{'inf':>{_width(spec)}}"
    if isinstance(value, str):
        return f"{value:>{_width(spec)}}"
    if spec.endswith("d"):
        value = round(value)
    return format(value, spec)


def table(rows: Sequence[Row], columns: Sequence[Column]) -> str:
    """The scenario's columns, then: gen peak, send lag p99, confirm steps, verdict."""
    width = max([len("target")] + [len(r.target) for r in rows])
    head = f"{'target':<{width}} " + " ".join(f"{c.title:>{_width(c.spec)}}" for c in columns)
    head += f" {'gen peak':>8} {'lag p99':>8} {'confirm':>9}  valid"
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = " ".join(_cell(r.fields.get(c.key), c.spec) for c in columns)
        peak = r.cpu.peak.get("gen") if r.cpu is not None else None
        lag = r.lag.p(99) * 1e3 if r.lag is not None else None
        confirm = f"{len(r.failed)} FAILED" if r.failed else f"{len(r.checks)} ok"
        lines.append(
            f"{r.target:<{width}} {cells} {_cell(peak, '>8.0%')} {_cell(lag, '>8.2f')} "
            f"{confirm:>9}  {r.verdict}"
        )
    for r in rows:
        lines += [f"  ! {r.target}: {why}" for why in r.invalid]
        lines += [f"  - {r.target}: {note}" for note in r.notes]
    return "\n".join(lines)


def cpu_table(rows: Sequence[Row]) -> str:
    """Where the CPU went: mean and busiest second per group, busiest second per core."""
    width = max([len("CPU (1.0 = a core)")] + [len(r.target) for r in rows])
    groups = ("gen", "server", "db")
    head = f"{'CPU (1.0 = a core)':<{width}} " + " ".join(f"{g:>11}" for g in groups)
    head += f" {'other':>6}  cores (busiest second)"
    lines = [head, "-" * len(head)]
    for r in rows:
        if r.cpu is None:
            continue
        c = r.cpu
        cells = " ".join(f"{c.share(g):>5.0%} {c.peak.get(g, 0.0):>5.0%}" for g in groups)
        cores = " ".join(f"{k} {v:.0%}" for k, v in sorted(c.cores_peak.items()))
        lines.append(f"{r.target:<{width}} {cells} {c.share('other'):>6.0%}  {cores}")
    lines.append("(each group: mean, then busiest second; db: the benchmark database's backends)")
    return "\n".join(lines)


def ratios(
    rows: Sequence[Row], key: str, bases: Iterable[str], *, higher_is_better: bool, what: str
) -> tuple[list[dict[str, Any]], str]:
    """Every teleconsult row's ``key`` over each base's of the same mode (the part of
    the name after a space, such as ``open@500``), from the same run: JSON and text."""

    def split(target: str) -> tuple[str, str]:
        name, _, mode = target.partition(" ")
        return name, mode

    found: list[dict[str, Any]] = []
    lines: list[str] = []
    by_name = {split(r.target): r for r in rows}
    for base in bases:
        for r in rows:
            name, mode = split(r.target)
            ref = by_name.get((base, mode))
            if ref is None or not name.startswith("teleconsult"):
                continue
            mine, theirs = r.fields.get(key), ref.fields.get(key)
            if not all(
                isinstance(v, int | float) and math.isfinite(v) and v for v in (mine, theirs)
            ):
                continue
            assert isinstance(mine, int | float) and isinstance(theirs, int | float)
            value = mine / theirs
            found.append({"target": r.target, "base": ref.target, "key": key, "ratio": value})
            flag = "" if not r.invalid and not ref.invalid else "  (a side is INVALID)"
            better = "higher" if higher_is_better else "lower"
            lines.append(
                f"  {r.target} / {ref.target}: x{value:.3f} ({what}, {better} is better){flag}"
            )
    return found, "\n".join(["ratios, same run:", *lines]) if lines else ""


# --- the command line -----------------------------------------------------------------


def parser(
    prog: str, doc: str | None, targets: Sequence[str], default: Sequence[str]
) -> argparse.ArgumentParser:
    """The options every scenario takes: --targets, --smoke, --quiet-wait, --json."""

    def target_list(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names or any(n not in targets for n in names):
            raise argparse.ArgumentTypeError(f"choose from {', '.join(targets)}; got {text!r}")
        return names

    found = argparse.ArgumentParser(
        prog=f"python -m {prog}",
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    found.add_argument(
        "--targets", type=target_list, default=list(default), help=f"from {', '.join(targets)}"
    )
    found.add_argument("--smoke", action="store_true", help="the smallest run, about a second")
    found.add_argument("--quiet-wait", type=float, default=0.0, help="wait up to S s for idle")
    found.add_argument("--json", type=Path, default=None, help="write the results here")
    return found


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def document(
    name: str,
    args: argparse.Namespace,
    facts: dict[str, Any],
    rows: Sequence[Row],
    text: str,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON of a run; its printed tables are under ``table``."""
    return {
        "benchmark": name,
        "command": " ".join([sys.executable, "-m", f"bench.{name}", *sys.argv[1:]]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": facts,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": [r.json() for r in rows],
        **extra,
        "table": text,
    }


def main(run: Callable[[], Awaitable[dict[str, Any]]], args: argparse.Namespace) -> int:
    """Run a scenario: print its machine line and tables, write its JSON; 1 if a row is INVALID."""

    async def wrapped() -> dict[str, Any]:
        return await run()

    try:
        found = asyncio.run(wrapped())
    except asyncio.CancelledError:
        say("interrupted: servers stopped, PostgreSQL unpinned, database dropped")
        return 130
    m = found["machine"]
    print(
        f"{m['cores']} cores ({m['cpu']}), Python {m['python']}, aiohttp {m['aiohttp']}, "
        f"python-socketio {m['python-socketio']}, PostgreSQL {m.get('postgresql', '?')}; "
        f"pinning {m['pinning']}; {m.get('postgresql_pinning', '')}; "
        f"cores busy before the run: {m['busy_before']:.0%} of one"
    )
    print(found["table"])
    if args.json is not None:
        text = json.dumps(_finite(found), indent=2, allow_nan=False, default=str)
        args.json.write_text(text + "\n", encoding="utf-8")
        print(f"results written to {args.json}")
    return 1 if any(r["verdict"] == "INVALID" for r in found["rows"]) else 0
