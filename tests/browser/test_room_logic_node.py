"""The room's pure logic under Node: when a call drops to audio only and comes back
(static/js/room/quality.js), and the network test's ping figures (netprobe.js), which
must match the Python probe's (teleconsult/rtc/figures.py) so the doctor reads the same
figures whichever client ran the test."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from teleconsult.rtc.figures import ping_figures
from tests.browser.nodekit import STATIC, run_node

SCRIPT = Path(__file__).with_name("room_logic_check.mjs")

GOOD = {"bps": 1_000_000, "loss": 0.0}
SLOW = {"bps": 100_000, "loss": 0.0}
LOSSY = {"bps": 1_000_000, "loss": 0.2}
MIDDLE = {"bps": 200_000, "loss": 0.05}  # between the two thresholds: no change either way


def node(command: dict[str, Any]) -> Any:
    return run_node(SCRIPT, command)


def modes(*samples: dict[str, Any]) -> list[str]:
    result: list[str] = node({"op": "modes", "samples": list(samples)})["modes"]
    return result


def test_one_bad_sample_does_not_drop_the_video() -> None:
    assert modes(GOOD, SLOW, GOOD, LOSSY, GOOD) == ["video"] * 5


@pytest.mark.parametrize("bad", [SLOW, LOSSY], ids=["low-bitrate", "high-loss"])
def test_two_bad_samples_in_a_row_drop_to_audio(bad: dict[str, Any]) -> None:
    assert modes(GOOD, bad, bad) == ["video", "video", "audio"]


def test_video_comes_back_only_after_five_good_samples_in_a_row() -> None:
    got = modes(SLOW, SLOW, GOOD, GOOD, GOOD, GOOD, SLOW, GOOD, GOOD, GOOD, GOOD, GOOD)
    assert got == ["video", "audio"] + ["audio"] * 9 + ["video"]


def test_figures_between_the_thresholds_keep_whatever_mode_holds() -> None:
    assert modes(MIDDLE, MIDDLE, MIDDLE) == ["video"] * 3
    assert modes(SLOW, SLOW, *[MIDDLE] * 8) == ["video"] + ["audio"] * 9


def test_thresholds_have_room_between_down_and_up() -> None:
    limits = node({"op": "modes", "samples": []})["thresholds"]
    assert limits["upBps"] > limits["downBps"]
    assert limits["upLoss"] < limits["downLoss"]


def test_a_sample_reads_bandwidth_and_loss_from_get_stats() -> None:
    pair = {
        "id": "CP1",
        "type": "candidate-pair",
        "nominated": True,
        "state": "succeeded",
        "availableOutgoingBitrate": 420_000,
    }
    before = [{"id": "IA", "type": "inbound-rtp", "packetsReceived": 100, "packetsLost": 0}]
    after = [
        pair,
        {"id": "IA", "type": "inbound-rtp", "packetsReceived": 190, "packetsLost": 10},
        {"id": "IV", "type": "inbound-rtp", "packetsReceived": 100, "packetsLost": 0},
    ]
    got = node({"op": "sample", "before": before, "after": after})
    assert got["bps"] == 420_000
    assert got["loss"] == pytest.approx(10 / 200)


def test_no_packets_means_no_loss_figure() -> None:
    assert node({"op": "sample", "before": None, "after": []}) == {"bps": None, "loss": None}


@pytest.mark.parametrize(
    ("sent", "rtts"),
    [(60, [0.012, 0.015, 0.011, 0.030, 0.014] * 12), (60, [0.2, 0.25, 0.21] * 10), (10, [])],
    ids=["all-echoed", "half-lost", "none-echoed"],
)
def test_the_browsers_ping_figures_are_the_python_probes(sent: int, rtts: list[float]) -> None:
    js = node({"op": "pings", "sent": sent, "rtts": rtts})
    py = ping_figures(sent, rtts)
    assert js["pings_sent"] == py.sent and js["pings_echoed"] == py.echoed
    assert js["loss"] == pytest.approx(py.loss)
    for name in ("rtt_ms_min", "rtt_ms_p50", "rtt_ms_p95", "rtt_ms_max", "jitter_ms"):
        expected = getattr(py, name)
        assert (js[name] is None) == (expected is None), name
        if expected is not None:
            assert js[name] == pytest.approx(expected, abs=0.002), name


def test_every_string_of_the_room_doctor_and_chat_modules_is_in_both_catalogues() -> None:
    catalogues = [
        json.loads((STATIC / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
        for lang in ("en", "fr")
    ]
    files = [*(STATIC / "js").glob("room/*.js"), *(STATIC / "js").glob("doctor/*.js")]
    files += [*(STATIC / "js").glob("chat/*.js"), STATIC / "room.html", STATIC / "doctor.html"]
    missing: list[str] = []
    seen = 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        keys = re.findall(r"\bt\(\s*'([a-z0-9_.]+)'", text)
        keys += re.findall(r'data-i18n(?:-placeholder|-aria-label|-title)?="([^"]+)"', text)
        prefixes = re.findall(r"\bt\(\s*`([a-z0-9_.]+)\$\{", text)
        seen += len(keys)
        for catalogue in catalogues:
            missing += [f"{path.name}: {k}" for k in keys if k not in catalogue]
            missing += [
                f"{path.name}: {p}*"
                for p in prefixes
                if not any(k.startswith(p) for k in catalogue)
            ]
    assert len(files) > 15 and seen > 100  # the patterns do find the pages' keys
    assert missing == []


# -- who is who on a group call's tiles (static/js/room/people.js) ----------------------

DOCTOR = {"peer_id": "p-doc", "role": "doctor", "status": "admitted", "user_id": "u-doc"}
PATIENT = {"peer_id": "p-pat", "role": "patient", "status": "admitted", "user_id": "u-pat"}


def people(**command: Any) -> Any:
    base: dict[str, Any] = {"learn": [], "identities": [], "mids": [], "streams": [], "names": []}
    return node({"op": "people", **base, **command})


def test_a_livekit_participant_is_the_roster_peer_with_that_user_id() -> None:
    got = people(
        learn=[[{**DOCTOR, "name": "Dr Jean Okafor"}], [{**PATIENT, "name": "Grace Mwangi"}]],
        identities=["u-pat", "u-doc", "u-pat", "u-stranger"],
    )
    # One tile per identity: the same person's tracks land on the same peer's tile; an
    # identity the roster does not know yet gets a tile of its own.
    assert got["identities"] == ["p-pat", "p-doc", "p-pat", "identity:u-stranger"]


def test_a_janus_track_is_the_peer_its_mid_is_listed_for() -> None:
    streams = [
        {"mid": "0", "peer_id": "p-doc"},
        {"mid": "1", "peer_id": "p-doc"},
        {"mid": "2", "peer_id": "p-pat"},
        {"mid": "3", "peer_id": "p-pat"},
    ]
    got = people(streams=streams, mids=["3", "0", "2", "9", None])
    assert got["mids"] == ["p-pat", "p-doc", "p-pat", None, None]


def test_a_later_view_without_a_name_keeps_the_name_known() -> None:
    got = people(
        learn=[
            [{**PATIENT, "name": "Grace Mwangi"}],
            [{"peer_id": "p-pat", "role": "patient", "status": "admitted"}],
            [{"peer_id": "p-guest", "role": "guest", "status": "admitted"}],
        ]
    )
    assert got["people"]["p-pat"] == {
        "peerId": "p-pat",
        "role": "patient",
        "userId": "u-pat",
        "name": "Grace Mwangi",
    }
    # A tile says the name, else the role (a catalogue key, in both languages).
    assert got["labels"] == ["Grace Mwangi", "t:room.person_guest"]


def test_an_audio_only_tile_shows_the_initials_of_the_first_and_last_name() -> None:
    got = people(names=["Grace Mwangi", "jean-paul de la Fontaine", "Ngozi", "  ", "élodie ørsted"])
    assert got["initials"] == ["GM", "JF", "N", "?", "ÉØ"]
