"""Recordings sealed at rest: crypto throughput beside raw libsodium, and seeks into 1 GiB.

Run: ``.venv/bin/python -m bench.recording_crypto [--mib 256] [--gib 1] [--seeks 200]
[--smoke] [--json PATH]``.

Two parts, one invocation:

* **Throughput** (in this process, one core): ``--mib`` MiB of random bytes in memory,
  sealed and opened with ``teleconsult.recording.seal`` (64 KiB chunks, the STREAM
  nonces, header, one call per chunk) against the same data through raw libsodium
  XChaCha20-Poly1305 (``crypto_aead_xchacha20poly1305_ietf_encrypt``/``_decrypt`` on
  each 64 KiB chunk with a fixed nonce and AD: the primitive alone, nothing around it).
  Best of three rounds each; the ratio is ours over raw.
* **Seeks** (the whole server): a ``--gib`` GiB random file is sealed into the store
  of a real ``teleconsult serve`` through ``RecordingService.ingest`` (timed: read,
  seal, fsync, rename, plaintext overwrite), then ``--seeks`` requests
  ``GET /api/v1/recordings/{id}/media`` with ``Range: bytes=X-X+64KiB`` at random X,
  one at a time, each timed to its first body byte (authentication, the audited row
  read, the header and final chunk, the touched chunks). Then one request streams the
  whole recording. The server's peak RSS (``VmHWM``) is read from /proc before the
  seeks and after the full stream.

Throughput rows are INVALID when a round trip does not give the data back; the seek row
when a range answers other bytes than were sealed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

from bench.harness import report
from bench.harness.load import say
from bench.harness.report import Column, Row
from bench.harness.world import Lab, open_lab
from teleconsult.audit import AuditTrail
from teleconsult.core.identity import Principal, Role
from teleconsult.recording.keys import KeyRing, new_key_text
from teleconsult.recording.seal import (
    DEFAULT_CHUNK_SIZE,
    MasterKey,
    file_reader,
    open_range,
    seal_stream,
)
from teleconsult.recording.service import RecordingService
from teleconsult.recording.storage import LocalBlobStore

TARGETS = ("throughput", "seeks")
CHUNK = DEFAULT_CHUNK_SIZE
MIB = 1 << 20


def _best(run: Any, rounds: int = 3) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def throughput(mib: int) -> list[Row]:
    data = os.urandom(mib * MIB)
    key = os.urandom(32)
    nonce = os.urandom(24)
    ad = os.urandom(32)
    master = MasterKey(1, os.urandom(32))
    ring = KeyRing((master,))
    view = memoryview(data)
    chunks = [bytes(view[i : i + CHUNK]) for i in range(0, len(data), CHUNK)]
    sealed_raw: list[bytes] = []

    def raw_seal() -> None:
        sealed_raw[:] = [
            crypto_aead_xchacha20poly1305_ietf_encrypt(c, ad, nonce, key) for c in chunks
        ]

    def raw_open() -> None:
        for c in sealed_raw:
            crypto_aead_xchacha20poly1305_ietf_decrypt(c, ad, nonce, key)

    sink = io.BytesIO()

    def our_seal() -> None:
        sink.seek(0)
        sink.truncate()
        seal_stream(io.BytesIO(data), sink, master, chunk_size=CHUNK)

    opened: list[bytes] = []

    def our_open() -> None:
        blob = sink.getvalue()
        opened[:] = open_range(file_reader(io.BytesIO(blob)), len(blob), ring.get)

    say(f"throughput: {mib} MiB, raw libsodium then teleconsult, best of 3")
    times = {
        "raw-seal": _best(raw_seal),
        "raw-open": _best(raw_open),
        "seal": _best(our_seal),
        "open": _best(our_open),
    }
    ok = b"".join(opened) == data
    rows = []
    for name, seconds in times.items():
        row = Row(f"{'teleconsult' if not name.startswith('raw') else 'libsodium'} {name}")
        row.fields["mb_s"] = mib * MIB / seconds / 1e6
        row.fields["seconds"] = seconds
        row.check("round trip gives the data back", ok)
        rows.append(row.judge())
    for op in ("seal", "open"):
        ratio = Row(f"ratio {op} / raw-{op}")
        ratio.fields["mb_s"] = times[f"raw-{op}"] / times[op]
        rows.append(ratio.judge())
    return rows


def _rss(pid: int) -> dict[str, float]:
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) / 1024
    return found


async def seeks(lab: Lab, gib: float, count: int) -> tuple[list[Row], dict[str, Any]]:
    doctor = (await lab.people(Role.DOCTOR, 1))[0]
    patient = (await lab.people(Role.PATIENT, 1))[0]
    async with lab.connect() as conn:
        await conn.execute(
            "INSERT INTO doctor_profiles (user_id, clinic_id, consultation_minutes, "
            "buffer_minutes, currency, services) VALUES ($1, $2, 30, 0, 'KES', '{video}')",
            doctor.user_id,
            lab.clinic_id,
        )
        appointment_id: UUID = await conn.fetchval(
            "INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at, "
            "ends_at, status) VALUES ($1, $2, $3, 'video', now() + interval '1 day', "
            "now() + interval '1 day 30 minutes', 'confirmed') RETURNING id",
            lab.clinic_id,
            doctor.user_id,
            patient.user_id,
        )
    key_text = new_key_text(1)
    work = Path(tempfile.mkdtemp(prefix="bench-recording-"))
    store_dir = work / "recordings"
    size = int(gib * (1 << 30))
    plain = work / "plain.webm"
    say(f"seeks: writing {size / MIB:.0f} MiB of random plaintext")
    digest = hashlib.sha256()
    with plain.open("wb") as out:
        for _ in range(0, size, 64 * MIB):
            block = os.urandom(min(64 * MIB, size - out.tell()))
            digest.update(block)
            out.write(block)
    version, _, b64 = key_text.partition(":")
    ring = KeyRing.of([(int(version), base64.b64decode(b64))])
    pool = await asyncpg.create_pool(lab.dsn, min_size=1, max_size=2)
    try:
        service = RecordingService(
            pool=pool, audit=AuditTrail(pool), blobs=LocalBlobStore(store_dir), keys=ring
        )
        as_patient = Principal(patient.user_id, lab.clinic_id, Role.PATIENT, patient.session_id)
        as_doctor = Principal(doctor.user_id, lab.clinic_id, Role.DOCTOR, doctor.session_id)
        await service.give_consent(as_patient, appointment_id)
        started = await service.begin(as_doctor, appointment_id, "bench")
        say("seeks: sealing it through RecordingService.ingest")
        t0 = time.perf_counter()
        await service.ingest(started.id, plain, "video/webm")
        ingest_s = time.perf_counter() - t0
    finally:
        await pool.close()
    server = lab.teleconsult("teleconsult", RECORDING_KEYS=key_text, RECORDING_DIR=str(store_dir))
    facts: dict[str, Any] = {"ingest_mb_s": size / ingest_s / 1e6, "size_bytes": size}
    row = Row("teleconsult seek")
    full = Row("teleconsult full stream")
    try:
        await server.wait_http("/healthz")
        url = f"{server.base}/api/v1/recordings/{started.id}/media"
        headers = {"Authorization": f"Bearer {doctor.token}"}
        before = _rss(server.pid)
        rng = random.Random(13)
        ttfb: list[float] = []
        ok = True
        async with aiohttp.ClientSession() as http:
            # The plaintext is gone once sealed: seeks are checked by status and length,
            # the full stream against the SHA-256 of what was written.
            last = time.monotonic()
            for index in range(count):
                start = rng.randrange(0, size - CHUNK)
                want = f"bytes={start}-{start + CHUNK - 1}"
                t0 = time.perf_counter()
                async with http.get(url, headers={**headers, "Range": want}) as resp:
                    first = await resp.content.readany()
                    ttfb.append(time.perf_counter() - t0)
                    body = first + await resp.read()
                ok = ok and resp.status == 206 and len(body) == CHUNK
                if time.monotonic() - last >= 1:
                    say(f"seeks: {index + 1}/{count}")
                    last = time.monotonic()
            say("seeks: streaming the whole recording once")
            t0 = time.perf_counter()
            whole = hashlib.sha256()
            async with http.get(url, headers=headers) as resp:
                async for block in resp.content.iter_chunked(1 << 20):
                    whole.update(block)
            full_s = time.perf_counter() - t0
        after = _rss(server.pid)
        ttfb.sort()
        row.fields |= {
            "p50": ttfb[len(ttfb) // 2] * 1000,
            "p99": ttfb[min(len(ttfb) - 1, int(len(ttfb) * 0.99))] * 1000,
            "mean": statistics.fmean(ttfb) * 1000,
            "rss_before": before["VmRSS"],
            "rss_peak": after["VmHWM"],
        }
        row.check("every seek answered 206 with 64 KiB", ok)
        full.fields |= {
            "mb_s": size / full_s / 1e6,
            "rss_before": before["VmRSS"],
            "rss_peak": after["VmHWM"],
        }
        full.check("the full stream is the sealed plaintext", whole.digest() == digest.digest())
    finally:
        server.stop()
        await asyncio.to_thread(shutil.rmtree, work)
    return [row.judge(), full.judge()], facts


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with open_lab("recording", args) as lab:
        rows: list[Row] = []
        extra: dict[str, Any] = {}
        text = ""
        if "throughput" in args.targets:
            found = await asyncio.to_thread(throughput, 16 if args.smoke else args.mib)
            rows += found
            text += report.table(
                found, (Column("MB/s (ratio)", "mb_s", ">12.2f"), Column("s", "seconds", ">7.3f"))
            )
        if "seeks" in args.targets:
            found, extra = await seeks(
                lab, 0.0625 if args.smoke else args.gib, 20 if args.smoke else args.seeks
            )
            rows += found
            text += "\n" + report.table(
                found,
                (
                    Column("TTFB p50 ms", "p50", ">11.2f"),
                    Column("p99 ms", "p99", ">7.2f"),
                    Column("MB/s", "mb_s", ">7.0f"),
                    Column("RSS before MiB", "rss_before", ">14.1f"),
                    Column("peak RSS MiB", "rss_peak", ">12.1f"),
                ),
            )
            text += f"\ningest (seal from file into the store): {extra['ingest_mb_s']:.0f} MB/s\n"
        return report.document("recording_crypto", args, lab.facts, rows, text, **extra)


def main(argv: list[str] | None = None) -> int:
    parser = report.parser("bench.recording_crypto", __doc__, TARGETS, TARGETS)
    parser.add_argument("--mib", type=int, default=256, help="MiB for the throughput part")
    parser.add_argument("--gib", type=float, default=1.0, help="GiB of the recording to seek in")
    parser.add_argument("--seeks", type=int, default=200, help="seeks, one at a time")
    args = parser.parse_args(argv)
    return report.main(lambda: run(args), args)


if __name__ == "__main__":
    sys.exit(main())
