"""Authenticated ``GET /api/v1/me``: the whole teleconsult stack against bare aiohttp.

Run: ``.venv/bin/python -m bench.api_requests [--concurrency 32] [--rate R] [--smoke]``.

``--users`` signed-in patients, their access tokens cycled through. Closed loop
(``--concurrency`` workers, each waiting for its answer), and with ``--rate`` open
loop too (latency from each request's due time). Targets:

* ``teleconsult``: ``teleconsult serve`` with ``LOG_LEVEL=WARNING``;
  ``teleconsult-logged``: the same with its INFO access log, as deployed;
* ``http-ref``: ``bench/refs/pyref.py``, bare aiohttp: verify the HS256 token with
  pyjwt (teleconsult's options), one ``SELECT`` of user and session by primary key
  through a pool of the same size, a ``json.dumps`` answer.

Confirm steps: every request answered 200, none left unanswered.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import aiohttp

from bench.harness import report
from bench.harness.load import Refused, drive_http
from bench.harness.report import Column, Row
from bench.harness.world import Lab, open_lab
from teleconsult.core.identity import Role

TARGETS = ("teleconsult", "teleconsult-logged", "http-ref")
COLUMNS = (
    Column("req/s", "rate", ">7.0f"),
    Column("p50 ms", "p50", ">7.2f"),
    Column("p90 ms", "p90", ">7.2f"),
    Column("p99 ms", "p99", ">7.2f"),
    Column("p99.9 ms", "p99.9", ">8.2f"),
    Column("srv us/req", "server_us", ">10.0f"),
    Column("db us/req", "db_us", ">9.0f"),
)


async def bench_target(lab: Lab, name: str, tokens: list[str]) -> list[Row]:
    args = lab.args
    await lab.quiet()
    if name.startswith("teleconsult"):
        level = "INFO" if name == "teleconsult-logged" else "WARNING"
        server = lab.teleconsult(name, LOG_LEVEL=level)
    else:
        server = lab.reference(name, "--db")
    headers = [{"Authorization": f"Bearer {t}"} for t in tokens]

    async def me(http: aiohttp.ClientSession, index: int) -> None:
        url = f"{server.base}/api/v1/me"
        async with http.get(url, headers=headers[index % len(headers)]) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise Refused(f"HTTP {resp.status}", body.decode(errors="replace"))

    rows = []
    try:
        await server.wait_http("/readyz")
        for rate in [None, *([args.rate] if args.rate else [])]:
            mode = "closed" if rate is None else f"open@{rate:g}"
            got = await drive_http(
                me,
                f"{name} {mode}",
                lab.meter(server),
                concurrency=args.concurrency,
                warmup=args.warmup,
                duration=args.duration,
                rate=rate,
            )
            row = Row(name if rate is None else f"{name} {mode}", cpu=got.cpu, lag=got.lag)
            row.fields.update(got.latency.ms(), rate=got.rate, failed=got.failed)
            row.fields.update(
                server_us=row.per_unit_us("server", got.completed),
                db_us=row.per_unit_us("db", got.completed),
            )
            row.notes += [f"error: {sample}" for sample in got.samples]
            row.check(f"every request answered 200 ({got.failed} not)", not got.failed)
            row.check(f"no request left unanswered ({got.unfinished})", not got.unfinished)
            rows.append(row.judge())
        server.check_alive()
    finally:
        server.stop()
    return rows


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with open_lab("api", args) as lab:
        tokens = [p.token for p in await lab.people(Role.PATIENT, args.users)]
        rows = [row for name in args.targets for row in await bench_target(lab, name, tokens)]
        found, ratio_text = report.ratios(
            rows, "rate", ["http-ref"], higher_is_better=True, what="requests/s"
        )
        head = f"GET /api/v1/me, {args.concurrency} connections, {args.users} users"
        text = [head, report.table(rows, COLUMNS), ratio_text, report.cpu_table(rows)]
        doc = "\n".join(t for t in text if t)
        return report.document("api_requests", args, lab.facts, rows, doc, ratios=found)


def main(argv: list[str] | None = None) -> int:
    p = report.parser("bench.api_requests", __doc__, TARGETS, ("teleconsult", "http-ref"))
    p.add_argument("--concurrency", type=int, default=32, help="connections / workers")
    p.add_argument("--rate", type=report.positive, default=None, help="also open loop at R/s")
    p.add_argument("--users", type=int, default=64, help="signed-in users to cycle through")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    p.add_argument("--duration", type=report.positive, default=10.0, help="measured seconds")
    args = p.parse_args(argv)
    if args.smoke:
        args.concurrency, args.users, args.warmup, args.duration = 4, 4, 0.2, 0.8
        args.rate = args.rate or 50.0
    return report.main(lambda: run(args), args)


if __name__ == "__main__":
    sys.exit(main())
