"""What a load test measured: HDR histograms, counters, a live progress line, JSON, a plot.

Latencies go into HDR histograms (microseconds, 1 us to an hour, 3 significant
digits), one for the whole run and one per second for the timeline, so p99.9
and max are exact to 0.1 % whatever the count and recording stays cheap. The
JSON carries each whole-run histogram in HdrHistogram's base64 form too, for
merging runs or plotting with HdrHistogram's own tools.

Nothing here is safe to share between threads; everything runs on one event loop.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from teleconsult.loadtest import LoadtestError

LOWEST_US = 1
HIGHEST_US = 3_600_000_000
DIGITS = 3
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
MAX_ERROR_SAMPLES = 5
PLOT_HINT = "--plot needs matplotlib: pip install 'teleconsult[loadtest]'"


def _histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def _ms(micros: float) -> float:
    return round(micros / 1000.0, 3)


def summarize(hist: HdrHistogram) -> dict[str, float | int | None]:
    """count, p50, p90, p99, p99.9, max and mean in milliseconds (None when empty)."""
    count = int(hist.get_total_count())
    found: dict[str, float | int | None] = {"count": count}
    for label, q in PERCENTILES:
        found[label] = _ms(hist.get_value_at_percentile(q)) if count else None
    found["max"] = _ms(hist.get_max_value()) if count else None
    found["mean"] = _ms(hist.get_mean_value()) if count else None
    return found


class Latency:
    """One latency's histograms: the whole run's and the current second's."""

    def __init__(self) -> None:
        self.total = _histogram()
        self.interval = _histogram()

    def record(self, seconds: float) -> None:
        micros = min(HIGHEST_US, max(LOWEST_US, round(seconds * 1e6)))
        self.total.record_value(micros)
        self.interval.record_value(micros)

    def take_interval(self) -> dict[str, float | int | None]:
        """The second's count, p50, p99 and max (ms), then a fresh second.

        Runs on the generator's loop every second for every latency, so it asks
        only for what it shows: hdrh walks all ~23k buckets in Python for the mean
        and for each separate percentile, tens of milliseconds that would stall the
        schedule (and show up as the server's latency).
        """
        hist = self.interval
        count = int(hist.get_total_count())
        found: dict[str, float | int | None] = {"count": count}
        found |= dict.fromkeys(("p50", "p99", "max"))
        if count:
            values = hist.get_percentile_to_value_dict([50.0, 99.0])
            found |= {"p50": _ms(values[50.0]), "p99": _ms(values[99.0])}
            found["max"] = _ms(hist.get_max_value())
        hist.reset()
        return found


class Recorder:
    """Counters, errors by code and latencies of one run, with a per-second timeline."""

    def __init__(self, latencies: Sequence[str], counters: Sequence[str]) -> None:
        self.latency = {name: Latency() for name in latencies}
        self.counts: Counter[str] = Counter(dict.fromkeys(counters, 0))
        self.errors: Counter[str] = Counter()
        self.error_samples: dict[str, list[str]] = {}
        self.timeline: list[dict[str, Any]] = []
        self.last: dict[str, Any] = {}

    def record(self, name: str, seconds: float) -> None:
        self.latency[name].record(seconds)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def error(self, code: str, detail: str = "") -> None:
        self.errors[code] += 1
        samples = self.error_samples.setdefault(code, [])
        if detail and len(samples) < MAX_ERROR_SAMPLES:
            samples.append(detail[:300])

    def tick(self, elapsed: float) -> dict[str, Any]:
        """Close the current second: its latencies and the counters so far."""
        entry: dict[str, Any] = {"t": round(elapsed, 3)}
        entry.update(self.counts)
        entry["errors"] = sum(self.errors.values())
        for name, latency in self.latency.items():
            entry[name] = latency.take_interval()
        self.timeline.append(entry)
        self.last = entry
        return entry

    def latencies(self) -> dict[str, dict[str, float | int | None]]:
        return {name: summarize(latency.total) for name, latency in self.latency.items()}

    def histograms(self) -> dict[str, str]:
        return {
            name: latency.total.encode().decode("ascii")
            for name, latency in self.latency.items()
            if latency.total.get_total_count()
        }


# --- the live progress line -----------------------------------------------------------


def progress_line(
    entry: Mapping[str, Any], counters: Sequence[str], short: Mapping[str, str]
) -> str:
    parts = [f"[{entry['t']:6.1f}s]"]
    parts += [f"{name} {entry.get(name, 0)}" for name in counters]
    parts.append(f"errors {entry.get('errors', 0)}")
    p99 = []
    for name, label in short.items():
        value = entry.get(name, {}).get("p99")
        p99.append(f"{label} {'-' if value is None else f'{value:.1f}'}")
    parts.append("p99 ms: " + ", ".join(p99))
    return "  ".join(parts)


async def show_progress(
    recorder: Recorder,
    t0: float,
    counters: Sequence[str],
    short: Mapping[str, str],
    *,
    quiet: bool,
    stream: TextIO | None = None,
) -> None:
    """Once a second until cancelled: close the second and print one line (stderr).

    On a terminal the line is rewritten in place; otherwise one line a second.
    """
    out = stream or sys.stderr
    tty = out.isatty()
    loop = asyncio.get_running_loop()

    def tick() -> None:
        entry = recorder.tick(loop.time() - t0)
        if not quiet:
            line = progress_line(entry, counters, short)
            out.write(f"\r\x1b[K{line}" if tty else f"{line}\n")
            out.flush()

    n = 1
    try:
        while True:
            await asyncio.sleep(max(0.0, t0 + n - loop.time()))
            tick()
            n += 1
    finally:
        # The last, partial second; for a run shorter than a second, its only one.
        if not recorder.timeline or loop.time() - t0 > n - 1 + 0.05:
            tick()
        if tty and not quiet:
            out.write("\n")
            out.flush()


class SetupProgress:
    """``label: done/total`` on stderr, at most once a second (and at the end)."""

    def __init__(self, label: str, total: int, *, quiet: bool) -> None:
        self.label, self.total, self.quiet = label, total, quiet
        self.done = 0
        self._shown = 0.0

    def step(self) -> None:
        self.done += 1
        now = time.monotonic()
        if self.quiet or (now - self._shown < 1.0 and self.done < self.total):
            return
        self._shown = now
        print(f"{self.label}: {self.done}/{self.total}", file=sys.stderr, flush=True)


# --- the summary, JSON and the plot ---------------------------------------------------


def latency_table(latencies: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str]) -> str:
    head = f"  {'latency from the scheduled time, ms':<38}" + "".join(
        f"{c:>10}" for c in ("count", "p50", "p90", "p99", "p99.9", "max", "mean")
    )
    lines = [head]
    for name, label in labels.items():
        row = latencies.get(name, {})
        cells = [f"{row.get('count', 0):>10}"]
        for key in ("p50", "p90", "p99", "p99.9", "max", "mean"):
            value = row.get(key)
            cells.append(f"{'-':>10}" if value is None else f"{value:>10.2f}")
        lines.append(f"  {label:<38}" + "".join(cells))
    return "\n".join(lines)


def errors_text(errors: Mapping[str, int], samples: Mapping[str, list[str]]) -> str:
    if not errors:
        return "errors: none"
    lines = ["errors:"]
    for code, n in sorted(errors.items(), key=lambda item: -item[1]):
        sample = samples.get(code)
        lines.append(f"  {code}: {n}" + (f" (e.g. {sample[0]})" if sample else ""))
    return "\n".join(lines)


def write_json(path: Path, report: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def require_plotting() -> None:
    """Fail before the run, not after it, when --plot cannot be honoured."""
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        raise LoadtestError(PLOT_HINT) from None


def plot(
    path: Path,
    timeline: Sequence[Mapping[str, Any]],
    labels: Mapping[str, str],
    rates: Mapping[str, str],
    title: str,
) -> None:
    """Per-second p50, p99 and max of each latency, and the per-second rates, over time."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise LoadtestError(PLOT_HINT) from None
    rows = len(labels) + 1
    fig, axes = plt.subplots(rows, 1, figsize=(10, 2.6 * rows), sharex=True, squeeze=False)
    t = [float(e["t"]) for e in timeline]
    for ax, (name, label) in zip(axes[:, 0], labels.items(), strict=False):
        for key, style in (("max", ":"), ("p99", "-"), ("p50", "--")):
            values = [_nan(e.get(name, {}).get(key)) for e in timeline]
            ax.plot(t, values, style, label=key)
        ax.set_ylabel("ms")
        ax.set_title(label, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    ax = axes[-1, 0]
    for counter, label in rates.items():
        totals = [int(e.get(counter, 0)) for e in timeline]
        per_second = [b - a for a, b in zip([0, *totals], totals, strict=False)]
        ax.plot(t, per_second, label=label)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("per second")
    ax.set_xlabel("seconds since the first scheduled send")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)
