"""``teleconsult loadtest SCENARIO``: the scenario registry and the command line.

A scenario is registered here with its own options and an async ``run``; one
whose server side does not exist yet is registered with the reason instead,
so ``--help`` lists it and running it says why it cannot run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teleconsult.loadtest import LoadtestError, booking, chat, links, signal
from teleconsult.loadtest.common import Common, Outcome
from teleconsult.loadtest.report import plot, require_plotting, write_json

Runner = Callable[[Common, argparse.Namespace], Coroutine[Any, Any, Outcome]]


@dataclass(frozen=True)
class Scenario:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Runner | None
    unavailable: str | None = None  # why it cannot run yet


# --- chat -----------------------------------------------------------------------------


def _chat_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transport",
        choices=links.TRANSPORTS,
        default="websocket",
        help="Socket.IO over WebSocket or HTTP long-polling, MQTT, or all three in turn",
    )
    parser.add_argument(
        "--group-size",
        type=int,
        default=2,
        help="users per thread: 2 is a 1:1 (direct) thread, more a group (care team)",
    )
    parser.add_argument("--encoding", choices=("msgpack", "json"), default="msgpack")
    parser.add_argument(
        "--message-bytes", type=int, default=200, help="plaintext size of each message"
    )
    parser.add_argument(
        "--ack-timeout", type=float, default=30.0, help="seconds a send may take, retries included"
    )
    parser.add_argument(
        "--mqtt-url",
        help="the broker for --transport mqtt|mixed (default: mqtt://<host of --url>:1883)",
    )
    parser.set_defaults(rate=1.0)


async def _run_chat(common: Common, args: argparse.Namespace) -> Outcome:
    if not 16 <= args.message_bytes <= 64 * 1024:
        raise LoadtestError("--message-bytes must be between 16 and 65536")
    if args.ack_timeout <= 0:
        raise LoadtestError("--ack-timeout must be positive")
    options = chat.ChatOptions(
        transport=args.transport,
        group_size=args.group_size,
        encoding=args.encoding,
        message_bytes=args.message_bytes,
        ack_timeout=args.ack_timeout,
        mqtt_url=args.mqtt_url,
    )
    return await chat.run(common, options)


# --- booking --------------------------------------------------------------------------


def _booking_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--doctors", type=int, default=5, help="doctors to book with")
    parser.add_argument("--days", type=int, default=28, help="book within this many days")
    parser.add_argument("--slot-minutes", type=int, default=30, help="consultation length")
    parser.add_argument(
        "--request-timeout", type=float, default=30.0, help="seconds a request may take"
    )
    parser.set_defaults(rate=0.2)


async def _run_booking(common: Common, args: argparse.Namespace) -> Outcome:
    if args.request_timeout <= 0:
        raise LoadtestError("--request-timeout must be positive")
    options = booking.BookingOptions(
        doctors=args.doctors,
        days=args.days,
        slot_minutes=args.slot_minutes,
        request_timeout=args.request_timeout,
    )
    return await booking.run(common, options)


# --- signal ---------------------------------------------------------------------------


def _signal_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rooms", type=int, default=10, help="consultation rooms (2 sockets each)")
    parser.add_argument(
        "--burst",
        action="store_true",
        help="start every room at the same moment (the default unless --rate is given)",
    )
    parser.add_argument(
        "--rooms-per-doctor",
        type=int,
        default=3,
        help="rooms booked on each doctor's earliest slots (all must be joinable now)",
    )
    parser.add_argument(
        "--slot-minutes", type=int, default=5, help="consultation length (the slot grid)"
    )
    parser.add_argument(
        "--candidates", type=int, default=5, help="ICE candidates each peer sends the other"
    )
    parser.add_argument(
        "--sdp-bytes", type=int, default=4000, help="size of each synthetic offer and answer"
    )
    parser.add_argument("--transport", choices=signal.TRANSPORTS, default="websocket")
    parser.add_argument(
        "--joins",
        choices=signal.JOINS,
        default="together",
        help="doctor and patient join at the same moment, or the patient once the doctor is in",
    )
    parser.add_argument(
        "--step-timeout",
        type=float,
        default=10.0,
        help="seconds one step of a room may take (an answer, an awaited message)",
    )


async def _run_signal(common: Common, args: argparse.Namespace) -> Outcome:
    if args.burst and args.rate is not None:
        raise LoadtestError("--burst starts every room at once; leave out --rate")
    options = signal.SignalOptions(
        rooms=args.rooms,
        rate=args.rate,
        rooms_per_doctor=args.rooms_per_doctor,
        slot_minutes=args.slot_minutes,
        candidates=args.candidates,
        sdp_bytes=args.sdp_bytes,
        transport=args.transport,
        step_timeout=args.step_timeout,
        joins=args.joins,
    )
    return await signal.run(common, options)


SCENARIOS = (
    Scenario(
        "chat",
        "users in 1:1 or group threads sending messages on a schedule",
        _chat_arguments,
        _run_chat,
    ),
    Scenario(
        "booking",
        "patients searching free slots and booking them",
        _booking_arguments,
        _run_booking,
    ),
    Scenario(
        "signal",
        "consultation rooms doing join, admit, offer, answer and ICE candidates",
        _signal_arguments,
        _run_signal,
    ),
)
BY_NAME = {s.name: s for s in SCENARIOS}


# --- the command line -----------------------------------------------------------------


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the server under test")
    parser.add_argument(
        "--users", type=int, default=20, help="virtual users (signal: see --rooms instead)"
    )
    parser.add_argument(
        "--rate", type=float, help="actions per user per second (signal: rooms started per second)"
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument(
        "--ramp", type=float, default=5.0, help="seconds over which users connect, with jitter"
    )
    parser.add_argument(
        "--drain", type=float, default=10.0, help="seconds to wait for late answers at the end"
    )
    parser.add_argument("--json", type=Path, dest="json_path", help="write the results here")
    parser.add_argument(
        "--plot",
        type=Path,
        dest="plot_path",
        help="draw latency over time to this PNG (needs: pip install 'teleconsult[loadtest]')",
    )
    parser.add_argument(
        "--admin-email", help="a clinic admin to set up users as (default: the credentials file)"
    )
    parser.add_argument(
        "--admin-password",
        help="that admin's password (or TELECONSULT_ADMIN_PASSWORD in the environment)",
    )
    parser.add_argument(
        "--credentials",
        type=Path,
        help="the file `teleconsult serve` wrote the first admin's password to "
        "(default: $TELECONSULT_DATA_DIR/initial-admin.txt, else var/initial-admin.txt)",
    )
    parser.add_argument(
        "--setup-concurrency",
        type=int,
        default=8,
        help="users created at once (argon2id makes each slow on purpose)",
    )
    parser.add_argument(
        "--keep-accounts",
        action="store_true",
        help="leave the run's users enabled (default: disable them at the end)",
    )
    parser.add_argument("--seed", type=int, help="seed the random jitter, for repeatable runs")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def add_parser(sub: Any) -> None:
    """Add ``loadtest`` to the ``teleconsult`` command's subcommands."""
    parser = sub.add_parser(
        "loadtest",
        help="put load on a running server (chat, booking, signal)",
        description="Open-loop load against a running server, through its public API "
        "and the project's own client library. Prints latency percentiles from the "
        "scheduled time, throughput, errors, lost and duplicated messages.",
    )
    scenarios = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for scenario in SCENARIOS:
        one = scenarios.add_parser(scenario.name, help=scenario.help, description=scenario.help)
        if scenario.unavailable is None:
            _common_arguments(one)
        scenario.arguments(one)


def _common(args: argparse.Namespace) -> Common:
    common = Common(
        url=args.url.rstrip("/"),
        users=args.users,
        rate=args.rate or 0.0,  # only signal leaves it out: every room at once
        duration=args.duration,
        ramp=args.ramp,
        drain=args.drain,
        json_path=args.json_path,
        plot_path=args.plot_path,
        admin_email=args.admin_email,
        admin_password=args.admin_password,
        credentials=args.credentials,
        setup_concurrency=args.setup_concurrency,
        keep_accounts=args.keep_accounts,
        quiet=args.quiet,
        seed=args.seed,
    )
    if not 1 <= common.users <= 100_000:
        raise LoadtestError("--users must be between 1 and 100000")
    if args.rate is not None and not 0 < common.rate <= 1000:
        raise LoadtestError("--rate must be above 0 and at most 1000 per user per second")
    if not 0 < common.duration <= 24 * 3600:
        raise LoadtestError("--duration must be above 0 and at most a day")
    if not (0 <= common.ramp <= 3600 and 0 <= common.drain <= 3600):
        raise LoadtestError("--ramp and --drain must be between 0 and 3600 seconds")
    if not 1 <= common.setup_concurrency <= 256:
        raise LoadtestError("--setup-concurrency must be between 1 and 256")
    if not common.url.startswith(("http://", "https://")):
        raise LoadtestError("--url must start with http:// or https://")
    return common


def main(args: argparse.Namespace) -> int:
    """Run the scenario ``args`` names; 0 when it passed, 1 when it failed, 2 when it
    could not run."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    scenario = BY_NAME[args.scenario]
    if scenario.run is None:
        print(
            f"teleconsult loadtest: the {scenario.name} scenario is not available yet: "
            f"{scenario.unavailable}",
            file=sys.stderr,
        )
        return 2
    try:
        common = _common(args)
        if common.plot_path is not None:
            require_plotting()
        outcome = asyncio.run(scenario.run(common, args))
    except LoadtestError as exc:
        print(f"teleconsult loadtest: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("teleconsult loadtest: interrupted", file=sys.stderr)
        return 130
    print(outcome.summary)
    if common.json_path is not None:
        write_json(common.json_path, outcome.report)
        print(f"results written to {common.json_path}")
    if common.plot_path is not None:
        plot(
            common.plot_path,
            outcome.report["timeline"],
            outcome.plot_latencies,
            outcome.plot_rates,
            outcome.plot_title,
        )
        print(f"latency over time drawn in {common.plot_path}")
    if outcome.failures:
        print("result: FAILED: " + "; ".join(outcome.failures))
        return 1
    print("result: passed")
    return 0
