"""The ``signal`` scenario: consultation rooms doing join, admit, offer, answer, candidates.

Set-up, through the API only (``rooms.py``): a confirmed video appointment per
room, its join window open now, on the earliest slots of ``--rooms-per-doctor``
rooms per doctor, one patient per room. Every doctor and patient then opens a
``/signal`` socket with :class:`~teleconsult.client.signal.SignalClient`,
over ``--ramp`` seconds with jitter: two sockets per room, even when a doctor
has several rooms.

Each room then starts at its scheduled time, open loop (``--rate`` rooms a
second, or every room at once): doctor and patient join at the same moment
(each join's latency runs from the scheduled time to the join's answer); the
doctor learns the patient waits (from its join answer or a ``waiting``
event) and admits them; the patient offers (a synthetic SDP of about
``--sdp-bytes``, ``sdp.py``), the doctor answers, and each sends
``--candidates`` ICE candidates to the other right after its own description,
as trickle ICE does. A relayed message's latency runs from its send to its
arrival at the other peer's client, in this same process; a room's runs from
its scheduled time to the last message it waited for. Then both leave.

A room that does not complete counts as failed; every step waits at most
``--step-timeout`` and the run stops at ``--duration`` + ``--drain``. At the
end the run's appointments are cancelled and its users disabled (unless
``--keep-accounts``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import socketio

from teleconsult.client.signal import SignalClient, SignalError
from teleconsult.loadtest import LoadtestError
from teleconsult.loadtest.accounts import Accounts, Member, admin_credentials, expires_at
from teleconsult.loadtest.common import Common, CpuMeter, Outcome, new_run_id, started_at
from teleconsult.loadtest.openloop import Lag, ramp
from teleconsult.loadtest.report import (
    Latency,
    Recorder,
    errors_text,
    latency_table,
    show_progress,
    summarize,
)
from teleconsult.loadtest.rooms import (
    Booked,
    book_rooms,
    cancel_appointments,
    wait_for_windows,
)
from teleconsult.loadtest.sdp import candidate_line, synthetic_sdp

logger = logging.getLogger(__name__)

T = TypeVar("T")
LATENCIES = {
    "join_doctor": "join→answer, doctor",
    "join_patient": "join→answer, patient",
    "admit": "admit→admitted",
    "offer": "offer→received",
    "answer": "answer→received",
    "candidate": "candidate→received",
    "room": "room: start→last received",
}
SHORT = {"join_patient": "join", "admit": "admit", "offer": "offer", "candidate": "cand"}
PLOTTED = ("join_patient", "offer", "candidate", "room")
PROGRESS = ("started", "admitted", "negotiated", "completed")
TRANSPORTS = ("websocket", "polling")
JOINS = ("together", "doctor-first")
CONNECT_ATTEMPTS = 3


@dataclass(frozen=True)
class SignalOptions:
    rooms: int = 10
    rate: float | None = None  # rooms started per second; None: every room at once
    rooms_per_doctor: int = 3
    slot_minutes: int = 5
    candidates: int = 5  # per peer
    sdp_bytes: int = 4000
    transport: str = "websocket"
    step_timeout: float = 10.0
    joins: str = "together"  # or "doctor-first": the patient joins once the doctor is in


class StepFailed(Exception):
    """A room could not go on: ``code`` is counted, ``detail`` kept as a sample."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class Side:
    """One participant's socket in one room, and what the server pushed to it.

    A reader task stamps each push as it arrives: candidates are handed to the
    room at once, everything else waits in a queue per event (``signal`` per
    kind) for the room's flow to take it.
    """

    def __init__(self, role: str, member: Member, client: SignalClient) -> None:
        self.role = role
        self.member = member
        self.client = client
        self.inbox: defaultdict[str, asyncio.Queue[tuple[float, Any]]] = defaultdict(asyncio.Queue)
        self.reader: asyncio.Task[None] | None = None

    async def expect(self, key: str, within: float) -> tuple[float, Any]:
        """(arrival time, data) of the next ``key`` push."""
        try:
            async with asyncio.timeout(within):
                return await self.inbox[key].get()
        except TimeoutError:
            raise StepFailed(
                f"timeout:{key}", f"the {self.role} got no {key} within {within:g} s"
            ) from None


@dataclass
class Room:
    """One room's run: its booking, its two sides, and what has arrived so far."""

    booked: Booked
    sides: dict[str, Side] = field(default_factory=dict)  # role -> side
    sent: dict[str, float] = field(default_factory=dict)  # candidate line -> sent at
    acked: set[str] = field(default_factory=set)  # candidate lines the server took
    got: set[str] = field(default_factory=set)  # candidate lines received
    expected: int = 0  # candidates to receive, both ways
    all_in: asyncio.Event = field(default_factory=asyncio.Event)
    offer_sent: float = 0.0
    answer_sent: float = 0.0
    last: float = 0.0  # when the latest awaited message arrived
    outcome: str | None = None  # "completed" or "failed" once decided

    @property
    def index(self) -> int:
        return self.booked.index

    def other(self, side: Side) -> Side:
        return self.sides["patient" if side.role == "doctor" else "doctor"]


async def both(first: Awaitable[T], second: Awaitable[Any]) -> T:
    """Await two steps side by side; the first failure is raised once both ended."""
    results = await asyncio.gather(first, second, return_exceptions=True)
    found, other = results[0], results[1]
    if isinstance(found, BaseException):
        raise found
    if isinstance(other, BaseException):
        raise other
    return found


class SignalRun:
    """One run of the signal scenario; ``run`` returns its outcome. Not reusable."""

    def __init__(self, common: Common, options: SignalOptions) -> None:
        if not 1 <= options.rooms <= 10_000:
            raise LoadtestError("--rooms must be between 1 and 10000")
        if not 1 <= options.rooms_per_doctor <= 12:
            raise LoadtestError("--rooms-per-doctor must be between 1 and 12")
        if not 5 <= options.slot_minutes <= 120:
            raise LoadtestError("--slot-minutes must be between 5 and 120")
        if not 0 <= options.candidates <= 30:
            raise LoadtestError("--candidates must be between 0 and 30 per peer")
        if not 500 <= options.sdp_bytes <= 60_000:
            raise LoadtestError("--sdp-bytes must be between 500 and 60000")
        if options.step_timeout <= 0:
            raise LoadtestError("--step-timeout must be positive")
        if options.joins not in JOINS:
            raise LoadtestError(f"--joins must be one of {', '.join(JOINS)}")
        if options.transport not in TRANSPORTS:
            raise LoadtestError(f"--transport must be one of {', '.join(TRANSPORTS)}")
        if options.rate is not None and (options.rooms - 1) / options.rate >= common.duration:
            raise LoadtestError(
                f"{options.rooms} rooms at {options.rate:g} a second start over "
                f"{(options.rooms - 1) / options.rate:g} s, not within --duration "
                f"{common.duration:g}: raise --duration or --rate"
            )
        self.common, self.options = common, options
        self.run_id = new_run_id()
        self.rng = common.rng()
        counters = [
            "scheduled",
            *PROGRESS,
            "patient_first",
            "relayed",
            "candidates_sent",
            "candidates_received",
        ]
        self.recorder = Recorder(list(LATENCIES), counters)
        self.connect = Latency()
        self.connect_errors: Counter[str] = Counter()
        self.lag = Lag()
        self.rooms: list[Room] = []
        self.doctors = math.ceil(options.rooms / options.rooms_per_doctor)
        self.duplicated = 0
        self.unexpected = 0
        self.window_wait = 0.0
        self.last_done = 0.0
        self._refreshing: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    # --- sockets ----------------------------------------------------------------------

    async def _connect_all(self) -> None:
        sides = [
            (room, role, member)
            for room in self.rooms
            for role, member in (("doctor", room.booked.doctor), ("patient", room.booked.patient))
        ]
        if not self.common.quiet:
            print(
                f"connecting {len(sides)} sockets to /signal over {self.common.ramp:g} s",
                file=sys.stderr,
                flush=True,
            )

        async def open_one(item: tuple[Room, str, Member]) -> None:
            room, role, member = item
            side = Side(role, member, await self._connect(member))
            side.reader = asyncio.create_task(self._read(room, side))
            room.sides[role] = side

        failures = await ramp(sides, open_one, self.common.ramp, self.rng)
        failed = [f for f in failures if f is not None]
        if failed:
            raise LoadtestError(
                f"{len(failed)} of {len(sides)} sockets could not connect to /signal "
                f"(e.g. {type(failed[0]).__name__}: {failed[0]})"
            )

    async def _token(self, member: Member) -> str:
        """The member's access token, refreshed when a long set-up left it nearly expired.

        A doctor with several rooms connects several sockets at once, and a refresh
        token works once: one refresh per member at a time.
        """
        async with self._refreshing[member.email]:
            times = expires_at(member.rest.access_token)
            if times is not None and times[1] - time.time() < 120:
                await member.rest.refresh()
        return member.rest.access_token

    async def _connect(self, member: Member) -> SignalClient:
        loop = asyncio.get_running_loop()
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            client = SignalClient(
                self.common.url, await self._token(member), transports=(self.options.transport,)
            )
            began = loop.time()
            try:
                await asyncio.wait_for(client.connect(), 30)
            except Exception as exc:
                await client.close()
                self.connect_errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
                if attempt == CONNECT_ATTEMPTS:
                    raise
                await asyncio.sleep(0.5 * attempt)
                continue
            self.connect.record(loop.time() - began)
            return client
        raise AssertionError("unreachable")

    async def _read(self, room: Room, side: Side) -> None:
        loop = asyncio.get_running_loop()
        while True:
            event, data = await side.client.events.get()
            now = loop.time()
            if event == "signal" and isinstance(data, dict):
                if data.get("kind") == "candidate":
                    self._candidate(room, side, data, now)
                    continue
                event = f"signal:{data.get('kind')}"
            side.inbox[event].put_nowait((now, data))

    def _candidate(self, room: Room, side: Side, data: dict[str, Any], now: float) -> None:
        line = (data.get("candidate") or {}).get("candidate")
        sent = room.sent.get(line) if isinstance(line, str) else None
        if sent is None or data.get("from") != room.other(side).client.peer_id:
            self.unexpected += 1
            return
        assert isinstance(line, str)
        if line in room.got:
            self.duplicated += 1
            return
        room.got.add(line)
        self.recorder.record("candidate", now - sent)
        self.recorder.count("candidates_received")
        self.recorder.count("relayed")
        room.last = max(room.last, now)
        if len(room.got) == room.expected:
            room.all_in.set()

    # --- one room ---------------------------------------------------------------------

    async def _call(self, side: Side, event: str, data: Any, step: str) -> dict[str, Any]:
        try:
            return await side.client.call(event, data, within=self.options.step_timeout)
        except SignalError as exc:
            raise StepFailed(exc.code, f"{step} by the {side.role}: {exc}") from None
        except socketio.exceptions.TimeoutError:
            raise StepFailed(
                f"timeout:{step}",
                f"no answer to the {side.role}'s {step} within {self.options.step_timeout:g} s",
            ) from None
        except socketio.exceptions.SocketIOError as exc:
            raise StepFailed(type(exc).__name__, f"{step} by the {side.role}: {exc}") from None

    async def _join(self, room: Room, side: Side, scheduled: float) -> dict[str, Any]:
        answer = await self._call(side, "join", {"room_id": room.booked.room_id}, "join")
        self.recorder.record(f"join_{side.role}", asyncio.get_running_loop().time() - scheduled)
        side.client.peer_id = answer["peer_id"]
        return answer

    async def _send_candidates(self, room: Room, side: Side, to: str) -> None:
        loop = asyncio.get_running_loop()
        for k in range(self.options.candidates):
            line = candidate_line(room.index, side.role, k)
            room.sent[line] = loop.time()
            candidate = {"candidate": line, "sdpMid": "0", "sdpMLineIndex": 0}
            await self._call(
                side, "signal", {"to": to, "kind": "candidate", "candidate": candidate}, "candidate"
            )
            room.acked.add(line)
            self.recorder.count("candidates_sent")

    async def _offerer(self, room: Room, patient: Side, doctor_peer: str) -> None:
        """The newcomer offers, trickles its candidates, and waits for the answer."""
        offer = synthetic_sdp("offer", room.index, self.options.sdp_bytes)
        room.offer_sent = asyncio.get_running_loop().time()
        await self._call(
            patient, "signal", {"to": doctor_peer, "kind": "offer", "sdp": offer}, "offer"
        )
        await self._send_candidates(room, patient, doctor_peer)
        got_at, answer = await patient.expect("signal:answer", self.options.step_timeout)
        self._check_relayed(room, patient, answer, "answer")
        self.recorder.record("answer", got_at - room.answer_sent)
        self.recorder.count("negotiated")
        room.last = max(room.last, got_at)

    async def _answerer(self, room: Room, doctor: Side, patient_peer: str) -> None:
        """The doctor waits for the offer, answers, and trickles its candidates."""
        got_at, offer = await doctor.expect("signal:offer", self.options.step_timeout)
        self._check_relayed(room, doctor, offer, "offer")
        self.recorder.record("offer", got_at - room.offer_sent)
        room.last = max(room.last, got_at)
        answer = synthetic_sdp("answer", room.index, self.options.sdp_bytes)
        room.answer_sent = asyncio.get_running_loop().time()
        await self._call(
            doctor, "signal", {"to": patient_peer, "kind": "answer", "sdp": answer}, "answer"
        )
        await self._send_candidates(room, doctor, patient_peer)

    def _check_relayed(self, room: Room, side: Side, data: dict[str, Any], kind: str) -> None:
        self.recorder.count("relayed")
        expected = synthetic_sdp(kind, room.index, self.options.sdp_bytes)
        if data.get("from") != room.other(side).client.peer_id or data.get("sdp") != expected:
            raise StepFailed(
                f"altered_{kind}",
                f"the {kind} reached the {side.role} changed or from another peer",
            )

    async def _room(self, room: Room, scheduled: float) -> None:
        loop = asyncio.get_running_loop()
        rec, step = self.recorder, self.options.step_timeout
        doctor, patient = room.sides["doctor"], room.sides["patient"]
        room.expected = 2 * self.options.candidates
        if room.expected == 0:
            room.all_in.set()
        rec.count("started")
        # The doctor hears of the patient from its own join answer (the patient was
        # first) or from a `waiting` event (it was not).
        if self.options.joins == "doctor-first":
            answer = await self._join(room, doctor, scheduled)
            await self._join(room, patient, scheduled)
        else:
            answer = await both(
                self._join(room, doctor, scheduled), self._join(room, patient, scheduled)
            )
        waiting = [p["peer_id"] for p in answer["peers"] if p.get("status") == "waiting"]
        if waiting:
            patient_peer = waiting[0]
            rec.count("patient_first")
        else:
            patient_peer = (await doctor.expect("waiting", step))[1]["peer_id"]
        if patient_peer != patient.client.peer_id:
            raise StepFailed("unexpected_peer", "the doctor saw another peer waiting")
        admit_at = loop.time()
        await self._call(doctor, "admit", {"peer_id": patient_peer}, "admit")
        got_at, admitted = await patient.expect("admitted", step)
        rec.record("admit", got_at - admit_at)
        rec.count("admitted")
        doctors = [p["peer_id"] for p in admitted.get("peers", []) if p.get("role") == "doctor"]
        if doctors != [doctor.client.peer_id]:
            raise StepFailed("unexpected_peer", f"the admitted patient sees doctors {doctors}")
        await both(
            self._offerer(room, patient, doctors[0]), self._answerer(room, doctor, patient_peer)
        )
        try:
            async with asyncio.timeout(step):
                await room.all_in.wait()
        except TimeoutError:
            raise StepFailed(
                "timeout:candidate",
                f"{room.expected - len(room.got)} of {room.expected} candidates did not arrive "
                f"within {step:g} s",
            ) from None
        rec.record("room", room.last - scheduled)
        rec.count("completed")
        room.outcome = "completed"
        self.last_done = max(self.last_done, loop.time())
        await both(
            self._call(doctor, "leave", None, "leave"), self._call(patient, "leave", None, "leave")
        )

    async def _scheduled(self, room: Room, at: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, at - loop.time()))
        self.lag.note(loop.time() - at)
        try:
            await self._room(room, at)
        except StepFailed as exc:
            self.recorder.error(exc.code, str(exc))
        except Exception as exc:  # counted; the other rooms go on
            logger.exception("a load-test room failed unexpectedly")
            self.recorder.error(type(exc).__name__, str(exc))
        if room.outcome is None:
            room.outcome = "failed"

    # --- the run ----------------------------------------------------------------------

    async def run(self) -> Outcome:
        common = self.common
        accounts = Accounts(
            common.url, run_id=self.run_id, concurrency=common.setup_concurrency, quiet=common.quiet
        )
        began = started_at()
        loop = asyncio.get_running_loop()
        try:
            await accounts.sign_in_admin(
                *admin_credentials(common.admin_email, common.admin_password, common.credentials)
            )
            setup_began = loop.time()
            booked = await book_rooms(
                accounts,
                rooms=self.options.rooms,
                rooms_per_doctor=self.options.rooms_per_doctor,
                slot_minutes=self.options.slot_minutes,
            )
            self.rooms = [Room(b) for b in booked]
            self.window_wait = await wait_for_windows(
                booked, run_seconds=common.duration + common.drain + 60, quiet=common.quiet
            )
            await self._connect_all()
            setup_seconds = loop.time() - setup_began
            measured = await self._measure()
        finally:
            await self._close()
            try:
                if not common.keep_accounts:
                    await cancel_appointments(accounts, [r.booked for r in self.rooms])
                    await accounts.disable_all()
            finally:
                await accounts.close()
        return self._outcome(began, setup_seconds, *measured)

    async def _measure(self) -> tuple[float, float, float]:
        """Rooms on their schedule, until all ended or the hard stop; (t0, CPU, wall)."""
        common, rate = self.common, self.options.rate
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.5
        starts = [t0 + (i / rate if rate else 0.0) for i in range(len(self.rooms))]
        self.recorder.count("scheduled", len(self.rooms))
        cpu = CpuMeter()
        ticker = asyncio.create_task(
            show_progress(self.recorder, t0, PROGRESS, SHORT, quiet=common.quiet)
        )
        tasks = [
            asyncio.create_task(self._scheduled(room, at))
            for room, at in zip(self.rooms, starts, strict=True)
        ]
        try:
            hard_stop = t0 + common.duration + common.drain
            await asyncio.wait(tasks, timeout=max(0.0, hard_stop - loop.time()))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        for room in self.rooms:
            if room.outcome is None:
                room.outcome = "failed"
                self.recorder.error("unfinished", f"room {room.index} still going at the stop")
        return t0, cpu.share(), loop.time() - t0

    async def _close(self) -> None:
        sides = [side for room in self.rooms for side in room.sides.values()]
        readers = [side.reader for side in sides if side.reader is not None]
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(*(side.client.close() for side in sides), return_exceptions=True)

    # --- the outcome ------------------------------------------------------------------

    def _outcome(
        self, began: str, setup_seconds: float, t0: float, cpu: float, wall: float
    ) -> Outcome:
        common, options, rec = self.common, self.options, self.recorder
        counts = rec.counts
        completed = counts["completed"]
        lost = sum(len(r.acked - r.got) for r in self.rooms)
        rooms = {
            "scheduled": counts["scheduled"],
            "started": counts["started"],
            "admitted": counts["admitted"],
            "negotiated": counts["negotiated"],
            "completed": completed,
            "failed": sum(r.outcome == "failed" for r in self.rooms),
            # the patient's join came first, so the doctor's join answer listed them
            "patient_joined_first": counts["patient_first"],
        }
        signals = {
            "relayed": counts["relayed"],
            "candidates_sent": counts["candidates_sent"],
            "candidates_received": counts["candidates_received"],
            "candidates_lost": lost,
            "duplicated": self.duplicated,
            "unexpected": self.unexpected,
        }
        errors = dict(rec.errors)
        failures = []
        if rooms["failed"]:
            failures.append(f"{rooms['failed']} of {rooms['scheduled']} rooms did not complete")
        if self.duplicated:
            failures.append(f"{self.duplicated} candidates arrived twice")
        if lost:
            failures.append(f"{lost} acknowledged candidates never reached the other peer")
        if self.unexpected:
            failures.append(f"{self.unexpected} relayed messages came from the wrong peer")
        if errors:
            failures.append(f"{sum(errors.values())} errors")
        window = max(self.last_done - t0, 1e-9)
        throughput = {
            "offered_rooms": options.rate,  # null: every room at once
            "rooms_completed": round(completed / window, 3) if completed else 0.0,
            "relayed": round(counts["relayed"] / window, 3) if completed else 0.0,
        }
        latencies = rec.latencies()
        schedule = "all at once" if options.rate is None else f"{options.rate:g} rooms/s"
        report: dict[str, Any] = {
            "scenario": "signal",
            "run_id": self.run_id,
            "started_at": began,
            "url": common.url,
            "params": {
                "rooms": options.rooms,
                "rate_rooms_per_s": options.rate,
                "rooms_per_doctor": options.rooms_per_doctor,
                "slot_minutes": options.slot_minutes,
                "candidates_per_peer": options.candidates,
                "sdp_bytes": options.sdp_bytes,
                "transport": options.transport,
                "step_timeout_s": options.step_timeout,
                "joins": options.joins,
                "duration_s": common.duration,
                "ramp_s": common.ramp,
                "drain_s": common.drain,
            },
            "setup": {
                "seconds": round(setup_seconds, 3),
                "doctors": self.doctors,
                "patients": options.rooms,
                "sockets": 2 * options.rooms,
                "window_wait_s": round(self.window_wait, 3),
                "connect_ms": summarize(self.connect.total),
                "connect_retries": dict(self.connect_errors),
            },
            "rooms": rooms,
            "signals": signals,
            "latency_ms": latencies,
            "throughput_per_s": throughput,
            "errors": errors,
            "error_samples": rec.error_samples,
            "generator": {
                "cpu_share_of_a_core": round(cpu, 3),
                "max_start_lag_ms": round(self.lag.worst * 1e3, 3),
                "started_late": self.lag.behind,
                "wall_s": round(wall, 3),
            },
            "timeline": rec.timeline,
            "hdr_histograms": rec.histograms(),
            "passed": not failures,
            "failures": failures,
        }
        lines = [
            f"teleconsult loadtest signal: {options.rooms} rooms ({self.doctors} "
            f"doctor{'s' if self.doctors > 1 else ''}, "
            f"{options.rooms} patients, {2 * options.rooms} sockets over {options.transport}), "
            f"{schedule}, {options.candidates} candidates per peer, "
            f"SDP ~{options.sdp_bytes} B (run {self.run_id})",
            f"rooms: scheduled {rooms['scheduled']}, started {rooms['started']}, admitted "
            f"{rooms['admitted']}, negotiated {rooms['negotiated']}, completed {completed}, "
            f"failed {rooms['failed']}",
            f"relayed: {counts['relayed']} messages; candidates sent "
            f"{counts['candidates_sent']}, received {counts['candidates_received']}, "
            f"duplicated {self.duplicated}, from the wrong peer {self.unexpected}",
            f"throughput: rooms completed {throughput['rooms_completed']:g}/s, messages "
            f"relayed {throughput['relayed']:g}/s (until the last room completed)",
            latency_table(latencies, LATENCIES),
            errors_text(errors, rec.error_samples),
            f"generator: {cpu:.0%} of a core; rooms started up to {self.lag.worst * 1e3:.1f} ms "
            f"late ({self.lag.behind} more than 10 ms); set-up {setup_seconds:.1f} s "
            f"(connect p99 {report['setup']['connect_ms']['p99']} ms)",
        ]
        if cpu > 0.9:
            lines.append("warning: the generator used most of a core; latencies may be its own")
        return Outcome(
            report=report,
            summary="\n".join(lines),
            failures=failures,
            plot_title=f"teleconsult loadtest signal: {options.rooms} rooms, {schedule} "
            f"(run {self.run_id})",
            plot_latencies={name: LATENCIES[name] for name in PLOTTED},
            plot_rates={"completed": "rooms completed/s", "relayed": "messages relayed/s"},
        )


async def run(common: Common, options: SignalOptions) -> Outcome:
    return await SignalRun(common, options).run()
