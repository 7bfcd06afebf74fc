"""Bulk export memory stays flat: a real server process exports 10,000 and then 100,000
patients, and its peak RSS (``VmHWM``) is read after each. The figures are printed
(``pytest -s``); the test fails when the 100k export raised the peak by more than
:data:`FLAT_MIB` over the 10k one, which a
server holding a file's resources in memory would (100k Patient resources alone are
over 60 MiB of JSON text, several times that as Python objects).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from teleconsult.core.identity import Role
from tests.fhirseed import seed_patients
from tests.servers import ServerProcess
from tests.world import PASSWORD, clinic_people

pytestmark = pytest.mark.slow
FLAT_MIB = 40
KICK = {"Accept": "application/fhir+json", "Prefer": "respond-async"}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def _export(http: aiohttp.ClientSession, headers: dict[str, str]) -> dict[str, Any]:
    async with http.get("/fhir/R4/$export", headers={**headers, **KICK}) as resp:
        assert resp.status == 202, await resp.text()
        status = resp.headers["Content-Location"]
    status = status[status.index("/fhir/") :]
    async with asyncio.timeout(600):
        while True:
            async with http.get(status, headers=headers) as resp:
                if resp.status == 200:
                    manifest: dict[str, Any] = await resp.json()
                    return manifest
                assert resp.status in (202, 429), await resp.text()
            await asyncio.sleep(1.0)


async def test_peak_memory_is_flat_from_10k_to_100k_exported_patients(
    fresh_db: str, tmp_path: Path
) -> None:
    admin, doctor = await clinic_people(fresh_db, Role.ADMIN, Role.DOCTOR, name="Memory")
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=2)
    server = ServerProcess(
        fresh_db, tmp_path, FHIR_EXPORT_IN_SERVER="true", FHIR_EXPORT_RETRY_AFTER="1"
    )
    figures: list[tuple[int, int, float]] = []
    try:
        await server.start()
        assert server._proc is not None
        pid = server._proc.pid
        async with aiohttp.ClientSession(server.base_url) as http:
            async with http.post(
                "/api/v1/auth/login", json={"email": admin.email, "password": PASSWORD}
            ) as resp:
                assert resp.status == 200
                headers = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
            seeded = 0
            for target in (10_000, 100_000):
                await seed_patients(
                    pool, admin.clinic_id, doctor.user_id, target - seeded, appointments=False
                )
                seeded = target
                manifest = await _export(http, headers)
                written = sum(item["count"] for item in manifest["output"])
                counts = {item["type"]: item["count"] for item in manifest["output"]}
                assert counts["Patient"] == target
                figures.append((target, written, peak_rss_mib(pid)))
    finally:
        server.kill()
        await pool.close()
    for patients, written, peak in figures:
        print(f"\nexport of {patients} patients ({written} resources): peak RSS {peak:.1f} MiB")
    growth = figures[1][2] - figures[0][2]
    print(f"peak RSS growth from 10k to 100k patients: {growth:.1f} MiB")
    assert growth < FLAT_MIB, figures
