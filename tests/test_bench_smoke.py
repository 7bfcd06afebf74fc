"""Every benchmark runs end to end in its ``--smoke`` configuration, so the bench cannot rot.

Each scenario runs as a subprocess (it pins its own CPU affinity and PostgreSQL's),
four at a time. A smoke run lifts its latency budget out of reach, so no timing can
fail it: these tests check behaviour (every confirm step passed: messages delivered
and stored, envelopes opened, connections held, rows that add up) and that the
tables, ratios and JSON come out. They never assert a timing or a verdict, which on
a shared machine may be INVALID or noisy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

# scenario -> (targets, the rows the JSON must hold, the ratio's base or None)
SCENARIOS: dict[str, tuple[str, set[str], str | None]] = {
    "chat_delivery": ("teleconsult,sio-batch", {"teleconsult", "sio-batch"}, "sio-batch"),
    "fanout": ("teleconsult,sio-room", {"teleconsult", "sio-room"}, "sio-room"),
    "idle_memory": ("teleconsult,sio-relay", {"teleconsult", "sio-relay"}, "sio-relay"),
    "signal_join": ("teleconsult,sio-constant", {"teleconsult", "sio-constant"}, "sio-constant"),
    "booking": ("teleconsult,raw-insert", {"teleconsult", "raw-insert"}, "raw-insert"),
    "api_requests": ("teleconsult,http-ref", {"teleconsult", "http-ref"}, "http-ref"),
    "reconnect_storm": ("teleconsult,ws-ref", {"teleconsult", "ws-ref"}, "ws-ref"),
    "mqtt_path": (
        "mosquitto,teleconsult-mosquitto",
        {"mosquitto", "teleconsult-mosquitto"},
        "mosquitto",
    ),
    "wire_bytes": ("teleconsult", {"websocket msgpack", "polling json"}, None),
}


def _smoke(name: str, out: Path) -> tuple[str, dict[str, Any] | None, str]:
    targets = SCENARIOS[name][0]
    command = [sys.executable, "-m", f"bench.{name}", "--smoke", "--targets", targets]
    done = subprocess.run(
        [*command, "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=180
    )
    report = json.loads(out.read_text()) if out.exists() else None
    return name, report, f"{done.stdout}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def reports(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[dict[str, Any] | None, str]]:
    folder = tmp_path_factory.mktemp("bench")
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = pool.map(lambda name: _smoke(name, folder / f"{name}.json"), SCENARIOS)
        return {name: (report, output) for name, report, output in runs}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_smoke_run_passes_every_confirm_step(
    name: str, reports: dict[str, tuple[dict[str, Any] | None, str]]
) -> None:
    report, output = reports[name]
    assert report is not None, f"bench.{name} wrote no results:\n{output}"
    _, targets, base = SCENARIOS[name]
    rows = {row["target"]: row for row in report["rows"]}
    assert targets <= set(rows), output
    for row in report["rows"]:
        failed = [check["what"] for check in row["checks"] if not check["ok"]]
        assert not failed, f"{row['target']}: {failed}\n{output}"
        assert row["verdict"] in {"yes", "noisy", "INVALID"}
    assert "valid" in report["table"]
    if base is not None:
        assert any(ratio["base"].split(" ")[0] == base for ratio in report["ratios"]), output


def test_chat_smoke_checks_a_real_envelope_and_the_stored_rows(
    reports: dict[str, tuple[dict[str, Any] | None, str]],
) -> None:
    report, output = reports["chat_delivery"]
    assert report is not None, output
    rows = {row["target"]: row for row in report["rows"]}
    teleconsult = {check["what"].split(" (")[0] for check in rows["teleconsult"]["checks"]}
    assert "one envelope opened and verified by its recipient" in teleconsult
    assert "rows stored = messages acked" in teleconsult
    batch = {check["what"].split(" (")[0] for check in rows["sio-batch"]["checks"]}
    assert "rows stored = messages acked" in batch
    assert any(step["kind"] == "same-load" for step in report["steps"])
