"""Behind a proxy the client's address is the one the proxy saw, not what the client wrote.

With ``TRUST_FORWARDED_FOR`` the server used the left-most ``X-Forwarded-For`` entry,
which is whatever the client sent: rotating it gave a fresh per-address login bucket
on every attempt, and a value that was not an address reached the audit trail's
check (a 500). Now the address is the entry ``TRUSTED_PROXY_COUNT`` places from the
right (the one the outermost trusted proxy appended); anything else falls back to
the peer address.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import shutil
import ssl
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.security.test_crafted_input import running
from tests.servers import free_port

pytestmark = pytest.mark.slow

LIMIT = 3
# What the proxy saw: the address it appends after whatever the client sent.
CLIENT = "203.0.113.7"
OTHER_CLIENT = "198.51.100.9"


async def _login(http: aiohttp.ClientSession, forwarded: str) -> int:
    """A failed login (an unknown e-mail each time: only the address limit applies)."""
    async with http.post(
        "/api/v1/auth/login",
        json={"email": f"nobody-{secrets.token_hex(4)}@example.test", "password": "x" * 12},
        headers={"X-Forwarded-For": forwarded},
    ) as resp:
        await resp.read()
        return resp.status


async def test_rotating_the_left_most_entry_does_not_give_fresh_login_buckets(
    fresh_db: str, tmp_path: Path
) -> None:
    env = {
        "TRUST_FORWARDED_FOR": "true",
        "TRUSTED_PROXY_COUNT": "1",
        "LOGIN_MAX_PER_ADDRESS": str(LIMIT),
    }
    async with running(fresh_db, tmp_path, **env) as server:
        async with aiohttp.ClientSession(server.base_url) as http:
            statuses = [await _login(http, f"10.9.8.{i}, {CLIENT}") for i in range(LIMIT + 2)]
            assert statuses == [401] * LIMIT + [429, 429]
            # Someone else behind the same proxy keeps their own bucket.
            assert await _login(http, f"10.9.8.1, {OTHER_CLIENT}") == 401


@pytest.mark.parametrize("forwarded", ["not-an-address", "10.0.0.1, <script>", "1.2.3.4:5678"])
async def test_a_forwarded_value_that_is_not_an_address_falls_back_to_the_peer(
    fresh_db: str, tmp_path: Path, forwarded: str
) -> None:
    env = {"TRUST_FORWARDED_FOR": "true", "LOGIN_MAX_PER_ADDRESS": str(LIMIT)}
    async with running(fresh_db, tmp_path, **env) as server:
        async with aiohttp.ClientSession(server.base_url) as http:
            # The peer (127.0.0.1) is the bucket: refused once it is spent, never a 500.
            statuses = [await _login(http, forwarded) for _ in range(LIMIT + 1)]
            assert statuses == [401] * LIMIT + [429]
            # A well-formed entry is a bucket of its own: the peer's was the one spent.
            assert await _login(http, CLIENT) == 401


# --- the sample reverse-proxy config, run for real ---------------------------------------

NGINX_CONF = Path(__file__).resolve().parents[2] / "deploy" / "proxy" / "nginx.conf"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _local_config(root: Path, upstream: int, http_port: int, https_port: int) -> Path:
    """The sample config as shipped, pointed at this machine: ports, certificate, files."""
    cert, key = _self_signed(root)
    text = NGINX_CONF.read_text(encoding="utf-8")
    replacements = {
        "pid /run/nginx.pid;": f"pid {root}/nginx.pid;\nerror_log {root}/error.log;",
        "server 127.0.0.1:8080 max_fails=3 fail_timeout=10s;": f"server 127.0.0.1:{upstream};",
        "server 127.0.0.1:8081 max_fails=3 fail_timeout=10s;": "",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "/etc/teleconsult/tls/fullchain.pem": str(cert),
        "/etc/teleconsult/tls/privkey.pem": str(key),
        "http {": f"http {{\n    client_body_temp_path {root}/body;\n"
        f"    proxy_temp_path {root}/proxy;",
    }
    for old, new in replacements.items():
        assert old in text, f"deploy/proxy/nginx.conf no longer has {old!r}"
        text = text.replace(old, new)
    # No IPv6 on every test machine.
    text = "\n".join(line for line in text.splitlines() if "listen [::]" not in line)
    config = root / "nginx.conf"
    config.write_text(text, encoding="utf-8")
    return config


def _nginx() -> str:
    found = shutil.which("nginx") or shutil.which("/usr/sbin/nginx")
    if found is None:
        pytest.fail("nginx is not installed; run `apt-get install nginx-light`")
    return found


def test_the_sample_nginx_config_is_valid() -> None:
    with tempfile.TemporaryDirectory() as directory:
        config = _local_config(Path(directory), 8080, free_port(), free_port())
        checked = subprocess.run(
            [_nginx(), "-t", "-c", str(config)], capture_output=True, text=True, check=False
        )
    assert checked.returncode == 0, checked.stderr


async def test_behind_the_sample_nginx_the_client_address_is_the_one_nginx_saw(
    fresh_db: str, tmp_path: Path
) -> None:
    """Through real nginx with TLS: the client's own X-Forwarded-For entries are ignored
    (nginx appends 127.0.0.1, the one login bucket), WebSockets upgrade, HSTS is sent,
    /metrics is not public and a huge body stops at nginx."""
    env = {
        "TRUST_FORWARDED_FOR": "true",
        "TRUSTED_PROXY_COUNT": "1",
        "LOGIN_MAX_PER_ADDRESS": str(LIMIT),
    }
    async with running(fresh_db, tmp_path, **env) as server:
        https_port = free_port()
        config = _local_config(tmp_path, server.port, free_port(), https_port)
        nginx = await asyncio.create_subprocess_exec(
            _nginx(),
            "-c",
            str(config),
            "-g",
            "daemon off;",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            tls = ssl.create_default_context(cafile=str(tmp_path / "fullchain.pem"))
            base = f"https://localhost:{https_port}"
            async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(ssl=tls)) as http:
                async with asyncio.timeout(30):
                    while True:  # nginx starts listening
                        try:
                            async with http.get("/healthz") as resp:
                                health = resp
                                break
                        except aiohttp.ClientConnectionError:
                            await asyncio.sleep(0.1)
                assert health.headers["Strict-Transport-Security"].startswith("max-age=")
                assert health.headers["X-Content-Type-Options"] == "nosniff"
                statuses = [await _login(http, f"10.9.8.{i}") for i in range(LIMIT + 1)]
                assert statuses == [401] * LIMIT + [429]
                async with http.get("/metrics") as resp:
                    assert resp.status == 404
                async with http.post(
                    "/api/v1/auth/login",
                    data=io.BytesIO(b"x" * (3 * 1024 * 1024)),
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    assert resp.status == 413
                async with http.ws_connect("/socket.io/?EIO=4&transport=websocket") as ws:
                    assert (await ws.receive_str(timeout=10)).startswith("0{")
        finally:
            nginx.terminate()
            await nginx.wait()
