"""The notification worker: sends what the transactional outbox holds, through a channel.

Booking, moving and cancelling write ``notification_outbox`` rows in their own
transaction (``store.enqueue``), so a notification exists if and only if the
change committed. This module is the sending side.

How a row is sent
-----------------
1. A worker claims up to ``batch`` due rows (``store.claim_due``: ``FOR UPDATE
   SKIP LOCKED``, so concurrent workers get disjoint rows) and leases them to
   itself until ``now + lease``. The claim counts an attempt.
2. It sends each row through the channel. Rows of one subject (an appointment,
   or a thread member for chat news) go in order, one after another; different
   subjects go concurrently. Every send must finish inside the lease, less a
   safety margin (``min(lease / 5, 5 s)``): a send that would outlast it is
   abandoned as a retryable failure, and rows not started in time are released
   unsent. So a worker never sends a row after its lease could have passed to
   another worker.
3. On success it records ``sent_at`` with ``store.mark_sent``, which changes
   nothing (and is not counted) unless the row is still claimed by this worker.
4. On a retryable failure the row is released until ``now + retry_delay``
   (30 s, 60 s, 120 s ... capped at 1 h, or longer if the remote sent
   ``Retry-After``); after ``max_attempts`` attempts, or on a permanent failure,
   it is marked failed (``failed_at``) and never tried again.

A worker that dies (killed, crashed, host lost) holds its rows only until their
lease expires; then any worker claims them again.

Delivery guarantee
------------------
Exactly-once delivery to a remote endpoint is impossible in general: a worker
cannot record "sent" in the same transaction as the remote's acceptance. This
worker gives **at-least-once** delivery with a stable idempotency key per row
(``notif-<id>``, the same on every retry). A notification reaches the remote
twice only when the remote accepted it but the worker did not record that: the
worker died, or its database write failed, between the remote accepting and
``mark_sent``; or the remote accepted but its answer was lost (timeout,
dropped connection), which the worker must treat as a failure and retry. The
lease and the "``mark_sent`` only while still leased" rule exclude every other
duplicate: two live workers never hold the same row at once. With a receiver
that dedupes on the key, as the webhook contract asks, each notification takes
effect exactly once.

Leases are computed from the worker's clock (``now + lease``), so the clocks of
hosts running workers must agree to well within the safety margin.

A row withdrawn (``store.cancel_pending``) after a worker claimed it may still
go out once; its ``mark_sent`` is then recorded as usual.

Nothing here is safe to share between event loops; one ``OutboxWorker`` may run
``run`` in only one task at a time (several workers, in one process or many,
are fine).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg

from teleconsult.core.settings import NotifySettings
from teleconsult.notifications import store as outbox_store
from teleconsult.notifications.channels import (
    ChannelError,
    NotificationChannel,
    create_channel,
    idempotency_key,
    subject,
)
from teleconsult.scheduling.records import OutboxItem

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 20
DEFAULT_MAX_ATTEMPTS = 10
RETRY_BASE = timedelta(seconds=30)
RETRY_CAP = timedelta(hours=1)
# After a failed batch (database down), the loop backs off up to this long.
_MAX_IDLE_BACKOFF = 30.0
_LEASE_MARGIN_CAP = 5.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


def default_worker_id() -> str:
    """Unique per worker: host, process and a random part (a restarted pid is a new worker)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"


def retry_delay(
    attempts: int, *, base: timedelta = RETRY_BASE, cap: timedelta = RETRY_CAP
) -> timedelta:
    """The wait after the ``attempts``-th failed attempt: ``base · 2^(attempts - 1)``, capped."""
    exponent = max(0, attempts - 1)
    # Past 2^20 the cap has long been reached; avoid building a huge timedelta.
    if exponent > 20:
        return cap
    delay: timedelta = base * (2**exponent)
    return min(cap, delay)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, waking early when ``stop`` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


class OutboxWorker:
    """Claims due outbox rows and sends them through ``channel``; see the module docstring.

    ``worker_id`` must be unique among live workers. ``clock`` gives the
    current time (UTC) when ``run_once`` is not told it.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        channel: NotificationChannel,
        *,
        worker_id: str,
        lease: timedelta,
        batch: int = DEFAULT_BATCH,
        clock: Callable[[], datetime] = _utcnow,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        retry_base: timedelta = RETRY_BASE,
        retry_cap: timedelta = RETRY_CAP,
    ) -> None:
        if lease <= timedelta(0):
            raise ValueError("lease must be positive")
        if batch < 1 or max_attempts < 1:
            raise ValueError("batch and max_attempts must be at least 1")
        self._pool = pool
        self._channel = channel
        self.worker_id = worker_id
        self._lease = lease
        self._batch = batch
        self._clock = clock
        self._max_attempts = max_attempts
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        lease_seconds = lease.total_seconds()
        self._send_window = lease_seconds - min(lease_seconds / 5, _LEASE_MARGIN_CAP)

    def _now(self, now: datetime | None) -> datetime:
        return self._clock() if now is None else now

    async def run_once(self, now: datetime | None = None) -> int:
        """Claim one batch of rows due at ``now`` (default: the clock), send them.

        Returns how many were sent and recorded as sent by this worker.
        """
        _, sent = await self._run_batch(now)
        return sent

    async def run(self, stop: asyncio.Event, poll_interval: float) -> None:
        """Send batches until ``stop`` is set; the batch under way is finished first.

        A full batch is followed at once by the next; otherwise the loop waits
        ``poll_interval``. A failing batch (database unreachable) is logged and
        retried with capped, jittered exponential backoff.
        """
        failures = 0
        while not stop.is_set():
            try:
                claimed, _ = await self._run_batch(None)
            except Exception as exc:
                failures += 1
                delay = min(_MAX_IDLE_BACKOFF, poll_interval * 2**failures)
                delay *= random.uniform(0.5, 1.0)
                logger.warning(
                    "outbox batch failed (%s); retrying in %.1f s", type(exc).__name__, delay
                )
                await _wait(stop, delay)
                continue
            failures = 0
            if claimed < self._batch:
                await _wait(stop, poll_interval)

    async def _run_batch(self, now: datetime | None) -> tuple[int, int]:
        """(rows claimed, rows sent and recorded) for one batch."""
        claim_time = self._now(now)
        # The lease runs from claim_time; measure it on the monotonic clock
        # from before the claim, so it cannot be overestimated.
        deadline = time.monotonic() + self._send_window
        items = await outbox_store.claim_due(
            self._pool,
            now=claim_time,
            lease=self._lease,
            limit=self._batch,
            worker_id=self.worker_id,
        )
        if not items:
            return 0, 0
        by_subject: dict[str, list[OutboxItem]] = {}
        for item in items:
            by_subject.setdefault(subject(item), []).append(item)
        sent: list[bool] = []
        # The task group keeps a reference to every task and awaits them all;
        # _send_in_order never raises, so one subject cannot stop another.
        async with asyncio.TaskGroup() as group:
            for queue in by_subject.values():
                group.create_task(self._send_in_order(queue, deadline, now, sent))
        return len(items), sum(sent)

    async def _send_in_order(
        self, queue: list[OutboxItem], deadline: float, now: datetime | None, sent: list[bool]
    ) -> None:
        for item in queue:
            try:
                sent.append(await self._process(item, deadline, now))
            except Exception as exc:
                # A database error recording the outcome: the lease expires and
                # the row is tried again (perhaps sent twice, see the docstring).
                logger.error(
                    "notification %s: recording the outcome failed (%s)",
                    item.id,
                    type(exc).__name__,
                )
                sent.append(False)

    async def _process(self, item: OutboxItem, deadline: float, now: datetime | None) -> bool:
        if item.attempts > self._max_attempts:
            # Claimed again after workers died while holding it: a row that
            # kills its worker must not be retried for ever.
            await self._record_failure(
                item, f"gave up after {item.attempts - 1} attempts", False, None, now
            )
            return False
        budget = deadline - time.monotonic()
        if budget <= 0:
            await outbox_store.mark_failed(
                self._pool,
                item.id,
                self.worker_id,
                error="lease ran out before sending; released unsent",
                retry_at=self._now(now),
            )
            return False
        try:
            async with asyncio.timeout(budget):
                await self._channel.send(item)
        except ChannelError as exc:
            await self._record_failure(item, str(exc), exc.retryable, exc.retry_after, now)
            return False
        except TimeoutError:
            await self._record_failure(
                item, "send did not finish within the lease", True, None, now
            )
            return False
        except Exception as exc:
            # A bug in a channel: keep the other rows going; retry this one later.
            # Only the type is logged: an exception's text may quote a payload.
            logger.error("notification %s: channel raised %s", item.id, type(exc).__name__)
            await self._record_failure(
                item, f"channel raised {type(exc).__name__}", True, None, now
            )
            return False
        if await outbox_store.mark_sent(self._pool, item.id, self.worker_id):
            logger.debug(
                "sent notification %s (%s, %s, key %s)",
                item.id,
                item.kind,
                subject(item),
                idempotency_key(item),
            )
            return True
        logger.warning(
            "notification %s was sent, but another worker holds it now and may send it again",
            item.id,
        )
        return False

    async def _record_failure(
        self,
        item: OutboxItem,
        error: str,
        retryable: bool,
        retry_after: float | None,
        now: datetime | None,
    ) -> None:
        retry_at: datetime | None = None
        if retryable and item.attempts < self._max_attempts:
            delay = retry_delay(item.attempts, base=self._retry_base, cap=self._retry_cap)
            if retry_after is not None:
                delay = max(delay, min(timedelta(seconds=retry_after), self._retry_cap))
            retry_at = self._now(now) + delay
        recorded = await outbox_store.mark_failed(
            self._pool, item.id, self.worker_id, error=error, retry_at=retry_at
        )
        if not recorded:
            logger.warning("notification %s failed, but another worker holds it now", item.id)
        elif retry_at is None:
            logger.error(
                "notification %s (%s, %s) failed for good after %s attempts: %s",
                item.id,
                item.kind,
                subject(item),
                item.attempts,
                error,
            )
        else:
            logger.warning(
                "notification %s failed (attempt %s): %s; retrying at %s",
                item.id,
                item.attempts,
                error,
                retry_at.isoformat(),
            )


class BackgroundWorker:
    """An :class:`OutboxWorker` running in a task of the server's event loop.

    The composition root calls ``start(pool)`` once the pool is open and
    ``stop()`` before closing it. The worker owns an aiohttp ClientSession for
    the webhook channel. Not safe to start twice or from two tasks at once.
    """

    def __init__(
        self,
        settings: NotifySettings,
        *,
        worker_id: str | None = None,
        batch: int = DEFAULT_BATCH,
        stop_timeout: float = 5.0,
    ) -> None:
        self._settings = settings
        self.worker_id = worker_id or default_worker_id()
        self._batch = batch
        self._stop_timeout = stop_timeout
        self._stop = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self, pool: asyncpg.Pool) -> None:
        if self._task is not None:
            raise RuntimeError("the notification worker was already started")
        session = aiohttp.ClientSession()
        try:
            channel = create_channel(self._settings, session)
        except BaseException:
            await session.close()
            raise
        self._session = session
        worker = OutboxWorker(
            pool,
            channel,
            worker_id=self.worker_id,
            lease=timedelta(seconds=self._settings.lease_seconds),
            batch=self._batch,
        )
        self._stop.clear()
        self._task = asyncio.create_task(
            worker.run(self._stop, self._settings.poll_interval), name="notification-outbox"
        )
        logger.info(
            "notification worker %s started (channel %s)", self.worker_id, self._settings.channel
        )

    async def stop(self) -> None:
        """Let the batch under way finish (up to ``stop_timeout`` s), then cancel; close all."""
        task, self._task = self._task, None
        if task is not None:
            self._stop.set()
            done, _ = await asyncio.wait({task}, timeout=self._stop_timeout)
            if not done:
                # Rows of the cancelled batch are sent again once their lease expires.
                task.cancel()
                await asyncio.wait({task})
            if not task.cancelled() and (exc := task.exception()) is not None:
                logger.error("notification worker ended with %s", type(exc).__name__)
        session, self._session = self._session, None
        if session is not None:
            await session.close()
