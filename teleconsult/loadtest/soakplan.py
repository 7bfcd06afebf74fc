"""A soak run's plan and report: its options, its faults, recovery times as percentiles,
and the printed summary."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from teleconsult.loadtest import LoadtestError
from teleconsult.loadtest.impair import PRESETS
from teleconsult.loadtest.report import Latency, summarize

FAULTS = ("server", "redis", "postgres")


@dataclass(frozen=True)
class SoakOptions:
    kills: int = 10
    redis_restarts: int = 0
    postgres_restarts: int = 0
    users: int = 6
    group_size: int = 2
    transport: str = "mixed"
    rate: float = 2.0  # messages a second per user
    duration: float = 0.0  # seconds of traffic at least (the only bound when no faults)
    down: float = 0.5  # seconds a killed process stays down
    settle: float = 1.0  # seconds of traffic after a recovery, plus up to as much again
    impair: str | None = None  # a preset of impair.PRESETS for every client link
    cut_every: float | None = None  # cut every client link every N seconds
    redis: bool = False  # a Redis of its own (implied by redis_restarts)
    database_url: str | None = None  # else a PostgreSQL cluster of its own
    admin_email: str | None = None  # with --database-url of an installed server
    admin_password: str | None = None
    encoding: str = "msgpack"
    message_bytes: int = 200
    ack_timeout: float = 120.0  # a send may take this long, outages included
    recovery_timeout: float = 60.0  # after a fault, every transport must ack and deliver
    drain: float = 60.0
    time_limit: float = 3600.0
    workdir: Path | None = None  # default: a temporary directory, removed after a pass
    seed: int | None = None
    quiet: bool = False

    def check(self) -> None:
        if not (0 <= self.kills <= 10_000 and 0 <= self.redis_restarts <= 1000):
            raise LoadtestError("--kills must be 0..10000 and --redis-restarts 0..1000")
        if not 0 <= self.postgres_restarts <= 1000:
            raise LoadtestError("--postgres-restarts must be 0..1000")
        if not self.faults() and self.duration <= 0:
            raise LoadtestError("with no faults, give --duration (seconds of traffic)")
        if self.group_size < 2 or self.users % self.group_size or not 2 <= self.users <= 200:
            raise LoadtestError("--users must be 2..200 and a multiple of --group-size (>= 2)")
        if not 0 < self.rate <= 50:
            raise LoadtestError("--rate must be above 0 and at most 50 messages a second")
        if not (0 <= self.down <= 60 and 0 <= self.settle <= 600):
            raise LoadtestError("--down must be 0..60 and --settle 0..600 seconds")
        if not 0 < self.time_limit <= 24 * 3600:
            raise LoadtestError("--time-limit must be above 0 and at most a day")
        if self.impair is not None and self.impair not in PRESETS:
            raise LoadtestError(f"--impair must be one of {', '.join(sorted(PRESETS))}")
        if self.cut_every is not None and self.cut_every <= 0:
            raise LoadtestError("--cut-every must be positive")
        if self.database_url is not None:
            host = urlsplit(self.database_url).hostname or ""
            if host not in ("127.0.0.1", "::1", "localhost") and not host.startswith("/"):
                raise LoadtestError("--database-url must be on loopback (this run kills things)")
            if self.postgres_restarts:
                raise LoadtestError("--postgres-restarts needs the run's own PostgreSQL")

    def faults(self) -> list[str]:
        return (
            ["server"] * self.kills
            + ["redis"] * self.redis_restarts
            + ["postgres"] * self.postgres_restarts
        )


@dataclass
class Fault:
    """One fault: when it was made, when the faulty part was back, and per transport the
    first ack and the first delivery after that (loop times)."""

    kind: str
    at: float
    healthy: float | None = None
    first_ack: dict[str, float] = field(default_factory=dict)  # transport -> loop time
    first_delivery: dict[str, float] = field(default_factory=dict)


def recovery(faults: Sequence[Fault]) -> dict[str, Any]:
    """Per fault kind: percentiles of each recovery time, overall and per transport."""
    found: dict[str, Any] = {}
    for kind in FAULTS:
        chosen = [f for f in faults if f.kind == kind and f.healthy is not None]
        if not chosen:
            continue
        table: dict[str, Latency] = defaultdict(Latency)
        per: dict[str, dict[str, Latency]] = defaultdict(lambda: defaultdict(Latency))
        for f in chosen:
            assert f.healthy is not None
            table["fault_to_healthy"].record(f.healthy - f.at)
            for t, at in f.first_ack.items():
                per[t]["fault_to_first_ack"].record(at - f.at)
                per[t]["healthy_to_first_ack"].record(at - f.healthy)
            for t, at in f.first_delivery.items():
                per[t]["healthy_to_first_delivery"].record(at - f.healthy)
            if f.first_ack:
                table["fault_to_first_ack"].record(min(f.first_ack.values()) - f.at)
                table["healthy_to_first_ack"].record(min(f.first_ack.values()) - f.healthy)
            if f.first_delivery:
                first = min(f.first_delivery.values())
                table["healthy_to_first_delivery"].record(first - f.healthy)
        found[kind] = {
            "count": len(chosen),
            "ms": {name: summarize(lat.total) for name, lat in table.items()},
            "by_transport_ms": {
                t: {name: summarize(lat.total) for name, lat in names.items()}
                for t, names in sorted(per.items())
            },
        }
    return found


def summary(r: dict[str, Any]) -> str:
    """The report, as printed."""
    p = r["params"]
    m = r["messages"]
    lines = [
        f"teleconsult soak: {dict(r['faults']) or 'no faults'}; {p['users']} users, "
        f"{p['transport']}, {p['rate_per_user']:g} msg/s each"
        + (f"; links: {r['params']['impairment']}" if p["impairment"] else "")
        + f" (run {r['run_id']})",
        f"messages: sent {m['sent']}, acked {m['acked']}, stored {m['stored']}, delivered "
        f"{m['delivered']}; lost {m['lost']}, duplicated {m['duplicated']}, unexpected "
        f"{m['unexpected']}, out of order {m['out_of_order']}",
    ]
    lines += [f"  {text}" for text in m["examples"][:10]]
    lines.append(f"{'transport':<10} {'latency':<18} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for t, entry in r["transports"].items():
        for name, s in entry["latency_ms"].items():
            lines.append(f"{t:<10} {name:<18} {_ms(s['p50'])} {_ms(s['p99'])} {_ms(s['max'])}")
        if "wire_bytes_per_message" in entry:
            lines.append(
                f"{t:<10} bytes on the wire per message: {entry['wire_bytes_per_message']:g}"
            )
    for kind, rec in r["recovery"].items():
        lines.append(f"recovery after {rec['count']} {kind} faults (p50 / p99 / max ms):")
        rows = [("all", rec["ms"])] + list(rec["by_transport_ms"].items())
        for who, table in rows:
            for name, s in table.items():
                lines.append(
                    f"  {who:<10} {name:<26} {_ms(s['p50'])} {_ms(s['p99'])} {_ms(s['max'])}"
                )
    if r["errors"]:
        lines.append(f"errors: {r['errors']}")
    return "\n".join(lines)


def _ms(value: Any) -> str:
    return f"{value:9.1f}" if isinstance(value, int | float) else f"{'-':>9}"
