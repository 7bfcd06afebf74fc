"""What every simulator shares: the payer's decision, misbehaviour, callbacks, truth."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import aiohttp
from aiohttp import web

logger = logging.getLogger(__name__)


@dataclass
class Behaviour:
    """How a simulator (mis)behaves. Probabilities are 0..1; times are seconds."""

    # The payer answers this long after the request (uniformly up to 2x).
    decide_after: float = 0.05
    fail_rate: float = 0.0  # the payer declines (or has too little money)
    timeout_rate: float = 0.0  # the payer never answers: the provider times it out
    callback_delay: float = 0.0  # extra delay before a callback (uniformly up to 2x)
    drop_rate: float = 0.0  # a callback is never sent
    duplicate_rate: float = 0.0  # a callback is sent twice (the copy later)
    reorder_rate: float = 0.0  # a callback is held back long, arriving after later ones
    forge_rate: float = 0.0  # also send a forged callback (bad signature, amount, reference)
    api_error_rate: float = 0.0  # the API answers 500 (nothing done)
    api_slow_rate: float = 0.0  # the API answers after ``api_slow_seconds`` (done anyway)
    api_slow_seconds: float = 30.0
    refund_fail_rate: float = 0.0  # a refund payout fails at the provider
    refund_answer_lost_rate: float = 0.0  # a refund is done, but its answer is a 500
    seed: int | None = None

    def update(self, values: dict[str, Any]) -> None:
        names = {f.name for f in fields(self)}
        for key, value in values.items():
            if key not in names:
                raise ValueError(f"unknown behaviour {key!r}")
            setattr(self, key, value)


@dataclass
class Txn:
    """One payment as the provider knows it (the ground truth)."""

    reference: str
    amount: int  # minor units
    currency: str
    payer: str
    callback_url: str | None
    outcome: str  # succeeded | failed | timeout (decided at creation, revealed later)
    decide_at: float
    extra: dict[str, Any] = field(default_factory=dict)
    callbacks_sent: int = 0

    def state(self, now: float | None = None) -> str:
        """pending until the payer answers; then succeeded or failed (timeout: failed)."""
        if (now or time.monotonic()) < self.decide_at:
            return "pending"
        return "succeeded" if self.outcome == "succeeded" else "failed"


class Simulator:
    """Base of the three simulators: keeps the truth and sends callbacks."""

    name = "sim"

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.rng = random.Random(self.behaviour.seed)
        self.truth: dict[str, Txn] = {}
        # Refund payouts: the money sent back to payers (reference -> its Txn, whose
        # ``payer`` is the refunded payment's reference).
        self.refunds: dict[str, Txn] = {}
        self.forged_sent = 0
        self.callbacks_sent = 0
        self.callbacks_dropped = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def new_txn(
        self, reference: str, amount: int, currency: str, payer: str, callback_url: str | None
    ) -> Txn:
        b = self.behaviour
        roll = self.rng.random()
        outcome = (
            "failed"
            if roll < b.fail_rate
            else "timeout"
            if roll < b.fail_rate + b.timeout_rate
            else "succeeded"
        )
        txn = Txn(
            reference=reference,
            amount=amount,
            currency=currency,
            payer=payer,
            callback_url=callback_url,
            outcome=outcome,
            decide_at=time.monotonic() + b.decide_after * self.rng.uniform(0.5, 2.0),
        )
        self.truth[reference] = txn
        self.spawn(self._callback_when_decided(txn))
        return txn

    def new_refund(
        self, reference: str, amount: int, currency: str, of: Txn, callback_url: str | None
    ) -> Txn:
        """A refund of ``of``: decided like a payment (``refund_fail_rate``); its
        callback (``refund_callback_for``) goes to ``callback_url``."""
        b = self.behaviour
        refund = Txn(
            reference=reference,
            amount=amount,
            currency=currency,
            payer=of.reference,
            callback_url=callback_url,
            outcome="failed" if self.chance(b.refund_fail_rate) else "succeeded",
            decide_at=time.monotonic() + b.decide_after * self.rng.uniform(0.5, 2.0),
        )
        self.refunds[reference] = refund
        self.spawn(self._callback_when_decided(refund, self.refund_callback_for))
        return refund

    def refundable(self, of: Txn) -> int:
        """What may still be refunded of a payment (succeeded ones, less refunds)."""
        if of.state() != "succeeded":
            return 0
        done = sum(
            r.amount
            for r in self.refunds.values()
            if r.payer == of.reference and r.outcome == "succeeded"
        )
        return of.amount - done

    def refund_answer_lost(self) -> bool:
        return self.chance(self.behaviour.refund_answer_lost_rate)

    def refund_callback_for(self, refund: Txn) -> tuple[str, bytes, dict[str, str]] | None:
        return None

    def api_fails(self) -> bool:
        """True: answer 500 now, having done nothing."""
        return self.chance(self.behaviour.api_error_rate)

    async def answer_late(self) -> None:
        """Sometimes answer only after ``api_slow_seconds``, the work being done already
        (as a provider whose answer is slow or lost after it processed the request)."""
        if self.chance(self.behaviour.api_slow_rate):
            await asyncio.sleep(self.behaviour.api_slow_seconds)

    async def api_misbehaves(self) -> bool:
        """For reads: True to answer 500; slow answers sleep here first."""
        if self.api_fails():
            return True
        await self.answer_late()
        return False

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _callback_when_decided(
        self,
        txn: Txn,
        message_of: Callable[[Txn], tuple[str, bytes, dict[str, str]] | None] | None = None,
    ) -> None:
        await asyncio.sleep(max(0.0, txn.decide_at - time.monotonic()))
        if txn.callback_url is None:
            return
        b = self.behaviour
        if self.chance(b.drop_rate):
            self.callbacks_dropped += 1
        else:
            delay = b.callback_delay * self.rng.uniform(0.5, 2.0)
            if self.chance(b.reorder_rate):
                delay += max(1.0, 4 * b.callback_delay)
            message = (message_of or self.callback_for)(txn)
            if message is not None:
                self.spawn(self._send_later(txn, delay, message))
                if self.chance(b.duplicate_rate):
                    self.spawn(self._send_later(txn, delay + self.rng.uniform(0.05, 1.0), message))
        if message_of is None and self.chance(b.forge_rate):
            self.forged_sent += 1
            self.spawn(self._send_later(txn, self.rng.uniform(0.0, 0.5), self.forged_for(txn)))

    async def _send_later(
        self, txn: Txn, delay: float, message: tuple[str, bytes, dict[str, str]]
    ) -> None:
        await asyncio.sleep(delay)
        if txn.callback_url is None:
            return
        method, body, headers = message
        session = await self._http()
        for attempt in range(3):
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.request(
                    method, txn.callback_url, data=body,
                    headers={"Content-Type": "application/json"} | headers,
                ) as resp:  # fmt: skip
                    await resp.read()
                    txn.callbacks_sent += 1
                    self.callbacks_sent += 1
                    if resp.status < 500:
                        return
            await asyncio.sleep(0.2 * (attempt + 1))

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self._session

    def app(self) -> web.Application:
        raise NotImplementedError

    def callback_for(self, txn: Txn) -> tuple[str, bytes, dict[str, str]] | None:
        raise NotImplementedError

    def forged_for(self, txn: Txn) -> tuple[str, bytes, dict[str, str]]:
        raise NotImplementedError

    def forgery_kind(self) -> str:
        return self.rng.choice(("signature", "amount", "reference"))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._session is not None:
            await self._session.close()

    def final_states(self) -> dict[str, str]:
        now = time.monotonic()
        return {ref: txn.state(now) for ref, txn in self.truth.items()}


def json_error(status: int, body: dict[str, Any]) -> web.Response:
    return web.json_response(body, status=status)


async def authed_json(
    request: web.Request, refused: web.Response | None, invalid: Callable[[], web.Response]
) -> dict[str, Any] | web.Response:
    """The request's JSON object, or ``refused`` (its credentials' refusal, if any) or
    ``invalid()`` (the body is not a JSON object), as the provider answers them."""
    if refused is not None:
        return refused
    try:
        body = await request.json()
    except ValueError:
        return invalid()
    return body if isinstance(body, dict) else invalid()


Factory = Callable[[], Simulator]
