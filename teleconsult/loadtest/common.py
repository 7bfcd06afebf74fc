"""What every scenario takes and gives back: common options and the outcome of a run."""

from __future__ import annotations

import random
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Common:
    """Options every scenario has (``teleconsult loadtest SCENARIO --help``)."""

    url: str = "http://127.0.0.1:8080"
    users: int = 20
    rate: float = 1.0  # actions per user per second (signal: rooms a second, 0 = all at once)
    duration: float = 30.0  # seconds of scheduled actions
    ramp: float = 5.0  # seconds over which connections are opened
    drain: float = 10.0  # seconds to wait for stragglers after the schedule
    json_path: Path | None = None
    plot_path: Path | None = None
    admin_email: str | None = None
    admin_password: str | None = None
    credentials: Path | None = None
    setup_concurrency: int = 8
    keep_accounts: bool = False
    quiet: bool = False
    seed: int | None = None

    def rng(self) -> random.Random:
        return random.Random(self.seed)  # noqa: S311 - jitter, not secrets


@dataclass
class Outcome:
    """A finished run: the JSON document, the printed summary, and why it failed."""

    report: dict[str, Any]
    summary: str
    failures: list[str] = field(default_factory=list)
    plot_title: str = ""
    plot_latencies: dict[str, str] = field(default_factory=dict)  # name -> label
    plot_rates: dict[str, str] = field(default_factory=dict)  # counter -> label


def new_run_id() -> str:
    """Short and sortable: when the run started, and a few random letters."""
    return time.strftime("%m%d%H%M%S") + secrets.token_hex(2)


def started_at() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class CpuMeter:
    """This process's CPU time over a wall-clock window, as a share of one core."""

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._wall = time.monotonic()

    def share(self) -> float:
        wall = time.monotonic() - self._wall
        return (time.process_time() - self._cpu) / wall if wall > 0 else 0.0
