"""``teleconsult loadtest``, run as operators run it: the real command against a real server.

Each end-to-end test starts ``teleconsult serve`` on a fresh database (with its
embedded MQTT broker on a free port), runs a small bounded scenario through the
command line in a subprocess, and checks the JSON it wrote: percentiles are
there, every acknowledged message reached every recipient exactly once, every
booking answered 201 is on the books, every room completes its exchange.
Timings are not asserted. The report and
schedule helpers are checked on their own, without a server.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from teleconsult.loadtest.openloop import Schedule
from teleconsult.loadtest.report import Latency, Recorder, plot, summarize
from teleconsult.loadtest.sdp import candidate_line, synthetic_sdp
from tests.dbutil import create_database, drop_database
from tests.servers import ServerProcess, free_port

PERCENTILE_KEYS = {"count", "p50", "p90", "p99", "p99.9", "max", "mean"}


@dataclass
class Server:
    process: ServerProcess
    credentials: Path
    mqtt_port: int


@dataclass
class Ran:
    code: int
    out: str
    err: str
    report: dict[str, Any]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    dsn = await create_database()
    mqtt_port = free_port()
    process = ServerProcess(dsn, tmp_path, MQTT_EMBEDDED_PORT=str(mqtt_port))
    try:
        await process.start()
        yield Server(process, tmp_path / "server" / "initial-admin.txt", mqtt_port)
    finally:
        await process.stop()
        await drop_database(dsn)


async def loadtest(*args: str, cwd: Path, json_path: Path | None = None) -> Ran:
    """``python -m teleconsult loadtest ARGS`` with a bound on its time."""
    env = {k: v for k, v in os.environ.items() if k != "TELECONSULT_ADMIN_PASSWORD"}
    env["TELECONSULT_DATA_DIR"] = str(cwd / "no-such-dir")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "teleconsult",
        "loadtest",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(150):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    report = await asyncio.to_thread(_read_json, json_path) if json_path is not None else {}
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode(), report)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    found: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return found


async def run_scenario(server: Server, tmp_path: Path, *args: str) -> Ran:
    out = tmp_path / "result.json"
    ran = await loadtest(
        *args,
        "--url",
        server.process.base_url,
        "--credentials",
        str(server.credentials),
        "--json",
        str(out),
        "--seed",
        "1",
        "--ramp",
        "1",
        "--drain",
        "15",
        cwd=tmp_path,
        json_path=out,
    )
    assert ran.code == 0, f"exit {ran.code}\nstdout:\n{ran.out}\nstderr:\n{ran.err[-3000:]}"
    return ran


def assert_every_message_once(report: dict[str, Any], recipients: int) -> None:
    m = report["messages"]
    assert m["scheduled"] > 0
    assert m["sent"] == m["acked"] == m["scheduled"]
    assert m["delivered"] == m["deliveries_expected"] == m["acked"] * recipients
    assert (m["lost"], m["lost_deliveries"], m["duplicated"], m["unsent"]) == (0, 0, 0, 0)
    assert report["errors"] == {}
    latency = report["latency_ms"]
    assert set(latency["send_to_ack"]) == PERCENTILE_KEYS
    assert latency["send_to_ack"]["count"] == m["acked"]
    assert latency["send_to_delivered"]["count"] == m["delivered"]
    assert all(latency["send_to_delivered"][k] is not None for k in PERCENTILE_KEYS)
    assert set(report["hdr_histograms"]) == {"send_to_ack", "send_to_delivered"}
    assert report["timeline"] and report["passed"] is True


@pytest.mark.slow
@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_chat_delivers_every_acked_message_once_and_reports_percentiles(
    server: Server, tmp_path: Path, transport: str
) -> None:
    ran = await run_scenario(
        server,
        tmp_path,
        "chat",
        "--users",
        "6",
        "--rate",
        "2",
        "--duration",
        "5",
        "--transport",
        transport,
        "--group-size",
        "2",
    )
    assert_every_message_once(ran.report, recipients=1)
    assert ran.report["setup"]["transports"] == {transport: 6}
    assert "p99.9" in ran.out and "send→delivered" in ran.out
    assert "result: passed" in ran.out
    assert "sent" in ran.err and "p99 ms" in ran.err  # the live progress line


@pytest.mark.slow
async def test_chat_in_group_threads_over_mixed_transports_reaches_every_member(
    server: Server, tmp_path: Path
) -> None:
    ran = await run_scenario(
        server,
        tmp_path,
        "chat",
        "--users",
        "6",
        "--rate",
        "2",
        "--duration",
        "4",
        "--transport",
        "mixed",
        "--mqtt-url",
        f"mqtt://127.0.0.1:{server.mqtt_port}",
        "--group-size",
        "3",
    )
    assert_every_message_once(ran.report, recipients=2)
    assert ran.report["setup"]["thread_kind"] == "care_team"
    assert ran.report["setup"]["transports"] == {"websocket": 2, "polling": 2, "mqtt": 2}


@pytest.mark.slow
async def test_booking_puts_every_answered_booking_on_the_books(
    server: Server, tmp_path: Path
) -> None:
    ran = await run_scenario(
        server,
        tmp_path,
        "booking",
        "--users",
        "4",
        "--rate",
        "1",
        "--duration",
        "3",
        "--doctors",
        "2",
        "--days",
        "2",
    )
    b = ran.report["bookings"]
    assert b["scheduled"] == b["attempted"] == b["searched"] > 0
    assert b["booked"] + b["conflicts"] + b["no_slot"] == b["searched"]
    assert b["booked"] > 0
    assert (b["missing"], b["unanswered"]) == (0, 0)
    assert b["listed"] == b["booked"]
    assert ran.report["errors"] == {}
    assert set(ran.report["latency_ms"]["search"]) == PERCENTILE_KEYS
    assert ran.report["latency_ms"]["search_and_book"]["count"] == b["booked"] + b["conflicts"]


@pytest.mark.slow
async def test_signal_rooms_join_admit_and_relay_every_description_and_candidate(
    server: Server, tmp_path: Path
) -> None:
    ran = await run_scenario(
        server,
        tmp_path,
        "signal",
        "--rooms",
        "3",
        "--rooms-per-doctor",
        "2",  # one doctor in two rooms at once, on two sockets
        "--candidates",
        "3",
    )
    report = ran.report
    rooms = dict(report["rooms"])
    assert 0 <= rooms.pop("patient_joined_first") <= 3  # whichever join the server took first
    assert rooms == {
        "scheduled": 3,
        "started": 3,
        "admitted": 3,
        "negotiated": 3,
        "completed": 3,
        "failed": 0,
    }
    s = report["signals"]
    assert s["candidates_sent"] == s["candidates_received"] == 3 * 2 * 3
    assert s["relayed"] == 3 * 2 + s["candidates_received"]  # an offer and an answer a room
    assert (s["candidates_lost"], s["duplicated"], s["unexpected"]) == (0, 0, 0)
    assert report["errors"] == {}
    assert report["setup"]["doctors"] == 2 and report["setup"]["sockets"] == 6
    latency = report["latency_ms"]
    for name in ("join_doctor", "join_patient", "admit", "offer", "answer", "room"):
        assert set(latency[name]) == PERCENTILE_KEYS
        assert latency[name]["count"] == 3
    assert latency["candidate"]["count"] == s["candidates_received"]
    assert set(report["hdr_histograms"]) == set(latency)
    assert report["timeline"] and report["passed"] is True
    assert "p99.9" in ran.out and "candidate→received" in ran.out and "result: passed" in ran.out
    assert "completed" in ran.err and "p99 ms" in ran.err  # the live progress line


async def test_signal_burst_and_rate_together_are_refused(tmp_path: Path) -> None:
    ran = await loadtest("signal", "--burst", "--rate", "2", cwd=tmp_path)
    assert ran.code == 2
    assert "--burst" in ran.err


def test_synthetic_sdp_has_about_the_asked_size_and_differs_per_room() -> None:
    offer = synthetic_sdp("offer", 1, 4000)
    assert 4000 <= len(offer.encode()) <= 4400
    assert offer.startswith("v=0\r\n") and "m=audio" in offer and "m=video" in offer
    assert offer != synthetic_sdp("offer", 2, 4000) != synthetic_sdp("answer", 1, 4000)
    lines = {candidate_line(r, role, k) for r in (1, 2) for role in ("a", "b") for k in (0, 1)}
    assert len(lines) == 8


async def test_without_admin_credentials_it_says_how_to_give_them(tmp_path: Path) -> None:
    ran = await loadtest("chat", "--url", "http://127.0.0.1:9", "--users", "2", cwd=tmp_path)
    assert ran.code == 2
    assert "--admin-password" in ran.err and "--credentials" in ran.err


async def test_users_must_fill_whole_groups(tmp_path: Path) -> None:
    ran = await loadtest("chat", "--users", "5", "--group-size", "2", cwd=tmp_path)
    assert ran.code == 2
    assert "multiple of --group-size" in ran.err


def test_a_user_has_every_slot_of_the_duration_whatever_its_phase() -> None:
    schedule = Schedule(t0=100.0, rate=2.0, duration=5.0)
    assert [schedule.count(phase) for phase in (0.0, 0.25, 0.4999)] == [10, 10, 10]
    assert schedule.at(0.25, 3) == pytest.approx(101.75)
    assert Schedule(t0=0.0, rate=0.3, duration=5.0).count(0.0) == 2  # at 0 s and 3.33 s


def test_percentiles_come_from_the_histogram_in_milliseconds() -> None:
    recorder = Recorder(["send_to_ack"], ["acked"])
    for ms in range(1, 1001):
        recorder.record("send_to_ack", ms / 1000)
    found = recorder.latencies()["send_to_ack"]
    assert found["count"] == 1000
    assert found["p50"] == pytest.approx(500, rel=0.01)
    assert found["p99.9"] == pytest.approx(999, rel=0.01)
    assert found["max"] == pytest.approx(1000, rel=0.01)
    assert summarize(Recorder(["x"], []).latency["x"].total)["p99"] is None


def test_a_seconds_figures_match_the_histogram_and_the_next_second_starts_empty() -> None:
    latency = Latency()
    for ms in range(1, 1001):
        latency.record(ms / 1000)
    whole = summarize(latency.interval)
    second = latency.take_interval()
    assert second == {key: whole[key] for key in ("count", "p50", "p99", "max")}
    assert latency.take_interval() == {"count": 0, "p50": None, "p99": None, "max": None}
    assert latency.total.get_total_count() == 1000


def test_plot_draws_a_png_of_latency_over_time(tmp_path: Path) -> None:
    recorder = Recorder(["send_to_ack"], ["acked"])
    for second in range(1, 4):
        for ms in (5, 10, 50):
            recorder.record("send_to_ack", ms * second / 1000)
            recorder.count("acked")
        recorder.tick(float(second))
    out = tmp_path / "latency.png"
    plot(out, recorder.timeline, {"send_to_ack": "send→ack"}, {"acked": "acked/s"}, "a test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
