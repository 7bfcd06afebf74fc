"""``bench.sfu_relay`` runs end to end in its ``--smoke`` configuration: real servers
with their own Janus, Redis for ``teleconsult-redis``, one Janus for ``janus-direct``.

Like tests/test_bench_smoke.py, this checks behaviour, never a timing or a verdict
(on a shared machine a row may be noisy or INVALID): every publish answered with
Janus's own SDP answer, every candidate and leave acknowledged, every message
counted, and the ratios to ``janus-direct`` computed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.sfu_relay import TARGETS

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

# --smoke: 2 rooms of 3, one counted round, 5 candidates each then 1 sent alone.
PARTICIPANTS, CANDIDATES, ALONE = 6, 5, 1


def _run(*options: str, json_to: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bench.sfu_relay", *options]
    if json_to is not None:
        command += ["--json", str(json_to)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench") / "sfu_relay.json"
    done = _run("--smoke", json_to=out)
    output = f"{done.stdout}\n{done.stderr[-3000:]}"
    assert out.exists(), f"bench.sfu_relay wrote no results:\n{output}"
    return json.loads(out.read_text()), output


def test_every_target_passes_every_confirm_step(smoke: tuple[dict[str, Any], str]) -> None:
    report, output = smoke
    rows = {row["target"]: row for row in report["rows"]}
    assert set(rows) == set(TARGETS), output
    for row in rows.values():
        failed = [check["what"] for check in row["checks"] if not check["ok"]]
        assert not failed, f"{row['target']}: {failed}\n{output}"
        assert row["verdict"] in {"yes", "noisy", "INVALID"}
    relayed = {check["what"].split(" (")[0] for check in rows["teleconsult-redis"]["checks"]}
    assert "every room on the Janus SFU" in relayed
    assert "every publish answered with Janus's SDP answer" in relayed


def test_every_message_of_every_target_is_counted(smoke: tuple[dict[str, Any], str]) -> None:
    report, output = smoke
    for row in report["rows"]:
        counts = (row["publishes"], row["candidates"], row["alone"])
        assert counts == (PARTICIPANTS, PARTICIPANTS * CANDIDATES, PARTICIPANTS * ALONE), output
        assert row["errors"] == {}, output


def test_both_relay_targets_are_compared_with_janus_direct(
    smoke: tuple[dict[str, Any], str],
) -> None:
    report, output = smoke
    pairs = {(r["target"], r["key"]) for r in report["ratios"] if r["base"] == "janus-direct"}
    for target in ("teleconsult", "teleconsult-redis"):
        for key in ("cand_p50_ms", "cand_p99_ms", "cand_rate", "solo_p50_ms", "pub_p99_ms"):
            assert (target, key) in pairs, output
    assert "CPU per message (us)" in report["table"]


def test_options_out_of_range_are_refused_before_anything_starts() -> None:
    done = _run("--candidates", "200", "--solo", "60")
    assert done.returncode == 2
    assert "at most 250 together" in done.stderr
