"""Settling payments on the provider's word: credit once, fail, confirm, expire, and
callbacks (service.py explains why a payment is credited exactly once).

A payment's status leaves ``pending`` once, by a conditional UPDATE in the same
transaction as its ledger posting, its invoice's totals and its audit event. A
callback, a poll and a retry racing each other find the row final and change
nothing. Unsigned callbacks (MoMo, M-Pesa) only make us ask the provider (``query``);
a signed one (card) is applied as it is, after its signature, amount and currency
were checked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Literal
from uuid import UUID

import asyncpg

from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.core.errors import ErrorCode, NotFound, Unauthenticated, Unprocessable
from teleconsult.core.identity import Principal
from teleconsult.payments import store
from teleconsult.payments.ledger import accounts
from teleconsult.payments.ledger.store import Posting, post
from teleconsult.payments.providers.base import (
    BadCallback,
    PaymentProvider,
    ProviderError,
    ProviderStatus,
)
from teleconsult.payments.records import Payment

logger = logging.getLogger(__name__)

CallbackOutcome = Literal["applied", "duplicate", "final", "pending", "ignored", "queued"]


def payment_event(
    principal: Principal | None,
    action: str,
    object_type: str,
    object_id: UUID | str,
    *,
    clinic_id: UUID,
    ip: str | None = None,
    outcome: Literal["success", "failure", "denied"] = "success",
    **detail: str | int | None,
) -> AuditEvent:
    facts = {k: v for k, v in detail.items() if v is not None}
    return AuditEvent(
        action=action,
        outcome=outcome,
        actor_id=principal.user_id if principal else None,
        actor_role=principal.role.value if principal else None,
        clinic_id=clinic_id,
        object_type=object_type,
        object_id=str(object_id),
        ip=ip,
        detail=facts,
    )


class Settlement:
    """Safe to call concurrently from any number of processes."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        audit: AuditTrail,
        providers: Mapping[str, PaymentProvider],
        clock: Callable[[], datetime],
    ) -> None:
        self._pool = pool
        self._audit = audit
        self._providers = providers
        self._now = clock

    def provider(self, name: str) -> PaymentProvider:
        found = self._providers.get(name)
        if found is None:
            raise Unprocessable(
                f"no payment provider {name!r} here", code=ErrorCode.PROVIDER_NOT_CONFIGURED
            )
        return found

    async def succeed(
        self,
        conn: asyncpg.Connection,
        payment_id: UUID,
        status: ProviderStatus,
        *,
        principal: Principal | None = None,
        ip: str | None = None,
        source: str = "desk",
    ) -> Payment | None:
        """Inside the caller's transaction: credit a pending payment once."""
        payment = await store.finalize(
            conn,
            payment_id,
            "succeeded",
            reason=None,
            provider_transaction_id=status.transaction_id,
        )
        if payment is None:
            return None
        await store.get_invoice(conn, payment.invoice_id, for_update=True)
        invoice = await store.move_invoice(conn, payment.invoice_id, paid=payment.amount)
        await post(
            conn,
            clinic_id=payment.clinic_id,
            kind="payment",
            currency=payment.currency,
            invoice_id=payment.invoice_id,
            payment_id=payment.id,
            memo=payment.provider_reference,
            created_by=principal.user_id if principal else None,
            postings=[
                Posting(accounts.clearing(payment.provider), payment.amount),
                Posting(accounts.RECEIVABLES, -payment.amount),
            ],
        )
        await self._audit.record(
            payment_event(
                principal, "payment.succeeded", "payment", payment.id,
                clinic_id=payment.clinic_id, ip=ip, patient_id=str(payment.patient_id),
                provider=payment.provider, amount=payment.amount, currency=payment.currency,
                invoice_status=invoice.status, source=source,
            ),
            conn,
        )  # fmt: skip
        return payment

    async def finalize(
        self,
        payment_id: UUID,
        status: ProviderStatus,
        source: str,
        *,
        callback: tuple[str, str, str] | None = None,
    ) -> Payment | None:
        """Apply a trusted final status; None when the payment was final already."""
        if status.state == "pending":
            return None
        async with self._pool.acquire() as conn, conn.transaction():
            current = await store.get_payment(conn, payment_id, for_update=True)
            if current is None or current.status != "pending":
                return None
            if callback is not None and not await store.record_callback(
                conn, *callback, payment_id
            ):
                return None
            if status.state == "succeeded":
                if status.amount is not None and (
                    status.amount != current.amount
                    or (status.currency or current.currency) != current.currency
                ):
                    # The provider collected another amount than we asked for: no credit.
                    status = ProviderStatus("failed", reason="amount_mismatch")
                else:
                    return await self.succeed(conn, payment_id, status, source=source)
            failed = await store.finalize(
                conn,
                payment_id,
                "failed",
                reason=status.reason or "failed",
                provider_transaction_id=status.transaction_id,
            )
            assert failed is not None
            await self._audit.record(
                payment_event(
                    None, "payment.failed", "payment", payment_id,
                    clinic_id=failed.clinic_id, patient_id=str(failed.patient_id),
                    provider=failed.provider, reason=failed.failure_reason, source=source,
                    provider_reason=status.raw_reason,
                ),
                conn,
            )  # fmt: skip
        return failed

    async def confirm(
        self, payment: Payment, *, source: str = "poll", hinted_id: str | None = None
    ) -> Payment | None:
        """Ask the provider about a pending payment and apply a final answer.
        ``hinted_id`` is the transaction id an unsigned callback named (M-Pesa's receipt,
        which the STK query does not give): kept when the provider confirms, as the
        reference a refund's reversal needs.

        Raises ProviderError when the provider cannot say (the caller retries)."""
        if payment.provider_reference is None:
            # Its initiation may still be running (the provider names the reference
            # in its answer): nothing to ask yet. At expiry it fails (``expire``).
            return None
        status = await self.provider(payment.provider).query(payment.provider_reference)
        if status.transaction_id is None and hinted_id is not None:
            status = replace(status, transaction_id=hinted_id)
        return await self.finalize(payment.id, status, source)

    async def expire(self, payment: Payment) -> Payment | None:
        """A payment past its time: confirm with the provider once more; unless it
        succeeded meanwhile, it fails (``expired``, or ``no_reference`` when the
        provider never named one)."""
        if payment.provider_reference is None:
            return await self.finalize(
                payment.id, ProviderStatus("failed", reason="no_reference"), "expiry"
            )
        try:
            changed = await self.confirm(payment, source="expiry")
        except ProviderError:
            return None  # cannot confirm now: keep polling
        if changed is not None:
            return changed
        async with self._pool.acquire() as conn:
            current = await store.get_payment(conn, payment.id)
        if current is None or current.status != "pending":
            return None
        return await self.finalize(payment.id, ProviderStatus("failed", reason="expired"), "expiry")

    async def handle_callback(
        self, provider_name: str, headers: Mapping[str, str], body: bytes, *, ip: str | None
    ) -> CallbackOutcome:
        """A provider's callback or webhook. Signed ones are verified on the raw bytes;
        unsigned ones are hints that make us query the provider. Unknown payments and
        wrong amounts or currencies change nothing and are logged and audited."""
        provider = self._providers.get(provider_name)
        if provider is None or provider_name == "cash":
            raise NotFound("no such payment provider")
        try:
            cb = provider.parse_callback(headers, body)
        except BadCallback as exc:
            logger.warning("payment callback from %s refused: %s", provider_name, exc.reason)
            await self._audit.record(
                AuditEvent(
                    action="payment.callback.refused",
                    outcome="denied",
                    object_type="payment_provider",
                    object_id=provider_name,
                    ip=ip,
                    detail={"reason": exc.reason[:200]},
                )
            )
            if exc.signature:
                raise Unauthenticated(
                    "the webhook's signature does not verify", code=ErrorCode.BAD_WEBHOOK_SIGNATURE
                ) from None
            raise Unprocessable(f"unreadable callback: {exc.reason}") from None
        payment = await store.payment_by_reference(self._pool, provider_name, cb.reference)
        problem = None
        if payment is None:
            problem = "unknown_reference"
        elif cb.amount is not None and (
            cb.amount != payment.amount or (cb.currency or payment.currency) != payment.currency
        ):
            problem = "amount_mismatch"
        if problem is not None:
            logger.warning("payment callback from %s ignored: %s", provider_name, problem)
            await self._audit.record(
                AuditEvent(
                    action="payment.callback.ignored",
                    outcome="denied",
                    clinic_id=payment.clinic_id if payment else None,
                    object_type="payment" if payment else "payment_provider",
                    object_id=str(payment.id) if payment else provider_name,
                    ip=ip,
                    detail={"reason": problem, "reference": cb.reference[:200]},
                )
            )
            return "ignored"
        assert payment is not None
        if payment.status != "pending":
            return "final"
        if cb.verified:
            done = await self.finalize(
                payment.id,
                ProviderStatus(
                    cb.state, cb.amount, cb.currency, cb.reason, cb.transaction_id, cb.raw_reason
                ),
                "webhook",
                callback=(provider_name, cb.reference, cb.event),
            )
            return "applied" if done is not None else "duplicate"
        try:
            done = await self.confirm(payment, source="callback", hinted_id=cb.transaction_id)
        except ProviderError:
            async with self._pool.acquire() as conn:
                await store.poll_soon(conn, payment.id, self._now())
            return "queued"
        return "applied" if done is not None else "pending"
