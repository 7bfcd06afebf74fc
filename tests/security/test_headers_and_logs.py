"""Logs and headers, read from a real server process.

- Every answer carries nosniff, a referrer policy, X-Frame-Options and a CSP that
  forbids framing; the API, FHIR and engine.io answers are ``no-store``; no answer,
  not even aiohttp's own to a request it cannot parse, names the server software.
- The generated admin password is printed on the first start only.
- Malformed client input (Socket.IO frames on /chat and /signal, HTTP aiohttp cannot
  parse, garbage on the MQTT port) is one WARNING line without a traceback, and no
  query string reaches the log, whatever carries it.
- ``/metrics`` behind a token, or on a listener of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from teleconsult.accounts.bootstrap import CREDENTIALS_FILE, read_credentials
from tests.security.test_crafted_input import raw_request, running
from tests.servers import free_port

pytestmark = pytest.mark.slow

SECRET = "s3cr3t-in-the-query"


def _assert_hardened(path: str, headers: Any) -> None:
    assert headers.get("X-Content-Type-Options") == "nosniff", path
    assert headers.get("Referrer-Policy") == "no-referrer", path
    assert headers.get("X-Frame-Options") == "DENY", path
    assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", ""), path
    server = headers.get("Server", "")
    assert "aiohttp" not in server and "Python" not in server, (path, server)


async def test_every_answer_carries_the_security_headers(fresh_db: str, tmp_path: Path) -> None:
    async with running(fresh_db, tmp_path) as server, aiohttp.ClientSession() as http:
        no_store = [
            "/api/v1/me",
            "/api/v1/openapi.json",
            "/api/v1/nowhere",
            "/fhir/R4/Slot",
            "/socket.io/?EIO=4&transport=polling",
            "/socket.io/?EIO=9&transport=polling",
        ]
        for path in [*no_store, "/healthz", "/metrics", "/nowhere"]:
            async with http.get(server.base_url + path) as resp:
                await resp.read()
                _assert_hardened(path, resp.headers)
                if path in no_store:
                    assert resp.headers.get("Cache-Control") == "no-store", path
        async with http.ws_connect(f"{server.base_url}/socket.io/?EIO=4&transport=websocket") as ws:
            await ws.receive_str(timeout=10)
        # A request aiohttp cannot parse is answered below the application.
        status, headers, _ = await raw_request(server.port, b"GE\x01T / HTTP/1.1\r\n\r\n")
        assert status == 400
        server_header = headers.get("server", "")
        assert "aiohttp" not in server_header and "Python" not in server_header, headers


async def test_the_generated_admin_password_is_printed_on_the_first_start_only(
    fresh_db: str, tmp_path: Path
) -> None:
    async with running(fresh_db, tmp_path) as server:
        first = server.log_text()
    password = read_credentials(tmp_path / "server" / CREDENTIALS_FILE)["password"]
    assert password in first
    await server.start()
    await server.stop()
    assert server.log_text().count(password) == 1
    # The later start still says where the password is.
    assert server.log_text().count(CREDENTIALS_FILE) >= 2


async def _malformed_frames(base: str, token: str) -> None:
    """Frames no Socket.IO client sends, on /chat and /signal; each on a connection of
    its own (a bad frame may end the connection)."""
    frames = [
        "42/chat,[[[",
        '42/chat,1["send",' + "[" * 50_000 + "]" * 50_000 + "]",
        '451000-/chat,["send",{"_placeholder":true,"num":0}]',
        "4x",
        "9",
        "42/signal,{{",
    ]
    async with aiohttp.ClientSession() as http:
        for frame in frames:
            namespace = "/signal" if "/signal" in frame else "/chat"
            async with http.ws_connect(
                f"{base}/socket.io/?EIO=4&transport=websocket&token={SECRET}"
            ) as ws:
                await ws.receive_str(timeout=10)
                await ws.send_str(f"40{namespace}," + json.dumps({"token": token}))
                assert (await ws.receive_str(timeout=10)).startswith(f"40{namespace},")
                await ws.send_str(frame)
                # Something after it, so the server has read the bad frame before we go.
                await ws.send_str("3")
                await asyncio.sleep(0.2)


async def _mqtt_garbage(port: int) -> None:
    for junk in (
        b"\x10\xff\xff\xff\xff\x7fgarbage",  # a remaining length longer than MQTT allows
        b"\x30\x05\x00\x01xab",  # PUBLISH before CONNECT
        b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00",  # CONNECT with no credentials
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(junk)
        await writer.drain()
        # An answer (a refusing CONNACK) or the end of the connection; a broker that
        # says nothing is left behind.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(1024), 5)
        writer.close()
        await writer.wait_closed()


async def test_malformed_input_is_a_warning_without_traceback_and_queries_are_never_logged(
    fresh_db: str, tmp_path: Path
) -> None:
    mqtt_port = free_port()
    env = {"LOG_FORMAT": "json", "MQTT_EMBEDDED_PORT": str(mqtt_port)}
    async with running(fresh_db, tmp_path, **env) as server:
        credentials = read_credentials(tmp_path / "server" / CREDENTIALS_FILE)
        async with aiohttp.ClientSession(server.base_url) as http:
            async with http.post(
                "/api/v1/auth/login",
                json={"email": credentials["email"], "password": credentials["password"]},
            ) as resp:
                token = (await resp.json())["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            # A patient search (name in the query) and engine.io's own query strings.
            async with http.get(f"/api/v1/patients?q={SECRET}", headers=auth) as resp:
                assert resp.status == 200
            for query in (f"EIO=4&transport=polling&token={SECRET}", f"EIO=9&x={SECRET}"):
                async with http.get(f"/socket.io/?{query}") as resp:
                    await resp.read()
        await _malformed_frames(server.base_url, token)
        # Request lines aiohttp cannot parse quote the query string in their error.
        for request in (
            f"GET /api/v1/me?token={SECRET} HTTP/1.1 junk\r\n\r\n",
            f"GET /api/v1/me?token={SECRET} HTTP/1.1\r\nBad Header\r\n\r\n",
        ):
            status, _, _ = await raw_request(server.port, request.encode())
            assert status == 400
        await _mqtt_garbage(mqtt_port)
        # The server answers as before.
        async with aiohttp.ClientSession() as http, http.get(server.base_url + "/healthz") as r:
            assert r.status == 200
    text = server.log_text()
    assert SECRET not in text
    assert "Traceback" not in text
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert not [r for r in records if r["level"] in ("ERROR", "CRITICAL")], [
        r for r in records if r["level"] in ("ERROR", "CRITICAL")
    ]
    malformed = [r for r in records if r.get("malformed_input")]
    assert {r["logger"] for r in malformed} >= {"engineio.server", "aiohttp.server"}
    assert all(r["level"] == "WARNING" and "exc" not in r for r in malformed)


async def test_metrics_behind_a_token(fresh_db: str, tmp_path: Path) -> None:
    token = "metrics-token-" + "x" * 20
    async with (
        running(fresh_db, tmp_path, METRICS_TOKEN=token) as server,
        aiohttp.ClientSession(server.base_url) as http,
    ):
        for sent in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            async with http.get("/metrics", headers=sent) as resp:
                assert resp.status == 401, sent
                assert resp.content_type == "application/problem+json"
        async with http.get("/metrics", headers={"Authorization": f"Bearer {token}"}) as resp:
            assert resp.status == 200
            assert "teleconsult_http_requests_total" in await resp.text()


async def test_metrics_on_a_listener_of_their_own(fresh_db: str, tmp_path: Path) -> None:
    port = free_port()
    async with (
        running(fresh_db, tmp_path, METRICS_PORT=str(port)) as server,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(server.base_url + "/metrics") as resp:
            assert resp.status == 404
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            assert "teleconsult_http_requests_total" in await resp.text()
