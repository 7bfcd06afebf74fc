"""The ``chat`` scenario: users in 1:1 or group threads sending on a schedule.

Users come in groups of ``--group-size``: one doctor and the rest patients,
sharing one thread (``direct`` for two, ``care_team`` for more). Each user has
a device with its own keys, a :class:`ChatClient` over the chosen transport,
follows the group's thread, and sends ``--rate`` messages a second for
``--duration`` seconds, open loop (``openloop.py``). Every message's plaintext
(sealed end to end like any other) carries the run id, the sender, its number
and its scheduled time on this process's monotonic clock, so a recipient in
this same process computes send->delivered from the scheduled time; send->ack
is measured by the sender.

Counted at the end of the drain period:

* lost: acknowledged messages some recipient never got;
* duplicated: a recipient got the same message (sender, number) twice, which
  the client's own per-seq de-duplication would not hide if the server stored
  a retry twice; ``repeated_pushes`` counts the raw level below it, a
  (thread, seq) the server pushed to one connection more than once;
* errors, by code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import aiohttp

from teleconsult.client.chat import ChatClient, ChatError, Delivered
from teleconsult.client.crypto import DeviceKeys
from teleconsult.client.rest import ApiError
from teleconsult.loadtest import LoadtestError
from teleconsult.loadtest.accounts import Accounts, Member, admin_credentials, keep_fresh
from teleconsult.loadtest.common import Common, CpuMeter, Outcome, new_run_id, started_at
from teleconsult.loadtest.links import MIXED, CountingTransport, Links
from teleconsult.loadtest.openloop import Lag, Schedule, ramp, run_user
from teleconsult.loadtest.report import (
    Latency,
    Recorder,
    errors_text,
    latency_table,
    show_progress,
    summarize,
)

logger = logging.getLogger(__name__)

LATENCIES = {"send_to_ack": "send→ack", "send_to_delivered": "send→delivered"}
PROGRESS = ("sent", "acked", "delivered")
CONNECT_ATTEMPTS = 3


@dataclass(frozen=True)
class ChatOptions:
    transport: str = "websocket"
    group_size: int = 2
    encoding: str = "msgpack"
    message_bytes: int = 200
    ack_timeout: float = 30.0
    mqtt_url: str | None = None  # default: mqtt://<host of --url>:1883


@dataclass
class User:
    index: int
    member: Member
    group: int
    transport: str
    keys: DeviceKeys = field(default_factory=DeviceKeys.generate)
    device_id: UUID | None = None
    thread: UUID | None = None
    chat: ChatClient | None = None
    link: CountingTransport | None = None
    phase: float = 0.0
    received: set[tuple[int, int]] = field(default_factory=set)


def body(run_id: str, sender: int, k: int, scheduled: float, size: int) -> bytes:
    """The plaintext: who sent which message when, padded to about ``size`` bytes."""
    head = {"lt": run_id, "u": sender, "k": k, "t": scheduled}
    raw = json.dumps(head, separators=(",", ":"))
    pad = size - len(raw) - 8
    if pad > 0:
        head["p"] = "x" * pad
        raw = json.dumps(head, separators=(",", ":"))
    return raw.encode()


def parse_body(plaintext: bytes) -> tuple[str, int, int, float] | None:
    try:
        found = json.loads(plaintext)
        return str(found["lt"]), int(found["u"]), int(found["k"]), float(found["t"])
    except (ValueError, KeyError, TypeError):
        return None


async def form_groups(
    accounts: Accounts, users: int, size: int, kind_of: Callable[[int], str]
) -> list[list[User]]:
    """``users`` users in threads of ``size`` (one doctor each, the rest patients), each
    with a device of its own; ``kind_of(index)`` names a user's transport."""
    count = users // size
    everyone: list[User] = []
    groups: list[list[User]] = []
    doctors = await accounts.staff(count, "doctor", sign_in=True)
    patients = await accounts.patients(count * (size - 1))
    for g in range(count):
        people = [doctors[g], *patients[g * (size - 1) : (g + 1) * (size - 1)]]
        group = []
        for member in people:
            user = User(len(everyone), member, g, kind_of(len(everyone)))
            everyone.append(user)
            group.append(user)
        groups.append(group)

    async def device(i: int) -> None:
        user = everyone[i]
        user.device_id = await user.member.rest.register_device(user.keys, "loadtest")

    await accounts.bounded("registering devices", len(everyone), device)
    kind = "direct" if size == 2 else "care_team"

    async def thread(g: int) -> None:
        creator, *others = groups[g]
        thread_id = await creator.member.rest.create_thread(
            [u.member.user_id for u in others], kind=kind
        )
        for user in groups[g]:
            user.thread = thread_id

    await accounts.bounded("creating threads", count, thread)
    return groups


class ChatRun:
    """One run of the chat scenario; ``run`` returns its outcome. Not reusable."""

    def __init__(self, common: Common, options: ChatOptions) -> None:
        if options.group_size < 2:
            raise LoadtestError("--group-size must be at least 2 (a direct thread)")
        if common.users < options.group_size or common.users % options.group_size:
            raise LoadtestError(
                f"--users ({common.users}) must be a multiple of --group-size "
                f"({options.group_size}): every user is in one thread of that size"
            )
        self.common, self.options = common, options
        self.run_id = new_run_id()
        self.rng = common.rng()
        self.recorder = Recorder(list(LATENCIES), ["scheduled", *PROGRESS, "ack_duplicate"])
        self.connect = Latency()
        self.connect_errors: Counter[str] = Counter()  # failed tries, retried
        self.lag = Lag()
        self.users: list[User] = []
        self.groups: list[list[User]] = []
        self.acked: dict[tuple[int, int], int] = {}  # (sender, k) -> seq
        self.outstanding = 0  # (acked message, recipient) pairs not yet delivered
        self.delivered_unacked = 0
        self.duplicated = 0
        self.unexpected = 0
        self.last_ack = 0.0
        self.last_delivery = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._delivery = asyncio.Event()  # set on every delivery, for the drain
        self._links = Links(common.url, options.mqtt_url, options.encoding, options.transport)

    # --- set-up -----------------------------------------------------------------------

    async def _setup(self, accounts: Accounts) -> None:
        self.groups = await form_groups(
            accounts, self.common.users, self.options.group_size, self._links.kind
        )
        self.users = [user for group in self.groups for user in group]

    async def _open(self, user: User) -> None:
        """Connect one user (a few tries), follow its thread, start receiving."""
        loop = asyncio.get_running_loop()
        assert user.device_id is not None and user.thread is not None
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            transport = self._links.make(
                user.transport, user.member.rest, device_id=user.device_id, keys=user.keys
            )
            link = CountingTransport(transport)
            chat = ChatClient(
                link,
                user.member.rest,
                keys=user.keys,
                device_id=user.device_id,
                encoding=self.options.encoding,
                call_timeout=min(10.0, self.options.ack_timeout),
            )
            chat.follow(user.thread)
            began = loop.time()
            try:
                await asyncio.wait_for(chat.start(), 30)
            except Exception as exc:
                await chat.close()
                self.connect_errors[f"{type(exc).__name__}: {exc}"[:200]] += 1
                if attempt == CONNECT_ATTEMPTS:
                    raise
                await asyncio.sleep(0.5 * attempt)
                continue
            self.connect.record(loop.time() - began)
            user.chat, user.link = chat, link
            break
        self._spawn(self._receive(user))
        self._spawn(keep_fresh(user.member.rest, self._reauth(user)))

    def _reauth(self, user: User) -> Callable[[str], Awaitable[None]]:
        async def send_token(token: str) -> None:
            if user.transport == "mqtt" or user.chat is None:
                return  # the broker checked the token when connecting; REST reads it anew
            with contextlib.suppress(ChatError, TimeoutError):
                async with asyncio.timeout(10):
                    await user.chat.call("auth", {"token": token})

        return send_token

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- sending and receiving --------------------------------------------------------

    def _recipients(self, user: User) -> list[User]:
        return [u for u in self.groups[user.group] if u is not user]

    def _sender(self, user: User) -> Callable[[int, float], Awaitable[None]]:
        loop = asyncio.get_running_loop()
        timeout = self.options.ack_timeout

        async def send(k: int, scheduled: float) -> None:
            assert user.chat is not None and user.thread is not None
            plaintext = body(self.run_id, user.index, k, scheduled, self.options.message_bytes)
            self.recorder.count("sent")
            try:
                async with asyncio.timeout(timeout):
                    sent = await user.chat.send(
                        user.thread, plaintext, deadline=loop.time() + timeout
                    )
            except ChatError as exc:
                self.recorder.error(exc.code, str(exc))
                return
            except TimeoutError:
                self.recorder.error("ack_timeout", f"no ack within {timeout:g} s")
                return
            except ApiError as exc:
                self.recorder.error(f"rest:{exc.code}", str(exc))
                return
            except (aiohttp.ClientError, OSError) as exc:
                self.recorder.error(f"rest:{type(exc).__name__}", str(exc))
                return
            except Exception as exc:  # counted, and the user goes on with its schedule
                logger.exception("a load-test send failed unexpectedly")
                self.recorder.error(type(exc).__name__, str(exc))
                return
            now = loop.time()
            self.recorder.record("send_to_ack", now - scheduled)
            self.recorder.count("acked")
            self.last_ack = now
            if sent.duplicate:
                self.recorder.count("ack_duplicate")
            self.acked[(user.index, k)] = sent.seq
            for other in self._recipients(user):
                if (user.index, k) not in other.received:
                    self.outstanding += 1

        return send

    async def _receive(self, user: User) -> None:
        loop = asyncio.get_running_loop()
        assert user.chat is not None
        while True:
            delivered = await user.chat.next_message()
            if delivered.sender_user_id == user.member.user_id:
                continue  # the client's echo of our own send
            self._take(user, delivered, loop.time())

    def _take(self, user: User, delivered: Delivered, now: float) -> None:
        if delivered.error is not None or delivered.plaintext is None:
            self.recorder.error(f"envelope:{delivered.error}", f"seq {delivered.seq}")
            return
        parsed = parse_body(delivered.plaintext)
        if parsed is None or parsed[0] != self.run_id:
            self.unexpected += 1
            return
        _, sender, k, scheduled = parsed
        if (sender, k) in user.received:
            self.duplicated += 1
            return
        user.received.add((sender, k))
        self.recorder.record("send_to_delivered", now - scheduled)
        self.recorder.count("delivered")
        self.last_delivery = now
        self._delivery.set()
        if (sender, k) in self.acked:
            self.outstanding -= 1
        else:
            self.delivered_unacked += 1

    # --- the run ----------------------------------------------------------------------

    async def run(self) -> Outcome:
        common = self.common
        accounts = Accounts(
            common.url,
            run_id=self.run_id,
            concurrency=common.setup_concurrency,
            quiet=common.quiet,
        )
        began = started_at()
        loop = asyncio.get_running_loop()
        try:
            await accounts.sign_in_admin(
                *admin_credentials(common.admin_email, common.admin_password, common.credentials)
            )
            setup_began = loop.time()
            await self._setup(accounts)
            await self._connect_all()
            setup_seconds = loop.time() - setup_began
            measured = await self._measure()
        finally:
            await self._stop()
            try:
                if not common.keep_accounts:
                    await accounts.disable_all()
            finally:
                await accounts.close()
        return self._outcome(began, setup_seconds, *measured)

    async def _connect_all(self) -> None:
        if not self.common.quiet:
            print(
                f"connecting {len(self.users)} users over {self.common.ramp:g} s",
                file=sys.stderr,
                flush=True,
            )
        failures = await ramp(self.users, self._open, self.common.ramp, self.rng)
        failed = [(u, f) for u, f in zip(self.users, failures, strict=True) if f is not None]
        if failed:
            user, exc = failed[0]
            raise LoadtestError(
                f"{len(failed)} of {len(self.users)} users could not connect over "
                f"{user.transport} (e.g. {type(exc).__name__}: {exc})"
            )

    async def _measure(self) -> tuple[float, float, float]:
        """The schedule, then the drain; returns (t0, CPU share, wall seconds)."""
        common = self.common
        loop = asyncio.get_running_loop()
        schedule = Schedule(loop.time() + 0.5, common.rate, common.duration)
        for user in self.users:
            user.phase = schedule.phase(self.rng)
            self.recorder.count("scheduled", schedule.count(user.phase))
        cpu = CpuMeter()
        ticker = asyncio.create_task(
            show_progress(self.recorder, schedule.t0, PROGRESS, LATENCIES, quiet=common.quiet)
        )
        senders = [
            asyncio.create_task(run_user(schedule, u.phase, self._sender(u), self.lag))
            for u in self.users
        ]
        try:
            hard_stop = schedule.t0 + common.duration + common.drain
            await asyncio.wait(senders, timeout=max(0.0, hard_stop - loop.time()))
            drain_until = loop.time() + common.drain
            while self.outstanding > 0 and loop.time() < drain_until:
                self._delivery.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._delivery.wait(), drain_until - loop.time())
        finally:
            for task in senders:
                task.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        return schedule.t0, cpu.share(), loop.time() - schedule.t0

    async def _stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(
            *(u.chat.close() for u in self.users if u.chat is not None), return_exceptions=True
        )

    # --- the outcome ------------------------------------------------------------------

    def _losses(self) -> tuple[int, int]:
        """(acked messages some recipient lacks, (message, recipient) pairs missing)."""
        lost_messages = lost_pairs = 0
        for sender, k in self.acked:
            missing = sum(
                (sender, k) not in r.received for r in self._recipients(self.users[sender])
            )
            lost_pairs += missing
            lost_messages += missing > 0
        return lost_messages, lost_pairs

    def _outcome(
        self, began: str, setup_seconds: float, t0: float, cpu: float, wall: float
    ) -> Outcome:
        common, options, rec = self.common, self.options, self.recorder
        counts = rec.counts
        lost, lost_pairs = self._losses()
        recipients = options.group_size - 1
        links = [u.link for u in self.users if u.link is not None]
        messages = {
            "scheduled": counts["scheduled"],
            "sent": counts["sent"],
            "acked": counts["acked"],
            "unsent": counts["scheduled"] - counts["sent"],
            "delivered": counts["delivered"],
            "deliveries_expected": counts["acked"] * recipients,
            "recipients_per_message": recipients,
            "lost": lost,
            "lost_deliveries": lost_pairs,
            "duplicated": self.duplicated,
            "repeated_pushes": sum(link.repeated_pushes for link in links),
            "delivered_unacked": self.delivered_unacked,
            "ack_duplicate": counts["ack_duplicate"],
            "unexpected": self.unexpected,
            "reconnects": sum(link.reconnects for link in links),
        }
        window = max(common.duration, 1e-9)
        throughput = {
            "offered": round(common.users * common.rate, 3),
            "acked": round(counts["acked"] / max(window, self.last_ack - t0), 3),
            "delivered": round(counts["delivered"] / max(window, self.last_delivery - t0), 3),
        }
        errors = dict(rec.errors)
        failures = []
        if lost:
            failures.append(f"{lost} acknowledged messages were not delivered to every recipient")
        if self.duplicated:
            failures.append(f"{self.duplicated} messages were delivered twice")
        if messages["unsent"]:
            failures.append(f"{messages['unsent']} scheduled messages were never sent")
        if errors:
            failures.append(f"{sum(errors.values())} errors")
        latencies = rec.latencies()
        report: dict[str, Any] = {
            "scenario": "chat",
            "run_id": self.run_id,
            "started_at": began,
            "url": common.url,
            "params": {
                "users": common.users,
                "rate_per_user": common.rate,
                "duration_s": common.duration,
                "transport": options.transport,
                "group_size": options.group_size,
                "encoding": options.encoding,
                "message_bytes": options.message_bytes,
                "ramp_s": common.ramp,
                "drain_s": common.drain,
                "ack_timeout_s": options.ack_timeout,
            },
            "setup": {
                "seconds": round(setup_seconds, 3),
                "threads": len(self.groups),
                "thread_kind": "direct" if options.group_size == 2 else "care_team",
                "transports": dict(Counter(u.transport for u in self.users)),
                "connect_ms": summarize(self.connect.total),
                "connect_retries": dict(self.connect_errors),
            },
            "messages": messages,
            "latency_ms": latencies,
            "throughput_per_s": throughput,
            "errors": errors,
            "error_samples": rec.error_samples,
            "generator": {
                "cpu_share_of_a_core": round(cpu, 3),
                "max_send_lag_ms": round(self.lag.worst * 1e3, 3),
                "sends_started_late": self.lag.behind,
                "wall_s": round(wall, 3),
            },
            "timeline": rec.timeline,
            "hdr_histograms": rec.histograms(),
            "passed": not failures,
            "failures": failures,
        }
        transport = options.transport
        if transport == "mixed":
            transport = "mixed (" + ", ".join(MIXED) + ")"
        lines = [
            f"teleconsult loadtest chat: {common.users} users in {len(self.groups)} "
            f"{report['setup']['thread_kind']} threads of {options.group_size}, {transport}, "
            f"{common.rate:g} msg/s each for {common.duration:g} s (run {self.run_id})",
            f"messages: scheduled {messages['scheduled']}, sent {messages['sent']}, "
            f"acked {messages['acked']}, delivered {messages['delivered']} of "
            f"{messages['deliveries_expected']} expected, lost {lost}, "
            f"duplicated {self.duplicated} (repeated pushes {messages['repeated_pushes']}, "
            f"reconnects {messages['reconnects']})",
            f"throughput: offered {throughput['offered']:g}/s, acked {throughput['acked']:g}/s, "
            f"delivered {throughput['delivered']:g}/s",
            latency_table(latencies, LATENCIES),
            errors_text(errors, rec.error_samples),
            f"generator: {cpu:.0%} of a core; sends started up to "
            f"{self.lag.worst * 1e3:.1f} ms late ({self.lag.behind} more than 10 ms); "
            f"set-up {setup_seconds:.1f} s",
        ]
        if cpu > 0.9:
            lines.append("warning: the generator used most of a core; latencies may be its own")
        return Outcome(
            report=report,
            summary="\n".join(lines),
            failures=failures,
            plot_title=lines[0],
            plot_latencies=dict(LATENCIES),
            plot_rates={"acked": "acked/s", "delivered": "delivered/s"},
        )


async def run(common: Common, options: ChatOptions) -> Outcome:
    return await ChatRun(common, options).run()
