"""Latencies in an HDR histogram (1 us to an hour, 3 significant digits).

What never came (a message lost, a request unanswered) is counted as infinitely
late: a percentile that reaches into the missing is ``inf``, never flattered.
"""

from __future__ import annotations

import math
from typing import Any

from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

HIGHEST_US = 3_600_000_000


class Recorder:
    """Seconds in, seconds out; ``missing`` are the values that never arrived."""

    def __init__(self) -> None:
        self.hist = HdrHistogram(1, HIGHEST_US, 3)
        self.missing = 0

    def record(self, seconds: float) -> None:
        self.hist.record_value(min(HIGHEST_US, max(1, round(seconds * 1e6))))

    def add(self, other: Recorder) -> None:
        self.hist.add(other.hist)
        self.missing += other.missing

    @property
    def count(self) -> int:
        return int(self.hist.get_total_count())

    def p(self, q: float) -> float:
        """Percentile ``q`` (0..100) in seconds; inf when it falls among the missing."""
        got, total = self.count, self.count + self.missing
        if not total:
            return math.nan
        rank = q / 100 * total
        if not got or rank > got:
            return math.inf
        return float(self.hist.get_value_at_percentile(100 * rank / got)) / 1e6

    @property
    def max(self) -> float:
        if self.missing:
            return math.inf
        return float(self.hist.get_max_value()) / 1e6 if self.count else math.nan

    def ms(self) -> dict[str, Any]:
        """count, missing, p50/p90/p99/p99.9/max in milliseconds."""
        found: dict[str, Any] = {"count": self.count, "missing": self.missing}
        for label, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)):
            found[label] = self.p(q) * 1e3
        found["max"] = self.max * 1e3
        return found
