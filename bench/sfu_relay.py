"""What the ``/signal`` SDP relay costs for Janus rooms: each SFU message through
teleconsult, against the same Janus operations sent straight to Janus's HTTP API.

Run: ``.venv/bin/python -m bench.sfu_relay [--rooms 20] [--candidates 50] [--smoke]``.

``--rooms`` consultation rooms of three: a doctor, a patient and an invited third
person (a nurse, as an interpreter would be), so every room is on the SFU. A
*round*: every participant publishes at once (a real aiortc offer with one audio
track, made before anything is timed and the same bytes for every target), then,
once every publish is answered, each sends ``--candidates`` trickle candidates one
after the other (the next when the last was acknowledged), all participants at
once (``cand``: a queue forms, ``cand/s`` is the most the path carries); then
``--solo`` more each, one participant at a time (``alone``: the cost of the hops
without a queue); then each leaves the SFU. The first ``--warmup-rounds`` are not
counted. Latency runs from a message's send to its acknowledgement.

* ``teleconsult`` (``-redis``: room state and grants in Redis, as with several
  processes): ``python -m teleconsult serve`` with ``SFU=janus``, which starts its own
  Janus on loopback (on the server's core). Each participant joins ``/signal``
  (the doctor admits the patient, invites and admits the third: the room moves to
  the SFU) and sends ``sfu`` messages: ``publish`` (the server makes the
  participant's Janus session, attaches, joins with the participant's token and
  publishes: four Janus requests), ``candidate`` (one ``trickle``), ``leave``.
* ``janus-direct``: what janus.js would do. One Janus started the way the server
  starts it (``teleconsult.rtc.janus_runtime.janus_backend``), pinned to the server's
  core; rooms and grants made through the same ``JanusSfu`` before the timing; each
  participant has its own HTTP client (its own browser) and :class:`JanusSession`
  (``teleconsult.rtc.janus``): publish is create + attach + join + publish, a
  candidate one ``trickle``, leave a ``destroy``.

Server CPU per message (``srv us``) is the teleconsult process's; Janus's own is
``janus us`` (the server's Janus is its child). Redis's CPU is not counted: it is
the machine's shared Redis. Confirm steps: every room on the SFU with a grant for
each (teleconsult), every publish answered with Janus's SDP answer, every
candidate and leave acknowledged, nothing refused (warm-up included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from uuid import uuid4

import aiohttp
from aiortc import RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack

from bench.harness import report
from bench.harness.cpu import (
    CpuMeter,
    CpuReport,
    child_named,
    database_pids,
    pin_threads,
    process_seconds,
)
from bench.harness.latency import Recorder
from bench.harness.load import Progress, Refused, say
from bench.harness.report import Column, Row
from bench.harness.sio import SioConnection, client_session
from bench.harness.world import Lab, Person, open_lab
from bench.signal_join import Caller, make_rooms
from teleconsult.core.identity import Role
from teleconsult.core.settings import SfuSettings
from teleconsult.rtc.janus import JanusSession
from teleconsult.rtc.janus_runtime import janus_backend
from teleconsult.rtc.janus_sfu import JanusSfu
from teleconsult.rtc.sfu import SfuEvent, SfuRole

TARGETS = ("teleconsult", "teleconsult-redis", "janus-direct")
BASE = "janus-direct"
ICE_INTERFACES = "lo"  # Janus gathers on loopback only, as in the tests
COLUMNS = (
    Column("pubs", "publishes", ">5d"),
    Column("pub p50", "pub_p50_ms", ">7.1f"),
    Column("pub p99", "pub_p99_ms", ">7.1f"),
    Column("cands", "candidates", ">6d"),
    Column("cand p50", "cand_p50_ms", ">8.2f"),
    Column("cand p99", "cand_p99_ms", ">8.2f"),
    Column("cand max", "cand_max_ms", ">8.1f"),
    Column("cand/s", "cand_rate", ">7.0f"),
    Column("alone p50", "solo_p50_ms", ">9.2f"),
    Column("alone p99", "solo_p99_ms", ">9.2f"),
    Column("srv us/cand", "server_us_cand", ">11.0f"),
    Column("janus us/cand", "janus_us_cand", ">13.0f"),
    Column("srv us/pub", "server_us_pub", ">10.0f"),
)
GROUPS = ("gen", "server", "janus")
T = TypeVar("T")


class Participant(Protocol):
    """One participant's SFU messages; each raises ``Refused`` when not acknowledged ok."""

    async def publish(self, sdp: str) -> str: ...

    async def candidate(self, candidate: dict[str, Any]) -> None: ...

    async def leave(self) -> None: ...

    async def close(self) -> None: ...


# --- the offers and candidates every target gets -------------------------------------


async def make_offers(count: int) -> list[str]:
    """``count`` real aiortc offers with one audio track (their connections closed)."""
    offers = []
    for _ in range(count):
        pc = RTCPeerConnection()
        try:
            pc.addTrack(AudioStreamTrack())
            await pc.setLocalDescription(await pc.createOffer())
            offers.append(str(pc.localDescription.sdp))
        finally:
            await pc.close()
    return offers


def candidate(participant: int, k: int) -> dict[str, Any]:
    """Host candidate ``k`` of a participant: a loopback address of its own (127.x.y.z,
    port 9), so Janus's connectivity checks stay on this machine and reach nobody."""
    high, low = divmod(participant, 250)
    address = f"127.{1 + high}.{low}.{k + 1}"
    return {
        "candidate": f"candidate:{k + 1} 1 udp {2122260223 - k} {address} 9 typ host generation 0",
        "sdpMid": "0",
        "sdpMLineIndex": 0,
    }


def janus_answer(sdp: Any) -> bool:
    """Janus's answer to a publish: an SDP whose session is VideoRoom's."""
    return isinstance(sdp, str) and sdp.startswith("v=0") and "s=VideoRoom" in sdp


# --- teleconsult: over /signal --------------------------------------------------------


class Relayed:
    """A participant on ``/signal``: requests with acks, and the events pushed to it."""

    def __init__(self, conn: SioConnection) -> None:
        self.conn = conn
        self.caller = Caller(conn)
        self.events: dict[str, list[Any]] = {}
        self.peer_id = ""
        self.arrived = asyncio.Event()
        conn.on_event = self._heard

    def _heard(self, name: str, data: Any, attachments: list[bytes]) -> None:
        self.events.setdefault(name, []).append(data)
        self.arrived.set()

    async def call(self, event: str, data: Any, within: float = 30.0) -> dict[str, Any]:
        _, future = await self.caller.send(event, data)
        try:
            _, answer = await asyncio.wait_for(future, within)
        except TimeoutError:
            raise Refused(f"{event}: no answer") from None
        if not isinstance(answer, dict) or not answer.get("ok"):
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            raise Refused(f"{event}: {error.get('code', answer)}", str(error.get("message", "")))
        return answer

    async def event(self, name: str, within: float = 30.0) -> Any:
        async with asyncio.timeout(within):
            while not self.events.get(name):
                self.arrived.clear()
                await self.arrived.wait()
        return self.events[name][0]

    async def publish(self, sdp: str) -> str:
        answer = await self.call("sfu", {"kind": "publish", "sdp": sdp})
        return str(answer.get("sdp"))

    async def candidate(self, candidate: dict[str, Any]) -> None:
        await self.call("sfu", {"kind": "candidate", "candidate": candidate})

    async def leave(self) -> None:
        await self.call("sfu", {"kind": "leave"})

    async def close(self) -> None:
        await self.conn.close()


async def into_sfu(
    doctor: Relayed, patient: Relayed, third: Relayed, room: str, who: Person
) -> None:
    """The doctor joins, admits the patient, invites and admits the third: the room is
    on the SFU, and each of the three holds a Janus grant."""
    doctor.peer_id = str((await doctor.call("join", {"room_id": room}))["peer_id"])
    patient.peer_id = str((await patient.call("join", {"room_id": room}))["peer_id"])
    await doctor.call("admit", {"peer_id": patient.peer_id})
    await doctor.call("invite", {"user_id": str(who.user_id)})
    third.peer_id = str((await third.call("join", {"room_id": room}))["peer_id"])
    await doctor.call("admit", {"peer_id": third.peer_id})
    told = [await third.event("admitted")] + [await p.event("mode") for p in (doctor, patient)]
    for answer in told:
        grant = answer.get("sfu") or {}
        if answer.get("mode") != "sfu" or grant.get("backend") != "janus" or not grant.get("relay"):
            raise Refused("not on the Janus SFU", str(answer)[:200])


# --- janus-direct: straight to Janus's HTTP API ----------------------------------------


class Direct:
    """A participant talking to Janus as janus.js would: its own HTTP client and session."""

    def __init__(self, url: str, room: int, feed: int, token: str, identity: str) -> None:
        self.url, self.room, self.feed, self.token, self.identity = url, room, feed, token, identity
        self.http = aiohttp.ClientSession()
        self.session: JanusSession | None = None
        self.handle = 0

    async def publish(self, sdp: str) -> str:
        self.session = await JanusSession.create(self.http, self.url)
        self.handle = await self.session.attach()
        join = {"request": "join", "ptype": "publisher", "room": self.room, "id": self.feed}
        join.update(display=self.identity, token=self.token)
        await self.session.request(self.handle, join)
        _, jsep = await self.session.request(
            self.handle, {"request": "publish"}, {"type": "offer", "sdp": sdp}
        )
        return str((jsep or {}).get("sdp"))

    async def candidate(self, candidate: dict[str, Any]) -> None:
        if self.session is None:
            raise Refused("candidate: not published")
        await self.session.trickle(self.handle, candidate)

    async def leave(self) -> None:
        if self.session is not None:
            await self.session.destroy()
            self.session = None

    async def close(self) -> None:
        await self.leave()
        await self.http.close()


@contextlib.asynccontextmanager
async def own_janus(lab: Lab) -> AsyncIterator[tuple[JanusSfu, int]]:
    """Janus as the server starts it (``SFU=janus``, no ``JANUS_URL``), on the server's
    core; its ``JanusSfu`` and pid."""

    async def ignore(event: SfuEvent) -> None:
        return None

    with tempfile.TemporaryDirectory(prefix="bench-janus-") as folder:
        settings = SfuSettings(
            kind="janus",
            janus_room_key=secrets.token_urlsafe(32),
            janus_recordings=Path(folder) / "recordings",
            janus_workdir=Path(folder) / "janus",
            janus_ice_enforce_list=ICE_INTERFACES,
        )
        async with janus_backend(settings, ignore) as sfu:
            pid = child_named(os.getpid(), "janus")
            if pid is None:
                raise RuntimeError("janus-direct: Janus started but its process is not found")
            pin_threads(pid, lab.server_cpu)
            yield sfu, pid


# --- the rounds ----------------------------------------------------------------------


class Measured:
    """What the counted rounds recorded, and the CPU seconds of each group per phase."""

    def __init__(self) -> None:
        self.publish, self.candidate, self.solo = Recorder(), Recorder(), Recorder()
        self.errors: Counter[str] = Counter()
        self.samples: list[str] = []
        self.cpu: dict[str, dict[str, float]] = {
            kind: dict.fromkeys(GROUPS, 0.0) for kind in ("publish", "candidate")
        }
        self.wall = {"publish": 0.0, "candidate": 0.0}
        self.leaves_failed = 0
        self.broken: set[int] = set()

    def refused(self, exc: Refused) -> None:
        self.errors[exc.kind] += 1
        if len(self.samples) < 5:
            self.samples.append(f"{exc.kind}: {exc.detail[:200]}")


async def phase(
    name: str,
    jobs: Sequence[Awaitable[None]],
    pids: dict[str, Callable[[], list[int]]],
    out: Measured,
    counted: bool,
) -> None:
    """Run ``jobs`` at once; when ``counted``, add each group's CPU and the wall time."""
    before = {g: sum(process_seconds(p) for p in pids[g]()) for g in GROUPS}
    began = time.perf_counter()
    await asyncio.gather(*jobs)
    if counted:
        out.wall[name] += time.perf_counter() - began
        for g in GROUPS:
            out.cpu[name][g] += sum(process_seconds(p) for p in pids[g]()) - before[g]


async def attempt(out: Measured, i: int, what: str, call: Awaitable[T]) -> tuple[bool, T | None]:
    """``call``'s answer, or a counted refusal (Janus's, or a failed connection): then
    participant ``i`` sends nothing more, so a broken path ends the run soon."""
    try:
        return True, await call
    except Refused as exc:
        out.refused(exc)
    except Exception as exc:
        out.refused(Refused(f"{what}: {type(exc).__name__}", str(exc)))
    out.broken.add(i)
    return False, None


async def rounds(
    label: str,
    peers: Sequence[Participant],
    offers: Sequence[str],
    pids: dict[str, Callable[[], list[int]]],
    meter: CpuMeter,
    args: argparse.Namespace,
) -> Measured:
    out = Measured()
    total, live, now = args.warmup_rounds + args.rounds, Recorder(), [0]
    everyone = range(len(peers))

    async def publish(i: int, counted: bool) -> None:
        if i in out.broken:
            return
        began = time.perf_counter()
        ok, answer = await attempt(out, i, "publish", peers[i].publish(offers[i]))
        if ok and counted:
            out.publish.record(time.perf_counter() - began)
        if ok and not janus_answer(answer):
            out.errors["publish: not Janus's SDP answer"] += 1

    async def trickle(i: int, ks: range, sinks: list[Recorder]) -> None:
        for k in ks:
            began = time.perf_counter()
            if i in out.broken:
                return
            if not (await attempt(out, i, "candidate", peers[i].candidate(candidate(i, k))))[0]:
                return
            for sink in sinks:
                sink.record(time.perf_counter() - began)

    def text() -> str:
        return (
            f"round {now[0]}/{total}: {live.count} candidates acked, p99 "
            f"{live.p(99) * 1e3:.2f} ms, errors {sum(out.errors.values())}"
        )

    async with Progress(label, text, meter):
        for number in range(total):
            counted, now[0], live = number >= args.warmup_rounds, number + 1, Recorder()
            if number == args.warmup_rounds:
                await meter.start()
            await phase("publish", [publish(i, counted) for i in everyone], pids, out, counted)
            sinks = [live, out.candidate] if counted else [live]
            jobs = [trickle(i, range(args.candidates), sinks) for i in everyone]
            await phase("candidate", jobs, pids, out, counted)
            alone = range(args.candidates, args.candidates + args.solo)
            for i in everyone:  # one participant at a time: no queue anywhere
                await trickle(i, alone, [out.solo] if counted else [])
            left = await asyncio.gather(
                *(
                    attempt(out, i, "leave", peers[i].leave())
                    for i in everyone
                    if i not in out.broken
                )
            )
            out.leaves_failed += counted * sum(not ok for ok, _ in left)
            await asyncio.sleep(args.pause)
    return out


def fill(row: Row, out: Measured, participants: int, args: argparse.Namespace) -> Row:
    pub, cand, solo = out.publish.ms(), out.candidate.ms(), out.solo.ms()
    cpu = out.cpu

    def per(group: str, kind: str, count: int) -> float:
        return cpu[kind][group] / count * 1e6 if count else float("nan")

    row.fields.update(
        rooms=args.rooms,
        publishes=out.publish.count,
        **{f"pub_{k}_ms": v for k, v in pub.items() if k in ("p50", "p90", "p99", "max")},
        candidates=out.candidate.count,
        alone=out.solo.count,
        **{f"cand_{k}_ms": v for k, v in cand.items() if k in ("p50", "p90", "p99", "max")},
        **{f"solo_{k}_ms": v for k, v in solo.items() if k in ("p50", "p90", "p99", "max")},
        cand_rate=out.candidate.count / out.wall["candidate"] if out.wall["candidate"] else 0.0,
        pub_rate=out.publish.count / out.wall["publish"] if out.wall["publish"] else 0.0,
        **{f"{g}_us_cand": per(g, "candidate", out.candidate.count) for g in GROUPS},
        **{f"{g}_us_pub": per(g, "publish", out.publish.count) for g in GROUPS},
        errors=dict(out.errors),
        error_samples=out.samples,
    )
    if row.target == BASE:
        row.fields["server_us_cand"] = row.fields["server_us_pub"] = None  # no server
    counted = args.rounds * participants
    row.check(
        f"every publish answered with Janus's SDP answer ({out.publish.count}/{counted})",
        out.publish.count == counted and not any(e.startswith("publish") for e in out.errors),
    )
    row.check(
        f"every candidate acknowledged ({out.candidate.count}/{counted * args.candidates}, "
        f"alone {out.solo.count}/{counted * args.solo})",
        (out.candidate.count, out.solo.count) == (counted * args.candidates, counted * args.solo),
    )
    row.check(f"every leave acknowledged ({out.leaves_failed} not)", not out.leaves_failed)
    row.check(f"nothing refused ({dict(out.errors)})", not out.errors)
    row.notes += [f"sample: {s}" for s in out.samples]
    return row.judge()


# --- the targets ---------------------------------------------------------------------


async def measure(
    lab: Lab,
    label: str,
    peers: Sequence[Participant],
    offers: Sequence[str],
    server: int | None,
    janus: int,
    args: argparse.Namespace,
) -> tuple[Measured, CpuReport]:
    """The rounds, bounded in time, with the CPU of the generator, server, Janus and db."""
    pids: dict[str, Callable[[], list[int]]] = {
        "gen": lambda: [os.getpid()],
        "server": lambda: [server] if server is not None else [],
        "janus": lambda: [janus],
    }
    db = database_pids(lab.pg.postmaster, lab.name)
    meter = CpuMeter({"server": pids["server"], "janus": pids["janus"], "db": db})
    async with asyncio.timeout(args.bound):
        out = await rounds(label, peers, offers, pids, meter, args)
    return out, await meter.stop()


async def bench_teleconsult(
    lab: Lab,
    name: str,
    people: Sequence[list[Person]],
    offers: Sequence[str],
    args: argparse.Namespace,
) -> Row:
    doctors, patients, thirds = people
    await lab.quiet()
    rooms = await make_rooms(lab, doctors, patients, lab.args.day)
    lab.args.day += 1
    server = lab.teleconsult(name, SFU="janus", JANUS_ICE_ENFORCE_LIST=ICE_INTERFACES)
    row = Row(name)
    peers: list[Relayed] = []
    janus: int | None = None
    try:
        await server.wait_http("/readyz")
        janus = child_named(server.pid, "janus")
        if janus is None:
            raise RuntimeError(f"{name}: no Janus process under the server")
        async with client_session() as session:
            gate = asyncio.Semaphore(50)

            async def one(person: Person) -> Relayed:
                async with gate:
                    conn = await SioConnection.open(
                        session, server.base, "/signal", {"token": person.token}
                    )
                    return Relayed(conn)

            trios = [p for trio in zip(doctors, patients, thirds, strict=True) for p in trio]
            peers = list(await asyncio.gather(*(one(p) for p in trios)))
            moved = await asyncio.gather(
                *(
                    into_sfu(peers[3 * r], peers[3 * r + 1], peers[3 * r + 2], rooms[r], thirds[r])
                    for r in range(args.rooms)
                ),
                return_exceptions=True,
            )
            failed = [str(m) for m in moved if isinstance(m, BaseException)]
            row.check(f"every room on the Janus SFU ({len(failed)} not: {failed[:2]})", not failed)
            if failed:
                return row.judge()
            say(f"[{name}] {args.rooms} rooms on the SFU; server pid {server.pid}, janus {janus}")
            out, row.cpu = await measure(lab, name, peers, offers, server.pid, janus, args)
            server.check_alive()
    finally:
        await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
        server.stop()
        if janus is not None:  # its server stops it; not so when the server was killed
            with contextlib.suppress(OSError):
                os.kill(janus, signal.SIGTERM)
    return fill(row, out, len(peers), args)


async def bench_direct(lab: Lab, offers: Sequence[str], args: argparse.Namespace) -> Row:
    await lab.quiet()
    row = Row(BASE)
    peers: list[Direct] = []
    async with own_janus(lab) as (sfu, janus):
        try:
            roles = (SfuRole.DOCTOR, SfuRole.PATIENT, SfuRole.GUEST)
            for _ in range(args.rooms):
                consultation = uuid4()
                for role in roles:
                    identity = str(uuid4())
                    grant = await sfu.grant(consultation, identity, role)
                    details = grant.details
                    peers.append(
                        Direct(
                            sfu.url, details["room"], details["feed"], details["token"], identity
                        )
                    )
            say(f"[{BASE}] {args.rooms} rooms with 3 grants each; janus pid {janus}")
            out, row.cpu = await measure(lab, BASE, peers, offers, None, janus, args)
        finally:
            await asyncio.gather(*(p.close() for p in peers), return_exceptions=True)
    return fill(row, out, len(peers), args)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with open_lab("sfu", args) as lab:
        participants = 3 * args.rooms
        say(f"preparing {args.rooms} rooms of 3 and {participants} aiortc offers")
        offers = await make_offers(participants)
        people: list[list[Person]] = []
        if any(t.startswith("teleconsult") for t in args.targets):
            people = [
                await lab.doctors(args.rooms),
                await lab.people(Role.PATIENT, args.rooms),
                await lab.people(Role.NURSE, args.rooms),
            ]
        rows = []
        for name in args.targets:
            if name == BASE:
                rows.append(await bench_direct(lab, offers, args))
            else:
                rows.append(await bench_teleconsult(lab, name, people, offers, args))
        found: list[dict[str, Any]] = []
        texts = []
        for key, higher, what in (
            ("cand_p50_ms", False, "candidate send -> ack p50"),
            ("cand_p99_ms", False, "candidate send -> ack p99"),
            ("cand_rate", True, "candidates/s, all participants at once"),
            ("solo_p50_ms", False, "candidate send -> ack p50, one participant at a time"),
            ("pub_p99_ms", False, "publish send -> answer p99"),
        ):
            got, text = report.ratios(rows, key, [BASE], higher_is_better=higher, what=what)
            found += got
            texts.append(text.removeprefix("ratios, same run:\n"))
        ratio_text = "\n".join(["ratios, same run:", *(t for t in texts if t)]) if found else ""
        head = (
            f"{args.rooms} rooms of 3 on Janus ({participants} participants), {args.rounds} "
            f"rounds: a publish each, then {args.candidates} candidates each (latency in ms)"
        )
        parts = [head, report.table(rows, COLUMNS), ratio_text, report.cpu_table(rows)]
        parts.append(cpu_lines(rows))
        return report.document(
            "sfu_relay", args, lab.facts, rows, "\n".join(t for t in parts if t), ratios=found
        )


def cpu_lines(rows: Sequence[Row]) -> str:
    """CPU per message of each process, candidate and publish phases apart."""
    lines = ["CPU per message (us)       gen/cand srv/cand janus/cand  gen/pub  srv/pub janus/pub"]
    for r in rows:
        f = r.fields
        cells = [f.get(f"{g}_us_{k}") for k in ("cand", "pub") for g in GROUPS]
        text = " ".join(
            f"{'-':>9}" if v is None or v != v else f"{v:>9.0f}"
            for v in cells  # nan: -
        )
        lines.append(f"{r.target:<25} {text}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = report.parser("bench.sfu_relay", __doc__, TARGETS, TARGETS)
    p.add_argument("--rooms", type=int, default=20, help="rooms of 3 on the SFU")
    p.add_argument("--candidates", type=int, default=50, help="per participant per round")
    p.add_argument("--solo", type=int, default=3, help="then per participant, one at a time")
    p.add_argument("--rounds", type=int, default=3, help="counted rounds")
    p.add_argument("--warmup-rounds", type=int, default=1, help="rounds not counted, first")
    p.add_argument("--pause", type=float, default=0.5, help="seconds between rounds")
    p.add_argument("--bound", type=report.positive, default=600.0, help="seconds per target")
    args = p.parse_args(argv)
    if args.candidates < 1 or args.solo < 0 or args.candidates + args.solo > 250:
        p.error("--candidates >= 1, --solo >= 0, at most 250 together")
    if args.rooms < 1 or args.rounds < 1:
        p.error("--rooms and --rounds: at least 1")
    if args.smoke:
        args.rooms, args.candidates, args.rounds, args.warmup_rounds = 2, 5, 1, 1
        args.solo, args.pause = 1, 0.1
    args.day = 1  # each teleconsult target books a day of its own, from tomorrow
    return report.main(lambda: run(args), args)


if __name__ == "__main__":
    sys.exit(main())
