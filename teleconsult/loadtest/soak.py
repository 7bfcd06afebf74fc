"""``teleconsult soak``: the command line of the bounded, self-checking fault run.

The run itself is ``soakrun.py``, its options and report ``soakplan.py``, its check
``reconcile.py``; see docs/loadtest.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from teleconsult.loadtest import LoadtestError
from teleconsult.loadtest.impair import PRESETS
from teleconsult.loadtest.links import TRANSPORTS
from teleconsult.loadtest.report import write_json
from teleconsult.loadtest.soakplan import SoakOptions
from teleconsult.loadtest.soakrun import Soak


def add_parser(sub: Any) -> None:
    """Add ``soak`` to the ``teleconsult`` command's subcommands."""
    parser = sub.add_parser(
        "soak",
        help="kill and restart a server of its own under chat traffic; check every message",
        description="Start a server (and PostgreSQL, and Redis when asked) of its own on "
        "loopback, send numbered chat messages while killing and restarting them, then "
        "reconcile the stored history: lost, duplicated, unexpected and out-of-order "
        "messages, and recovery times as percentiles. Bounded; progress on stderr.",
    )
    parser.add_argument("--kills", type=int, default=10, help="server SIGKILLs and restarts")
    parser.add_argument(
        "--redis-restarts", type=int, default=0, help="kills of the run's own Redis (implies it)"
    )
    parser.add_argument(
        "--postgres-restarts",
        type=int,
        default=0,
        help="crashes (pg_ctl -m immediate) and restarts of the run's own PostgreSQL",
    )
    parser.add_argument("--redis", action="store_true", help="give the server a Redis of its own")
    parser.add_argument("--users", type=int, default=6, help="chat users (threads of --group-size)")
    parser.add_argument("--group-size", type=int, default=2, help="users per thread")
    parser.add_argument("--transport", choices=TRANSPORTS, default="mixed")
    parser.add_argument("--rate", type=float, default=2.0, help="messages a second per user")
    parser.add_argument(
        "--duration", type=float, default=0.0, help="seconds of traffic at least (needed alone)"
    )
    parser.add_argument(
        "--down", type=float, default=0.5, help="seconds a killed process stays down"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=1.0,
        help="seconds of traffic after each recovery, plus a random part of as many again",
    )
    parser.add_argument(
        "--impair", choices=sorted(PRESETS), help="clients' links through the impairment proxy"
    )
    parser.add_argument("--cut-every", type=float, help="cut every client link every N seconds")
    parser.add_argument(
        "--database-url", help="a loopback database to use (default: a PostgreSQL of its own)"
    )
    parser.add_argument("--admin-email", help="with --database-url of an installed server")
    parser.add_argument("--admin-password", help="(or TELECONSULT_ADMIN_PASSWORD)")
    parser.add_argument("--encoding", choices=("msgpack", "json"), default="msgpack")
    parser.add_argument("--message-bytes", type=int, default=200)
    parser.add_argument(
        "--recovery-timeout",
        type=float,
        default=60.0,
        help="seconds every transport has to ack and deliver again after a fault",
    )
    parser.add_argument("--drain", type=float, default=60.0, help="seconds to wait for stragglers")
    parser.add_argument(
        "--time-limit", type=float, default=3600.0, help="hard bound on the faults and traffic"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep logs and data here (default: temporary, kept on failure)"
    )
    parser.add_argument("--json", type=Path, dest="json_path", help="write the results here")
    parser.add_argument("--seed", type=int, help="seed the fault order and timing")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def options_from(args: argparse.Namespace) -> SoakOptions:
    return SoakOptions(
        kills=args.kills,
        redis_restarts=args.redis_restarts,
        postgres_restarts=args.postgres_restarts,
        users=args.users,
        group_size=args.group_size,
        transport=args.transport,
        rate=args.rate,
        duration=args.duration,
        down=args.down,
        settle=args.settle,
        impair=args.impair,
        cut_every=args.cut_every,
        redis=args.redis,
        database_url=args.database_url,
        admin_email=args.admin_email,
        admin_password=args.admin_password,
        encoding=args.encoding,
        message_bytes=args.message_bytes,
        recovery_timeout=args.recovery_timeout,
        drain=args.drain,
        time_limit=args.time_limit,
        workdir=args.workdir,
        seed=args.seed,
        quiet=args.quiet,
    )


def main(args: argparse.Namespace) -> int:
    """0 when the run passed, 1 when it found a fault, 2 when it could not run."""
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        soak = Soak(options_from(args))
        outcome = asyncio.run(soak.run())
    except LoadtestError as exc:
        print(f"teleconsult soak: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("teleconsult soak: interrupted", file=sys.stderr)
        return 130
    print(outcome.summary)
    if args.json_path is not None:
        write_json(args.json_path, outcome.report)
        print(f"results written to {args.json_path}")
    if outcome.failures:
        print("result: FAILED: " + "; ".join(outcome.failures))
        return 1
    print("result: passed")
    return 0
