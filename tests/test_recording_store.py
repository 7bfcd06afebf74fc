"""The blob stores (local folder; S3-compatible against a server) and the service's
key rotation and retention on a database of their own (issue 13)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import UUID

import aiohttp
import asyncpg
import pytest

from teleconsult.core.identity import Role
from teleconsult.recording.keys import KeyRing
from teleconsult.recording.seal import HEADER_BYTES, Header, MasterKey, rewrap
from teleconsult.recording.storage import BlobStore, LocalBlobStore, StorageError
from teleconsult.recording.storage_s3 import S3BlobStore, sigv4_headers
from teleconsult.recording.upkeep import RotationProgress
from tests.recordingkit import Lab
from tests.world import clinic_people

K1 = MasterKey(1, os.urandom(32))
K2 = MasterKey(2, os.urandom(32))


# --- the stores' contract, on each store -------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server (an emulator; no real S3 server installs here: docs/rtc.md)."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or server.poll() is not None:
                raise AssertionError(f"moto server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


async def make_bucket(endpoint: str, bucket: str) -> None:
    url = f"{endpoint}/{bucket}"
    headers = sigv4_headers(
        method="PUT",
        url=url,
        region="us-east-1",
        access_key="test",
        secret_key="test",
        payload_sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        now=dt.datetime.now(dt.UTC),
    )
    async with aiohttp.ClientSession() as http, http.put(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()


@pytest.fixture(params=["local", "s3"])
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    store: BlobStore
    if request.param == "local":
        store = LocalBlobStore(tmp_path / "blobs")
    else:
        endpoint = request.getfixturevalue("s3_server")
        bucket = f"b{os.urandom(6).hex()}"
        await make_bucket(endpoint, bucket)
        store = S3BlobStore(
            endpoint=endpoint,
            bucket=bucket,
            region="us-east-1",
            access_key="test",
            secret_key="test",
            prefix="tc",
            staging=tmp_path / "staging",
        )
    try:
        yield store
    finally:
        await store.close()


async def put(blobs: BlobStore, name: str, data: bytes) -> None:
    async with blobs.writer(name) as sink:
        sink.write(data)


async def test_a_written_object_reads_back_by_range(blobs: BlobStore) -> None:
    data = os.urandom(300_000)
    await put(blobs, "recordings/c1/a.sealed", data)
    assert await blobs.size("recordings/c1/a.sealed") == len(data)
    assert await blobs.get_range("recordings/c1/a.sealed", 1000, 5000) == data[1000:6000]
    assert await blobs.get_range("recordings/c1/a.sealed", len(data) - 10, 100) == data[-10:]
    assert await blobs.list("recordings/") == ["recordings/c1/a.sealed"]


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def test_a_failed_write_leaves_nothing(blobs: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        async with blobs.writer("x/half.sealed") as sink:
            sink.write(b"partial")
            raise RuntimeError("the sealing failed")
    assert await blobs.size("x/half.sealed") is None
    assert await blobs.list() == []
    assert files_under(tmp_path) == []


async def test_a_head_is_rewritten_in_place(blobs: BlobStore) -> None:
    data = os.urandom(50_000)
    await put(blobs, "h.sealed", data)
    await blobs.rewrite_head("h.sealed", b"\0" * 108)
    assert await blobs.get_range("h.sealed", 0, 50_000) == b"\0" * 108 + data[108:]


async def test_delete_is_idempotent(blobs: BlobStore) -> None:
    await put(blobs, "d.sealed", b"abc")
    await blobs.delete("d.sealed")
    await blobs.delete("d.sealed")
    assert await blobs.size("d.sealed") is None
    with pytest.raises(StorageError):
        await blobs.get_range("d.sealed", 0, 3)


@pytest.mark.parametrize("name", ["../x", "/abs", "a//b", ".tmp/x", "a b", ""])
async def test_names_outside_the_store_are_refused(name: str, tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    with pytest.raises(StorageError):
        async with store.writer(name):
            pass


def test_sigv4_matches_awss_published_example() -> None:
    """AWS's own example (S3 API reference, "Signature Calculations for the
    Authorization Header", GET Object with a range)."""
    headers = sigv4_headers(
        method="GET",
        url="https://examplebucket.s3.amazonaws.com/test.txt",
        region="us-east-1",
        access_key="AKIAIOSFODNN7EXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        payload_sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        now=dt.datetime(2013, 5, 24, tzinfo=dt.UTC),
        headers={"Range": "bytes=0-9"},
    )
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_sigv4_signs_the_query_string() -> None:
    """AWS's example "GET Bucket (List Objects)" with ``max-keys=2&prefix=J``."""
    headers = sigv4_headers(
        method="GET",
        url="https://examplebucket.s3.amazonaws.com/?max-keys=2&prefix=J",
        region="us-east-1",
        access_key="AKIAIOSFODNN7EXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        payload_sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        now=dt.datetime(2013, 5, 24, tzinfo=dt.UTC),
    )
    assert headers["authorization"].endswith(
        "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
    )


# --- rotation and retention on a database of their own ----------------------------------


@pytest.fixture
async def lab(fresh_db: str, tmp_path: Path) -> AsyncIterator[Lab]:
    doctor, patient = await clinic_people(fresh_db, Role.DOCTOR, Role.PATIENT)
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=4)
    try:
        await pool.execute(
            "INSERT INTO doctor_profiles (user_id, clinic_id, consultation_minutes, "
            "buffer_minutes, currency, services) VALUES ($1, $2, 30, 10, 'KES', '{video}')",
            doctor.user_id,
            doctor.clinic_id,
        )
        yield Lab(pool, tmp_path, doctor, patient)
    finally:
        await pool.close()


async def test_rotation_keeps_every_recording_playable_and_frees_the_old_key(lab: Lab) -> None:
    old = lab.service(K1)
    media = {
        await lab.recording(old, m, n): m
        for n, m in enumerate(os.urandom(5000 + n) for n in range(5))
    }
    before = {
        rid: (lab.root / "recordings" / await name_of(lab, rid)).read_bytes() for rid in media
    }
    # A rotation that died after rewriting one header but before its row: resumable.
    crashed = next(iter(media))
    row = await lab.pool.fetchrow(
        "SELECT object_name, wrapped_key FROM recordings WHERE id = $1", crashed
    )
    head = Header.decode(await lab.blobs.get_range(row["object_name"], 0, HEADER_BYTES))
    await lab.blobs.rewrite_head(
        row["object_name"],
        rewrap(head.with_wrapped(1, row["wrapped_key"]), KeyRing((K1,)).get, K2).encode(),
    )

    steps: list[RotationProgress] = []
    report = await lab.service(K2, K1).rotate(batch=2, progress=steps.append)
    assert report.rewrapped == 5 and report.failed == 0
    assert report.by_version == {2: 5}
    assert steps[-1] == RotationProgress(5, 5) and len(steps) == 3
    newest_only = lab.service(K2)
    for recording_id, data in media.items():
        assert await lab.play(newest_only, recording_id) == data
        after = (lab.root / "recordings" / await name_of(lab, recording_id)).read_bytes()
        # only the key part of the header changed: no media was re-encrypted
        assert after[HEADER_BYTES:] == before[recording_id][HEADER_BYTES:]
        assert after[32:HEADER_BYTES] != before[recording_id][32:HEADER_BYTES]
    again = await lab.service(K2, K1).rotate()
    assert again.rewrapped == 0


async def name_of(lab: Lab, recording_id: UUID) -> str:
    name: str = await lab.pool.fetchval(
        "SELECT object_name FROM recordings WHERE id = $1", recording_id
    )
    return name


async def test_two_sweepers_expire_each_recording_once(lab: Lab) -> None:
    service = lab.service(K1)
    ids = [await lab.recording(service, os.urandom(3000), n) for n in range(6)]
    await lab.pool.execute("UPDATE recordings SET expires_at = now() - interval '1 minute'")
    counts = await asyncio.gather(
        lab.service(K1).sweep_expired(limit=2), lab.service(K1).sweep_expired(limit=10)
    )
    total = sum(counts)
    while swept := await service.sweep_expired(limit=10):
        total += swept
    assert total == 6
    audited = await lab.pool.fetchval(
        "SELECT count(*) FROM audit_intake WHERE action = 'recording.expire'"
    ) + await lab.pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'recording.expire'")
    assert audited == 6
    assert await lab.blobs.list() == []
    states = await lab.pool.fetch(
        "SELECT state, wrapped_key FROM recordings WHERE id = ANY($1)", ids
    )
    assert {(r["state"], r["wrapped_key"]) for r in states} == {("expired", None)}


def cli_env(lab: Lab, fresh_db: str, *keys: MasterKey) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": fresh_db,
        "TELECONSULT_DATA_DIR": str(lab.root),
        "RECORDING_KEYS": ",".join(f"{k.version}:{base64.b64encode(k.key).decode()}" for k in keys),
        "RECORDING_DIR": str(lab.root / "recordings"),
        "JWT_SECRET": "test-secret-" + "x" * 40,
        "MQTT_EMBEDDED_PORT": "off",
        "NOTIFY_IN_SERVER": "false",
        "LOG_LEVEL": "WARNING",
    }


async def teleconsult(env: dict[str, str], *argv: str) -> tuple[int, str]:
    run = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "teleconsult",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await run.communicate()
    assert run.returncode is not None
    return run.returncode, out.decode()


async def test_the_rotate_key_command_shows_progress(lab: Lab, fresh_db: str) -> None:
    service = lab.service(K1)
    media = [os.urandom(4000) for _ in range(3)]
    ids = [await lab.recording(service, m, n) for n, m in enumerate(media)]
    code, text = await teleconsult(
        cli_env(lab, fresh_db, K2, K1), "recordings", "rotate-key", "--batch", "2"
    )
    assert code == 0, text
    assert "2/3 recordings (66%)" in text and "3/3 recordings (100%)" in text, text
    assert "may be removed" in text, text
    for recording_id, data in zip(ids, media, strict=True):
        assert await lab.play(lab.service(K2), recording_id) == data


async def test_the_sweep_command_expires_what_is_due(lab: Lab, fresh_db: str) -> None:
    service = lab.service(K1)
    due = await lab.recording(service, os.urandom(2000), 0)
    kept = await lab.recording(service, os.urandom(2000), 1)
    await lab.pool.execute(
        "UPDATE recordings SET expires_at = now() - interval '1 minute' WHERE id = $1", due
    )
    code, text = await teleconsult(cli_env(lab, fresh_db, K1), "recordings", "sweep")
    assert code == 0, text
    assert "done: 1 recordings expired" in text, text
    states = dict(await lab.pool.fetch("SELECT id, state FROM recordings"))
    assert states == {due: "expired", kept: "ready"}
