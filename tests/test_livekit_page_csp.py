"""The pages' CSP lets them reach a LiveKit server they join directly (pure; the
browser test test_livekit_room.py sees the header on a live server)."""

from __future__ import annotations

import pytest

from teleconsult.pages.routes import sfu_origins


@pytest.mark.parametrize(
    ("url", "origins"),
    [
        ("ws://127.0.0.1:7880", ("ws://127.0.0.1:7880", "http://127.0.0.1:7880")),
        ("http://127.0.0.1:7880", ("ws://127.0.0.1:7880", "http://127.0.0.1:7880")),
        ("wss://lk.example.org", ("wss://lk.example.org", "https://lk.example.org")),
        ("https://lk.example.org/base/", ("wss://lk.example.org", "https://lk.example.org")),
        ("wss://[::1]:7880", ("wss://[::1]:7880", "https://[::1]:7880")),
    ],
)
def test_a_livekit_url_gives_its_websocket_and_http_origins(
    url: str, origins: tuple[str, ...]
) -> None:
    assert sfu_origins(url) == origins


@pytest.mark.parametrize("url", [None, "", "lk.example.org", "wss://bad host;x", "wss://a b"])
def test_no_livekit_or_a_malformed_host_adds_nothing(url: str | None) -> None:
    assert sfu_origins(url) == ()
