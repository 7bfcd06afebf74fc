"""The soak run behind ``teleconsult soak``: a bounded, self-checking fault run.

It starts a server of its own (``teleconsult serve`` on a spare loopback port,
its embedded MQTT broker on another), on a PostgreSQL cluster it also starts
(or a loopback ``--database-url``), with a Redis of its own when asked. Chat
users (the project's client library over WebSocket, long-polling or MQTT, end
to end encrypted) send numbered messages while the run SIGKILLs and restarts
the server ``--kills`` times, kills and restarts its Redis ``--redis-restarts``
times and crashes its PostgreSQL (``pg_ctl -m immediate``) and starts it again
``--postgres-restarts`` times, in a seeded random order. ``--impair`` puts each
transport's connections behind the impairment proxy (``impair.py``).

At the end it reads every thread's history back through the API, decrypts it,
and reconciles it against what was sent, acknowledged and delivered
(``reconcile.py``: lost, duplicated, unexpected, out of order), and reports
recovery times as percentiles: fault -> healthy, fault -> first ack, healthy ->
first ack and healthy -> first delivery, per transport. Everything is bounded
(counts, per-step timeouts, ``--time-limit``), loopback only, and a progress
line goes to stderr once a second. Exit status: 0 passed, 1 failed, 2 could
not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from teleconsult.client.chat import ChatClient, ChatError
from teleconsult.client.crypto import open_envelope
from teleconsult.client.rest import ApiError
from teleconsult.loadtest import LoadtestError
from teleconsult.loadtest.accounts import Accounts, admin_credentials, keep_fresh
from teleconsult.loadtest.chat import User, body, form_groups, parse_body
from teleconsult.loadtest.common import Outcome, new_run_id, started_at
from teleconsult.loadtest.impair import PRESETS, Impairer, Impairment
from teleconsult.loadtest.links import MIXED, CountingTransport, Links
from teleconsult.loadtest.processes import (
    PrivatePostgres,
    PrivateRedis,
    ServerProcess,
    free_port,
    postgres_bin,
    server_env,
)
from teleconsult.loadtest.reconcile import Key, Reconciliation, Seen, Thread, reconcile
from teleconsult.loadtest.report import Latency, summarize
from teleconsult.loadtest.soakplan import Fault, SoakOptions, recovery, summary
from teleconsult.messaging.envelope import EnvelopeError, from_json

HEALTHY_WITHIN = 60.0  # seconds a restarted server has to answer /healthz


class Soak:
    """One soak run; ``run`` returns its outcome. Not reusable."""

    def __init__(self, options: SoakOptions) -> None:
        options.check()
        self.o = options
        self.rng = random.Random(options.seed)  # noqa: S311 - fault timing, not secrets
        self.run_id = new_run_id()
        self.users: list[User] = []
        self.groups: list[list[User]] = []
        self.sent: set[Key] = set()
        self.acked: dict[Key, int] = {}
        self.arrivals: dict[int, list[Seen]] = defaultdict(list)
        self.got: dict[int, set[Key]] = defaultdict(set)
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.latency: dict[str, dict[str, Latency]] = defaultdict(
            lambda: {"send_to_ack": Latency(), "send_to_delivered": Latency()}
        )
        self.faults: list[Fault] = []
        self.failures: list[str] = []
        self.proxies: dict[str, Impairer] = {}
        self._stop_sending = asyncio.Event()
        self._news = asyncio.Event()  # set on every ack and delivery after a recovery
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: ServerProcess | None = None
        self._redis: PrivateRedis | None = None
        self._pg: PrivatePostgres | None = None

    # --- the run ------------------------------------------------------------------------

    async def run(self) -> Outcome:
        began = started_at()
        workdir = self.o.workdir or Path(tempfile.mkdtemp(prefix="tc-soak-"))
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        try:
            async with contextlib.AsyncExitStack() as stack:
                url, mqtt_url = await self._start_processes(stack, workdir)
                accounts = Accounts(url, run_id=self.run_id, concurrency=8, quiet=self.o.quiet)
                stack.push_async_callback(accounts.close)
                creds = admin_credentials(
                    self.o.admin_email, self.o.admin_password, workdir / "server/initial-admin.txt"
                )
                await accounts.sign_in_admin(*creds)
                await self._start_proxies(stack, url, mqtt_url)
                kinds = Links(url, mqtt_url, self.o.encoding, self.o.transport)
                self.groups = await form_groups(
                    accounts, self.o.users, self.o.group_size, kinds.kind
                )
                self.users = [u for g in self.groups for u in g]
                stack.push_async_callback(self._close_users)
                await asyncio.gather(*(self._open(u, url, mqtt_url) for u in self.users))
                wire_before = self._wire()
                await self._traffic()
                wire = {k: v - wire_before.get(k, 0) for k, v in self._wire().items()}
                threads = await self._histories()
                if self.o.database_url is not None:
                    await accounts.disable_all()
        except (OSError, RuntimeError, aiohttp.ClientError, ApiError) as exc:
            raise LoadtestError(f"the soak could not run: {exc} (files in {workdir})") from None
        result = reconcile(threads)
        outcome = self._outcome(began, result, wire)
        if outcome.failures or self.o.workdir is not None:
            outcome.summary += f"\nserver log and data in {workdir}"
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        return outcome

    async def _start_processes(
        self, stack: contextlib.AsyncExitStack, workdir: Path
    ) -> tuple[str, str | None]:
        database_url = self.o.database_url
        if database_url is None:
            bindir = postgres_bin()
            if bindir is None:
                raise LoadtestError("no PostgreSQL server binaries (pg_ctl): give --database-url")
            self._pg = PrivatePostgres(bindir)
            stack.push_async_callback(asyncio.to_thread, self._pg.remove)
            stack.push_async_callback(self._pg.stop)
            await self._pg.init()
            database_url = self._pg.url
        redis_url = None
        if self.o.redis or self.o.redis_restarts:
            self._redis = PrivateRedis(workdir)
            await self._redis.start()
            stack.callback(self._redis.kill)
            redis_url = self._redis.url
        port = free_port()
        uses_mqtt = self.o.transport in ("mqtt", "mixed")
        mqtt_port = free_port() if uses_mqtt else None
        env = server_env(database_url, workdir / "server", port, mqtt_port, redis_url)
        self._server = ServerProcess(env, workdir / "server.log", f"http://127.0.0.1:{port}")
        self._server.spawn()
        stack.push_async_callback(self._server.stop)
        await self._server.wait_healthy(HEALTHY_WITHIN)
        return self._server.base_url, (f"mqtt://127.0.0.1:{mqtt_port}" if mqtt_port else None)

    async def _start_proxies(
        self, stack: contextlib.AsyncExitStack, url: str, mqtt_url: str | None
    ) -> None:
        if self.o.impair is None and self.o.cut_every is None:
            return
        base = PRESETS[self.o.impair] if self.o.impair else Impairment()
        weather = Impairment(base.up, base.down, cut_every=self.o.cut_every)
        used = MIXED if self.o.transport == "mixed" else (self.o.transport,)
        for n, kind in enumerate(used):
            target = urlsplit(mqtt_url if kind == "mqtt" else url).port
            assert target is not None
            seed = None if self.o.seed is None else self.o.seed + n
            proxy = Impairer(target, weather, seed=seed)
            await proxy.start()
            stack.push_async_callback(proxy.close)
            self.proxies[kind] = proxy

    def _link_urls(self, kind: str, url: str, mqtt_url: str | None) -> tuple[str, str | None]:
        proxy = self.proxies.get(kind)
        if proxy is None:
            return url, mqtt_url
        if kind == "mqtt":
            return url, f"mqtt://127.0.0.1:{proxy.port}"
        return f"http://127.0.0.1:{proxy.port}", mqtt_url

    async def _open(self, user: User, url: str, mqtt_url: str | None) -> None:
        assert user.device_id is not None and user.thread is not None
        link_url, link_mqtt = self._link_urls(user.transport, url, mqtt_url)
        links = Links(link_url, link_mqtt, self.o.encoding, user.transport)
        for attempt in range(1, 4):
            transport = links.make(
                user.transport, user.member.rest, device_id=user.device_id, keys=user.keys
            )
            link = CountingTransport(transport)
            chat = ChatClient(
                link,
                user.member.rest,
                keys=user.keys,
                device_id=user.device_id,
                encoding=self.o.encoding,
                call_timeout=10.0,
            )
            chat.follow(user.thread)
            try:
                await asyncio.wait_for(chat.start(), 30)
            except Exception as exc:
                await chat.close()
                if attempt == 3:
                    raise LoadtestError(
                        f"a user could not connect over {user.transport}: "
                        f"{type(exc).__name__}: {exc}"
                    ) from None
                await asyncio.sleep(0.5 * attempt)
                continue
            user.chat, user.link = chat, link
            break
        self._spawn(self._receive(user))
        self._spawn(keep_fresh(user.member.rest, self._reauth(user)))

    def _reauth(self, user: User) -> Any:
        async def send_token(token: str) -> None:
            if user.transport == "mqtt" or user.chat is None:
                return  # a reconnect reads the fresh token; the broker checked the old one
            with contextlib.suppress(ChatError, TimeoutError):
                async with asyncio.timeout(10):
                    await user.chat.call("auth", {"token": token})

        return send_token

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_users(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(
            *(u.chat.close() for u in self.users if u.chat is not None), return_exceptions=True
        )

    # --- traffic and faults -------------------------------------------------------------

    async def _traffic(self) -> None:
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        senders = [asyncio.create_task(self._send_loop(u)) for u in self.users]
        ticker = asyncio.create_task(self._progress())
        try:
            try:
                async with asyncio.timeout(self.o.time_limit):
                    await self._chaos()
                    left = self.t0 + self.o.duration - loop.time()
                    if left > 0:
                        await asyncio.sleep(left)
            except TimeoutError:
                self.failures.append(f"the time limit of {self.o.time_limit:g} s was reached")
            self._stop_sending.set()
            # A send in flight finishes (acked, refused or past its deadline).
            await asyncio.wait(senders, timeout=self.o.ack_timeout + 15)
            await self._drain()
        finally:
            for task in (*senders, ticker):
                task.cancel()
            await asyncio.gather(*senders, ticker, return_exceptions=True)

    async def _chaos(self) -> None:
        loop = asyncio.get_running_loop()
        faults = self.o.faults()
        self.rng.shuffle(faults)
        self.planned = len(faults)
        await self._settle(None)
        for kind in faults:
            fault = Fault(kind, loop.time())
            self.faults.append(fault)
            await self._inflict(kind)
            fault.healthy = loop.time()
            await self._settle(fault)

    async def _inflict(self, kind: str) -> None:
        down = self.o.down
        if kind == "server":
            assert self._server is not None
            self._server.kill()
            await asyncio.sleep(down)
            self._server.spawn()
            await self._server.wait_healthy(HEALTHY_WITHIN)
        elif kind == "redis":
            assert self._redis is not None
            self._redis.kill()
            await asyncio.sleep(down)
            await self._redis.start()
        else:
            assert self._pg is not None
            await self._pg.crash()
            await asyncio.sleep(down)
            await self._pg.start()

    def _kinds(self) -> set[str]:
        return {u.transport for u in self.users}

    async def _settle(self, fault: Fault | None) -> None:
        """Until every transport acked and delivered since the recovery (bounded), then
        ``settle`` seconds and a random part of as many again."""
        loop = asyncio.get_running_loop()
        if fault is not None:
            deadline = loop.time() + self.o.recovery_timeout
            while loop.time() < deadline:
                if all(k in fault.first_ack and k in fault.first_delivery for k in self._kinds()):
                    break
                await self._wait_news(deadline - loop.time())
            else:
                n = len(self.faults)
                for kind in sorted(self._kinds()):
                    for what, seen in (
                        ("ack", fault.first_ack),
                        ("delivery", fault.first_delivery),
                    ):
                        if kind not in seen:
                            self.failures.append(
                                f"fault {n} ({fault.kind}): no {what} on {kind} within "
                                f"{self.o.recovery_timeout:g} s of recovery"
                            )
        await asyncio.sleep(self.o.settle + self.rng.uniform(0, self.o.settle))

    def _recovered(self, now: float, transport: str, what: str) -> None:
        """An ack or a delivery at ``now``: the first since the last recovery counts."""
        self._news.set()
        if not self.faults:
            return
        fault = self.faults[-1]
        if fault.healthy is None or now < fault.healthy:
            return
        seen = fault.first_ack if what == "ack" else fault.first_delivery
        seen.setdefault(transport, now)

    async def _send_loop(self, user: User) -> None:
        loop = asyncio.get_running_loop()
        assert user.chat is not None and user.thread is not None
        due = self.t0 + self.rng.uniform(0, 1 / self.o.rate)
        k = 0
        while not self._stop_sending.is_set():
            wait = due - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_sending.wait(), wait)
                if self._stop_sending.is_set():
                    return
            key = (user.index, k)
            self.sent.add(key)
            self.counts[f"sent:{user.transport}"] += 1
            plaintext = body(self.run_id, user.index, k, due, self.o.message_bytes)
            try:
                sent = await user.chat.send(
                    user.thread, plaintext, deadline=loop.time() + self.o.ack_timeout
                )
            except ChatError as exc:
                self.errors[exc.code] += 1
            except TimeoutError:
                self.errors["ack_timeout"] += 1
            except ApiError as exc:
                self.errors[f"rest:{exc.code}"] += 1
            except (aiohttp.ClientError, OSError) as exc:
                self.errors[f"rest:{type(exc).__name__}"] += 1
            else:
                now = loop.time()
                self.acked[key] = sent.seq
                self.counts[f"acked:{user.transport}"] += 1
                self.latency[user.transport]["send_to_ack"].record(now - due)
                self._recovered(now, user.transport, "ack")
            k += 1
            due += 1 / self.o.rate

    async def _receive(self, user: User) -> None:
        loop = asyncio.get_running_loop()
        assert user.chat is not None
        while True:
            delivered = await user.chat.next_message()
            if delivered.sender_user_id == user.member.user_id:
                continue  # the client's own echo of a send
            now = loop.time()
            parsed = parse_body(delivered.plaintext) if delivered.plaintext else None
            key = None
            if parsed is not None and parsed[0] == self.run_id:
                key = (parsed[1], parsed[2])
                self.latency[user.transport]["send_to_delivered"].record(now - parsed[3])
                self.got[user.index].add(key)
            self.arrivals[user.index].append(Seen(delivered.seq, key))
            self.counts[f"delivered:{user.transport}"] += 1
            self._recovered(now, user.transport, "delivery")

    async def _wait_news(self, within: float) -> None:
        """Until the next ack or delivery, or ``within`` seconds."""
        self._news.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._news.wait(), max(0.0, within))

    def _missing(self) -> int:
        """(acked message, recipient) pairs not delivered yet."""
        missing = 0
        for group in self.groups:
            members = {u.index for u in group}
            for key in self.acked:
                if key[0] in members:
                    missing += sum(key not in self.got[i] for i in members if i != key[0])
        return missing

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.o.drain
        while self._missing() and loop.time() < deadline:
            await self._wait_news(deadline - loop.time())

    async def _progress(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            if self.o.quiet:
                continue
            fault = self.faults[-1] if self.faults else None
            state = "" if fault is None else (" (down)" if fault.healthy is None else "")
            c = self.counts
            sent = sum(v for k, v in c.items() if k.startswith("sent:"))
            acked = sum(v for k, v in c.items() if k.startswith("acked:"))
            delivered = sum(v for k, v in c.items() if k.startswith("delivered:"))
            print(
                f"soak {loop.time() - self.t0:6.0f} s  faults {len(self.faults)}/"
                f"{getattr(self, 'planned', 0)}{'' if fault is None else ' ' + fault.kind}{state}"
                f"  sent {sent}  acked {acked}  delivered {delivered}  "
                f"errors {sum(self.errors.values())}",
                file=sys.stderr,
                flush=True,
            )

    # --- reading back -----------------------------------------------------------------

    def _wire(self) -> dict[str, int]:
        return {
            kind: proxy.counters.up.bytes + proxy.counters.down.bytes
            for kind, proxy in self.proxies.items()
        }

    async def _histories(self) -> list[Thread]:
        return [await self._history(group) for group in self.groups]

    async def _history(self, group: list[User]) -> Thread:
        """The thread as stored, read through the API and opened by its first member."""
        reader = group[0]
        assert reader.thread is not None and reader.device_id is not None
        rest = reader.member.rest
        signers = {d.id: d.ed25519_public for d in await rest.thread_devices(reader.thread)}
        history: list[Seen] = []
        after = 0
        while True:
            page = await rest.call(
                "GET", f"/api/v1/threads/{reader.thread}/messages?after={after}&limit=200"
            )
            for item in page["items"]:
                key = None
                try:
                    env = from_json(item["envelope"])
                    signer = signers.get(env.sender_device_id, b"")
                    plaintext = open_envelope(
                        env,
                        me=reader.keys,
                        my_device_id=reader.device_id,
                        sender_signing_key=signer,
                    )
                    parsed = parse_body(plaintext)
                    if parsed is not None and parsed[0] == self.run_id:
                        key = (parsed[1], parsed[2])
                except (EnvelopeError, ValueError):
                    pass
                history.append(Seen(int(item["seq"]), key))
                after = max(after, int(item["seq"]))
            if page["complete"] or not page["items"]:
                break
        members = [u.index for u in group]
        return Thread(
            members=members,
            sent={k for k in self.sent if k[0] in members},
            acked={k: s for k, s in self.acked.items() if k[0] in members},
            history=history,
            received={i: list(self.arrivals[i]) for i in members},
        )

    # --- the outcome ------------------------------------------------------------------

    def _outcome(self, began: str, result: Reconciliation, wire: dict[str, int]) -> Outcome:
        o = self.o
        failures = list(self.failures)
        if not result.clean:
            failures.append(
                f"history: {result.lost} lost, {result.duplicated} duplicated, "
                f"{result.unexpected} unexpected, {result.out_of_order} out of order"
            )
        if self.errors:
            failures.append(f"{sum(self.errors.values())} sends failed: {dict(self.errors)}")
        if len(self.faults) < len(o.faults()):
            failures.append(f"only {len(self.faults)} of {len(o.faults())} faults were made")
        kinds = sorted(self._kinds())
        transports: dict[str, Any] = {}
        for t in kinds:
            senders = {u.index for u in self.users if u.transport == t}
            receivers = senders
            involved = {k for k in self.acked if k[0] in senders}
            involved |= {k for i in receivers for k in self.got[i]}
            entry: dict[str, Any] = {
                "users": len(senders),
                "sent": self.counts[f"sent:{t}"],
                "acked": self.counts[f"acked:{t}"],
                "delivered": self.counts[f"delivered:{t}"],
                "latency_ms": {name: summarize(lat.total) for name, lat in self.latency[t].items()},
            }
            if t in wire:
                entry["wire_bytes"] = wire[t]
                entry["wire_bytes_per_message"] = round(wire[t] / max(1, len(involved)), 1)
            transports[t] = entry
        report: dict[str, Any] = {
            "scenario": "soak",
            "run_id": self.run_id,
            "started_at": began,
            "params": {
                "kills": o.kills,
                "redis_restarts": o.redis_restarts,
                "postgres_restarts": o.postgres_restarts,
                "users": o.users,
                "group_size": o.group_size,
                "transport": o.transport,
                "rate_per_user": o.rate,
                "down_s": o.down,
                "settle_s": o.settle,
                "impair": o.impair,
                "impairment": self._weather(),
                "cut_every_s": o.cut_every,
                "redis": self._redis is not None,
                "seed": o.seed,
            },
            "faults": Counter(f.kind for f in self.faults),
            "messages": {
                "sent": len(self.sent),
                "acked": len(self.acked),
                **result.as_dict(),
            },
            "transports": transports,
            "recovery": recovery(self.faults),
            "errors": dict(self.errors),
            "proxies": {k: p.counters.snapshot() for k, p in self.proxies.items()},
            "passed": not failures,
            "failures": failures,
        }
        return Outcome(report=report, summary=summary(report), failures=failures)

    def _weather(self) -> str | None:
        if not self.proxies:
            return None
        return next(iter(self.proxies.values())).impairment.describe()
