"""The notification worker on a real database, with a real webhook receiver on loopback.

Every test gets a fresh database, so no notification another test left due
is claimed here. The last test runs the real ``teleconsult worker`` command
and kills it with SIGKILL in the middle of its batches.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from teleconsult.accounts import store as accounts
from teleconsult.core.db import create_pool
from teleconsult.core.errors import ConfigError
from teleconsult.core.identity import Role
from teleconsult.core.settings import NotifySettings
from teleconsult.notifications import store as outbox_store
from teleconsult.notifications.channels import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    LogChannel,
    NotificationChannel,
    WebhookChannel,
    create_channel,
    verify_signature,
)
from teleconsult.notifications.worker import (
    DEFAULT_BATCH,
    BackgroundWorker,
    OutboxWorker,
    retry_delay,
)
from teleconsult.scheduling import store
from teleconsult.scheduling.records import NewNotification, OutboxItem, ServiceKind
from tests.dbutil import create_database, drop_database
from tests.servers import WorkerProcess
from tests.world import make_user

SECRET = "webhook-test-secret-0123456789"
LEASE = timedelta(seconds=30)
FIRST_SLOT = datetime(2031, 3, 3, 9, 0, tzinfo=UTC)

ServerFactory = Callable[..., Awaitable[TestServer]]


# --- a webhook receiver ----------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    key: str
    timestamp: str
    signature: str
    body: bytes
    content_type: str
    verified: bool


@dataclass
class Receiver:
    """Records every request, verifying its signature; answers as told per key."""

    delay: float = 0.0
    answers: dict[str, list[int]] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    url: str = ""
    # Set when ``arrivals`` reaches ``trigger_at``: the kill test's cue.
    arrivals: int = 0
    trigger_at: int | None = None
    triggered: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        signature = request.headers.get(SIGNATURE_HEADER, "")
        key = request.headers.get(IDEMPOTENCY_HEADER, "")
        self.deliveries.append(
            Delivery(
                key=key,
                timestamp=timestamp,
                signature=signature,
                body=body,
                content_type=request.content_type,
                verified=verify_signature(SECRET, timestamp, body, signature, now=time.time()),
            )
        )
        self.arrivals += 1
        if self.trigger_at is not None and self.arrivals >= self.trigger_at:
            self.triggered.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        queued = self.answers.get(key)
        status = queued.pop(0) if queued else 200
        headers = {"Retry-After": "120"} if status == 429 else None
        return web.Response(status=status, headers=headers)

    def keys(self) -> Counter[str]:
        return Counter(delivery.key for delivery in self.deliveries)

    def cue(self, arrivals: int) -> None:
        """Start counting afresh; set ``triggered`` at the ``arrivals``-th request."""
        self.arrivals = 0
        self.trigger_at = arrivals
        self.triggered = asyncio.Event()


@pytest.fixture
async def receiver(aiohttp_server: ServerFactory) -> Receiver:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = await aiohttp_server(app)
    hook.url = str(server.make_url("/hook"))
    return hook


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def webhook(receiver: Receiver, http: aiohttp.ClientSession) -> WebhookChannel:
    return WebhookChannel(receiver.url, SECRET, http, timeout=5.0)


# --- a fresh database with appointments ------------------------------------------------


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    database = await create_database()
    yield database
    await drop_database(database)


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dsn, min_size=1, max_size=5)
    yield pool
    await pool.close()


async def book(pool: asyncpg.Pool, count: int) -> list[UUID]:
    """``count`` appointments of one patient with one doctor, an hour apart."""
    clinic = await accounts.insert_clinic(pool, name="Outbox clinic", timezone="UTC")
    doctor = await make_user(pool, clinic.id, Role.DOCTOR, tag="outbox")
    patient = await make_user(pool, clinic.id, Role.PATIENT, tag="outbox")
    profile = await store.upsert_doctor_profile(
        pool,
        user_id=doctor.user_id,
        clinic_id=clinic.id,
        specialties=["general practice"],
        languages=["en"],
        consultation_minutes=30,
        buffer_minutes=0,
        fee_cents=0,
        currency="KES",
        services=[ServiceKind.VIDEO],
    )
    assert profile is not None
    booked = []
    for hour in range(count):
        start = FIRST_SLOT + timedelta(hours=hour)
        appointment = await store.insert_appointment(
            pool,
            clinic_id=clinic.id,
            doctor_id=doctor.user_id,
            patient_id=patient.user_id,
            service=ServiceKind.VIDEO,
            starts_at=start,
            ends_at=start + timedelta(minutes=30),
            created_by=patient.user_id,
        )
        booked.append(appointment.id)
    return booked


async def enqueue(
    pool: asyncpg.Pool, appointments: list[UUID], count: int, due: datetime
) -> list[OutboxItem]:
    """``count`` notifications due at or before ``due``, spread over the appointments."""
    batch = [
        NewNotification(
            kind="reminder_1h",
            appointment_id=appointments[i % len(appointments)],
            due_at=due - timedelta(seconds=count - i),
            payload={"v": 1},
        )
        for i in range(count)
    ]
    assert await outbox_store.enqueue(pool, batch) == count
    return await rows(pool)


async def rows(pool: asyncpg.Pool) -> list[OutboxItem]:
    return [
        item
        for appointment_id in await pool.fetch(
            "SELECT DISTINCT appointment_id FROM notification_outbox"
        )
        for item in await outbox_store.list_outbox(pool, appointment_id["appointment_id"])
    ]


async def row(pool: asyncpg.Pool, item_id: int) -> OutboxItem:
    [found] = [item for item in await rows(pool) if item.id == item_id]
    return found


async def one_due(pool: asyncpg.Pool, due: datetime) -> OutboxItem:
    [item] = await enqueue(pool, await book(pool, 1), 1, due)
    return item


def key(item: OutboxItem) -> str:
    return f"notif-{item.id}"


def worker(pool: asyncpg.Pool, channel: NotificationChannel, **options: Any) -> OutboxWorker:
    options.setdefault("worker_id", "w1")
    options.setdefault("lease", LEASE)
    return OutboxWorker(pool, channel, **options)


async def until(condition: Callable[[], Awaitable[bool]], *, within: float) -> None:
    """Poll ``condition`` (a database query: nothing to wait on) until true."""
    async with asyncio.timeout(within):
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


# --- the log channel --------------------------------------------------------------------


async def test_due_items_are_sent_through_the_log_channel_and_marked_sent(
    db: asyncpg.Pool,
) -> None:
    items = await enqueue(db, await book(db, 2), 3, now())

    assert await worker(db, LogChannel()).run_once() == 3

    assert [(item.sent_at is not None, item.claimed_by) for item in await rows(db)] == [
        (True, "w1")
    ] * len(items)


async def test_the_log_channel_logs_kind_appointment_and_key_but_not_the_payload(
    db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    appointment = (await book(db, 1))[0]
    marker = NewNotification("confirmation", appointment, now(), {"marker": "not-for-logs"})
    await outbox_store.enqueue(db, [marker])
    caplog.set_level(logging.INFO, logger="teleconsult.notifications.channels")

    await worker(db, LogChannel()).run_once()

    [item] = await rows(db)
    [line] = [r.getMessage() for r in caplog.records if r.name.endswith(".channels")]
    assert "confirmation" in line and str(appointment) in line and key(item) in line
    assert "not-for-logs" not in caplog.text


async def test_items_not_yet_due_are_left_pending(db: asyncpg.Pool) -> None:
    appointments = await book(db, 1)
    [due] = await enqueue(db, appointments, 1, now())
    await outbox_store.enqueue(
        db, [NewNotification("reminder_24h", appointments[0], now() + LEASE)]
    )

    assert await worker(db, LogChannel()).run_once() == 1

    later = [item for item in await rows(db) if item.id != due.id]
    assert [(item.sent_at, item.attempts, item.claimed_by) for item in later] == [(None, 0, None)]


async def test_withdrawn_items_are_never_sent(
    db: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    item = await one_due(db, now())
    assert item.appointment_id is not None
    assert await outbox_store.cancel_pending(db, item.appointment_id) == 1
    caplog.set_level(logging.INFO, logger="teleconsult.notifications.channels")

    assert await worker(db, LogChannel()).run_once() == 0

    assert (await row(db, item.id)).sent_at is None
    assert key(item) not in caplog.text


# --- the webhook channel ----------------------------------------------------------------


async def test_webhook_requests_carry_the_key_and_a_valid_signature(
    db: asyncpg.Pool, receiver: Receiver, webhook: WebhookChannel
) -> None:
    items = await enqueue(db, await book(db, 2), 2, now())

    assert await worker(db, webhook).run_once() == 2

    assert sorted(d.key for d in receiver.deliveries) == sorted(key(item) for item in items)
    assert all(d.verified and d.content_type == "application/json" for d in receiver.deliveries)
    first = next(d for d in receiver.deliveries if d.key == key(items[0]))
    assert json.loads(first.body) == {
        "id": key(items[0]),
        "kind": "reminder_1h",
        "appointment_id": str(items[0].appointment_id),
        "due_at": items[0].due_at.isoformat(),
        "payload": {"v": 1},
    }


async def test_a_tampered_body_fails_verification(
    db: asyncpg.Pool, receiver: Receiver, webhook: WebhookChannel
) -> None:
    await one_due(db, now())
    await worker(db, webhook).run_once()
    [sent] = receiver.deliveries
    assert sent.verified

    tampered = sent.body.replace(b"reminder_1h", b"reminder_24")

    assert not verify_signature(SECRET, sent.timestamp, tampered, sent.signature, time.time())


async def test_a_timestamp_older_than_five_minutes_fails_verification(
    db: asyncpg.Pool, receiver: Receiver, webhook: WebhookChannel
) -> None:
    await one_due(db, now())
    await worker(db, webhook).run_once()
    [sent] = receiver.deliveries
    signed_at = int(sent.timestamp)

    def verify(at: float) -> bool:
        return verify_signature(SECRET, sent.timestamp, sent.body, sent.signature, at)

    assert verify(signed_at + 300)
    assert not verify(signed_at + 301)


async def test_a_server_error_is_retried_later_with_backoff(
    db: asyncpg.Pool, receiver: Receiver, webhook: WebhookChannel
) -> None:
    item = await one_due(db, now())
    receiver.answers[key(item)] = [500]
    outbox = worker(db, webhook)
    at = now()

    assert await outbox.run_once(at) == 0
    assert await outbox.run_once(at + timedelta(seconds=29)) == 0

    failed = await row(db, item.id)
    assert (failed.sent_at, failed.failed_at, failed.attempts) == (None, None, 1)
    assert failed.locked_until == at + timedelta(seconds=30)
    assert failed.last_error == "webhook answered 500"
    assert receiver.keys() == {key(item): 1}


async def test_a_delivery_after_a_server_error_is_marked_sent(
    db: asyncpg.Pool, receiver: Receiver, webhook: WebhookChannel
) -> None:
    item = await one_due(db, now())
    receiver.answers[key(item)] = [500]
    outbox = worker(db, webhook)
    at = now()
    await outbox.run_once(at)

    assert await outbox.run_once(at + timedelta(seconds=30)) == 1

    sent = await row(db, item.id)
    assert (sent.sent_at is not None, sent.attempts, sent.last_error) == (True, 2, None)
    assert receiver.keys() == {key(item): 2}


async def test_a_client_error_fails_permanently(
    db: asyncpg.Pool, receiver: Receiver, webhook: WebhookChannel
) -> None:
    item = await one_due(db, now())
    receiver.answers[key(item)] = [400]
    outbox = worker(db, webhook)
    at = now()

    await outbox.run_once(at)
    await outbox.run_once(at + timedelta(days=1))

    failed = await row(db, item.id)
    assert (failed.sent_at, failed.failed_at is not None, failed.locked_until) == (None, True, None)
    assert failed.last_error == "webhook answered 400"
    assert receiver.keys() == {key(item): 1}


async def test_too_many_requests_is_retried_no_sooner_than_retry_after(
    db: asyncpg.Pool, receiver: Receiver, webhook: WebhookChannel
) -> None:
    item = await one_due(db, now())
    receiver.answers[key(item)] = [429]
    at = now()

    await worker(db, webhook).run_once(at)

    failed = await row(db, item.id)
    assert (failed.failed_at, failed.locked_until) == (None, at + timedelta(seconds=120))


async def test_an_unreachable_endpoint_is_retried(
    db: asyncpg.Pool, http: aiohttp.ClientSession
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    channel = WebhookChannel(f"http://127.0.0.1:{closed_port}/hook", SECRET, http, timeout=5.0)
    item = await one_due(db, now())

    await worker(db, channel).run_once()

    failed = await row(db, item.id)
    assert (failed.failed_at, failed.locked_until is not None) == (None, True)
    assert (failed.last_error or "").startswith("webhook request failed")


async def test_a_send_that_would_outlast_the_lease_is_abandoned_and_retried(
    db: asyncpg.Pool, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.delay = 3.0
    slow = WebhookChannel(receiver.url, SECRET, http, timeout=30.0)
    item = await one_due(db, now())
    await worker(db, slow, lease=timedelta(seconds=1)).run_once()

    failed = await row(db, item.id)
    assert (failed.sent_at, failed.failed_at) == (None, None)
    assert failed.last_error == "send did not finish within the lease"


async def test_the_worker_gives_up_after_max_attempts(
    db: asyncpg.Pool, receiver: Receiver, webhook: WebhookChannel
) -> None:
    item = await one_due(db, now())
    receiver.answers[key(item)] = [500, 500, 500]
    outbox = worker(db, webhook, max_attempts=2)
    at = now()

    await outbox.run_once(at)
    await outbox.run_once(at + timedelta(seconds=30))
    await outbox.run_once(at + timedelta(days=1))

    failed = await row(db, item.id)
    assert (failed.attempts, failed.failed_at is not None, failed.sent_at) == (2, True, None)
    assert receiver.keys() == {key(item): 2}


@dataclass
class LeaseThief:
    """Sends nothing; while "sending", another worker takes the row over."""

    pool: asyncpg.Pool
    at: datetime

    async def send(self, item: OutboxItem) -> None:
        await outbox_store.claim_due(
            self.pool, now=self.at + LEASE, lease=LEASE, limit=10, worker_id="other"
        )


async def test_a_send_is_not_counted_when_another_worker_holds_the_row(
    db: asyncpg.Pool,
) -> None:
    item = await one_due(db, now())
    at = now()

    assert await worker(db, LeaseThief(db, at)).run_once(at) == 0

    taken = await row(db, item.id)
    assert (taken.sent_at, taken.claimed_by, taken.attempts) == (None, "other", 2)


@dataclass
class Faulty:
    """Delivers every item but one, for which it raises an unexpected error."""

    bad_id: int
    sent: list[int] = field(default_factory=list)

    async def send(self, item: OutboxItem) -> None:
        if item.id == self.bad_id:
            raise RuntimeError("a bug in a channel")
        self.sent.append(item.id)


async def test_an_error_sending_one_item_does_not_stop_the_others(db: asyncpg.Pool) -> None:
    items = await enqueue(db, await book(db, 1), 5, now())
    bad = items[1]
    channel = Faulty(bad.id)

    assert await worker(db, channel).run_once() == 4

    assert sorted(channel.sent) == sorted(item.id for item in items if item is not bad)
    failed = await row(db, bad.id)
    assert (failed.sent_at, failed.failed_at) == (None, None)
    assert failed.last_error == "channel raised RuntimeError"


def test_retries_wait_30_seconds_doubling_up_to_an_hour() -> None:
    assert [retry_delay(n).total_seconds() for n in range(1, 10)] == [
        30,
        60,
        120,
        240,
        480,
        960,
        1920,
        3600,
        3600,
    ]


def test_the_webhook_channel_needs_a_url() -> None:
    with pytest.raises(ConfigError, match="NOTIFY_WEBHOOK_URL"):
        create_channel(NotifySettings(channel="webhook", webhook_secret=SECRET), None)


# --- workers running ---------------------------------------------------------------------


async def test_two_workers_deliver_each_of_100_items_exactly_once(
    db: asyncpg.Pool, receiver: Receiver, webhook: WebhookChannel
) -> None:
    items = await enqueue(db, await book(db, 10), 100, now())
    receiver.delay = 0.005
    workers = [worker(db, webhook, worker_id=name, batch=10) for name in ("a", "b")]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.run(stop, poll_interval=0.01)) for w in workers]

    async def all_sent() -> bool:
        pending: int = await db.fetchval(
            "SELECT count(*) FROM notification_outbox WHERE sent_at IS NULL"
        )
        return pending == 0

    try:
        await until(all_sent, within=20)
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    assert receiver.keys() == Counter({key(item): 1 for item in items})
    assert {item.claimed_by for item in await rows(db)} <= {"a", "b"}


async def test_the_background_worker_sends_until_stopped(
    db: asyncpg.Pool, receiver: Receiver
) -> None:
    items = await enqueue(db, await book(db, 3), 6, now())
    settings = NotifySettings(
        channel="webhook",
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        poll_interval=0.05,
        lease_seconds=5,
    )
    background = BackgroundWorker(settings, worker_id="server")
    await background.start(db)

    async def all_delivered() -> bool:
        return len(receiver.keys()) == len(items)

    try:
        await until(all_delivered, within=10)
    finally:
        await background.stop()

    assert not background.running
    assert receiver.keys() == Counter({key(item): 1 for item in items})


# --- the kill test --------------------------------------------------------------------------


async def start_worker(receiver: Receiver, dsn: str, data_dir: Path, log: Path) -> WorkerProcess:
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "TELECONSULT_DATA_DIR": str(data_dir),
        "NOTIFY_CHANNEL": "webhook",
        "NOTIFY_WEBHOOK_URL": receiver.url,
        "NOTIFY_WEBHOOK_SECRET": SECRET,
        "NOTIFY_LEASE_SECONDS": "1",
        "NOTIFY_POLL_INTERVAL": "0.05",
        "LOG_FORMAT": "text",
        "LOG_LEVEL": "INFO",
    }
    worker = WorkerProcess(env, log)
    await worker.launch()
    return worker


async def test_killed_workers_lose_nothing_and_repeat_only_what_was_in_flight(
    db: asyncpg.Pool, dsn: str, receiver: Receiver, tmp_path: Path
) -> None:
    items = await enqueue(db, await book(db, 12), 60, now())
    expected = {key(item) for item in items}
    # Slow enough that each worker is killed with requests in flight.
    receiver.delay = 0.03
    kill_after = [5, 15, 10, 20]  # requests the worker makes before SIGKILL
    # How many times each key was held (claimed, not recorded as sent) by a killed worker.
    in_flight: Counter[str] = Counter()
    proc: WorkerProcess | None = None

    async def all_sent() -> bool:
        pending: int = await db.fetchval(
            "SELECT count(*) FROM notification_outbox WHERE sent_at IS NULL"
        )
        return pending == 0

    try:
        async with asyncio.timeout(60):
            for round_, arrivals in enumerate(kill_after):
                receiver.cue(arrivals)
                proc = await start_worker(receiver, dsn, tmp_path, tmp_path / f"w{round_}.log")
                await receiver.triggered.wait()
                await proc.kill()
                proc = None
                # Claimed but not recorded as sent: what the killed worker held.
                held = await db.fetch(
                    "SELECT id FROM notification_outbox "
                    "WHERE sent_at IS NULL AND claimed_by IS NOT NULL"
                )
                in_flight.update(f"notif-{r['id']}" for r in held)
            receiver.cue(10**6)
            proc = await start_worker(receiver, dsn, tmp_path, tmp_path / "last.log")
            await until(all_sent, within=30)
            assert await proc.terminate() == 0, proc.text()
            proc = None
    finally:
        if proc is not None:
            await proc.kill()

    received = receiver.keys()
    duplicates = {k: n for k, n in sorted(received.items()) if n > 1}
    print(
        f"\nkill test: {len(items)} notifications, {len(kill_after)} kills, "
        f"{sum(received.values())} requests, {len(duplicates)} keys repeated: {duplicates}; "
        f"{len(in_flight)} keys held by killed workers"
    )
    assert set(received) == expected
    assert all(item.sent_at is not None and item.failed_at is None for item in await rows(db))
    # Only a worker killed while holding a key can have sent it without recording it.
    assert all(n <= 1 + in_flight[k] for k, n in received.items()), in_flight
    assert sum(n - 1 for n in duplicates.values()) <= len(kill_after) * DEFAULT_BATCH
    assert all(d.verified for d in receiver.deliveries)
