"""The reconciler: polls every pending payment until it is final.

Same lease pattern as the notification outbox (notifications/worker.py): a worker
claims due pending payments with ``FOR UPDATE SKIP LOCKED`` and leases them until
``now + lease``; a worker that dies holds them only until the lease runs out, and
any worker (in any server process, or a restarted one) claims them again. Polling
twice is harmless: a final payment does not change again (service.py).

Each claimed payment is asked about (the provider's status query); a final answer
is applied, otherwise the next poll is set with backoff (``poll_interval`` doubling
up to ``poll_max_interval``). Past ``expires_at`` the payment is confirmed once more
and, unless it succeeded, marked failed (``expired``). The same loop sweeps
idempotency keys past their 24 h.

Refund payouts (payouts.py) are reconciled the same way, from their own table: each
pending payout is asked about (MoMo's refund status, the card gateway's refund, or
Daraja's Transaction Status query, whose answer comes as a result callback) until it
is final; past its ``expires_at`` it fails and stays owed to the patient.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from datetime import UTC, datetime, timedelta

import asyncpg

from teleconsult.core.payment_settings import PaymentSettings
from teleconsult.core.tasks import cancel_and_wait
from teleconsult.payments import payout_store, store
from teleconsult.payments.idempotency import IdempotencyKeys
from teleconsult.payments.providers.base import ProviderError
from teleconsult.payments.records import Payment, Payout
from teleconsult.payments.service import PaymentService

logger = logging.getLogger(__name__)
BATCH = 50
SWEEP_EVERY = 300.0


def _now() -> datetime:
    return datetime.now(UTC)


class Reconciler:
    """One task per process; several processes share the work through leases."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        service: PaymentService,
        settings: PaymentSettings,
        *,
        keys: IdempotencyKeys | None = None,
        worker_id: str | None = None,
    ) -> None:
        self._pool = pool
        self._service = service
        self._settings = settings
        self._keys = keys
        self.worker_id = worker_id or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        )
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def _backoff(self, polls: int) -> timedelta:
        base = self._settings.poll_interval
        seconds = min(self._settings.poll_max_interval, base * 2 ** min(max(polls - 1, 0), 20))
        return timedelta(seconds=seconds)

    async def _one(self, item: Payment | Payout, now: datetime) -> None:
        """Ask about one claimed payment or payout; give it back with backoff unless final."""
        kind, table = (
            ("payout", "refund_payouts") if isinstance(item, Payout) else ("payment", "payments")
        )
        try:
            if isinstance(item, Payout):
                payouts = self._service.payouts
                expired = now >= item.expires_at
                done: object = await (payouts.expire(item) if expired else payouts.confirm(item))
            else:
                expired = now >= item.expires_at
                service = self._service
                done = await (service.expire(item) if expired else service.confirm(item))
        except ProviderError as exc:
            logger.info("%s %s: provider did not say (%s)", kind, item.id, exc)
            done = None
        except Exception:
            logger.exception("%s %s: reconciling failed", kind, item.id)
            done = None
        if done is None:
            async with self._pool.acquire() as conn:
                await store.release(
                    conn, item.id, self.worker_id, _now() + self._backoff(item.polls), table=table
                )

    async def run_once(self, now: datetime | None = None) -> int:
        """Claim and poll one batch of payments and one of payouts; returns how many
        were claimed."""
        now = now or _now()
        lease = self._settings.lease_seconds
        async with self._pool.acquire() as conn:
            claimed = await store.claim_pending(
                conn, worker_id=self.worker_id, now=now, lease_seconds=lease, batch=BATCH
            )
            payouts = await payout_store.claim_pending(
                conn, worker_id=self.worker_id, now=now, lease_seconds=lease, batch=BATCH
            )
        if claimed or payouts:
            async with asyncio.timeout(self._settings.lease_seconds * 0.8):
                await asyncio.gather(
                    *(self._one(p, now) for p in claimed),
                    *(self._one(p, now) for p in payouts),
                )
        return len(claimed) + len(payouts)

    async def _run(self) -> None:
        idle = min(self._settings.poll_interval, 1.0)
        last_sweep = 0.0
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            claimed = 0
            try:
                claimed = await self.run_once()
                if self._keys is not None and loop.time() - last_sweep > SWEEP_EVERY:
                    last_sweep = loop.time()
                    await self._keys.sweep()
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                logger.warning("reconciler: a round failed; trying again", exc_info=True)
            if claimed < BATCH:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(idle):
                        await self._stop.wait()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="payments-reconciler")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
