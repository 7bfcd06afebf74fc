"""The chat benchmarks run end to end with tiny parameters and produce their ratios.

Each bench runs as a subprocess (it pins its own CPU affinity). The p99 budget
is set so high that no timing can fail a step: these tests check behaviour
(messages delivered, envelopes verified, connections held, ratios computed),
never speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _bench(module: str, *args: str, out: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", module, *args, "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.exists(), f"{module} wrote no results:\n{done.stdout}\n{done.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_chat_delivery_delivers_every_message_and_compares_with_the_relay(
    tmp_path: Path,
) -> None:
    report = _bench(
        "bench.chat_delivery",
        "--targets=teleconsult,aiohttp-ws",
        "--pairs=1",
        "--start-rate=20",
        "--max-steps=1",
        "--warmup=0.1",
        "--duration=0.3",
        "--confirm=0.3",
        "--budget-ms=600000",
        "--retry-noisy=0",
        out=tmp_path / "delivery.json",
    )
    confirms = {s["target"]: s for s in report["steps"] if s["kind"] == "confirm"}
    assert set(confirms) == {"teleconsult", "aiohttp-ws"}
    for step in confirms.values():
        assert step["scheduled"] > 0
        assert step["delivered"] == step["scheduled"]
        assert step["errors"] == {}
    teleconsult = next(r for r in report["results"] if r["target"] == "teleconsult")
    assert any("opened and verified" in note for note in teleconsult["notes"])
    (ratio,) = report["ratios"]
    assert ratio["ratio"] == "teleconsult / aiohttp-ws"
    assert ratio["rate_ratio"] == pytest.approx(1.0)  # both ran the same single rate
    assert "cpu_per_message_ratio" in ratio


def test_idle_memory_holds_every_connection_and_compares_with_raw_aiohttp(
    tmp_path: Path,
) -> None:
    report = _bench(
        "bench.idle_memory",
        "--targets=teleconsult,aiohttp-ws",
        "--connections=20",
        "--settle=0.2",
        out=tmp_path / "idle.json",
    )
    results = {r["target"]: r for r in report["results"]}
    assert set(results) == {"teleconsult", "aiohttp-ws"}
    for result in results.values():
        assert result["alive"] == result["opened"] == 20
        assert result["invalid"] == []
        assert result["rss_per_connection"] is not None
    assert "teleconsult / aiohttp-ws" in report["table"]
