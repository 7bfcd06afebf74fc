"""Refund payouts: a refund's money goes back through the provider that took the
payment (MTN MoMo refund, M-Pesa reversal, card gateway refund) or from the till.

A refund is saved with its first payout in one transaction (the ledger moves the
amount from ``refunds`` to ``refunds_payable``: owed back to the patient), then the
provider is called. The payout's reference is chosen before calling where the provider
lets us (MoMo), found again by our id where it does not (card: ``merchant_note``), or
saved from the answer (M-Pesa's ConversationID). A payout leaves ``pending`` once, by a
conditional UPDATE in the same transaction as its ledger entry (``refunds_payable``
against the provider's clearing account or ``cash``) and its audit event. A failed
payout posts nothing: the amount stays payable, and the front desk retries it or pays
it from the till. The reconciler settles payouts whose answer or callback was lost.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Literal, cast
from uuid import UUID, uuid4

import asyncpg

from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.core.errors import (
    Conflict,
    ErrorCode,
    NotFound,
    Unauthenticated,
    Unprocessable,
)
from teleconsult.core.identity import Principal
from teleconsult.core.payment_settings import PaymentSettings
from teleconsult.payments import payout_store, store
from teleconsult.payments.ledger import accounts
from teleconsult.payments.ledger.store import Posting, post, transaction_of
from teleconsult.payments.providers.base import (
    BadCallback,
    PaymentProvider,
    PayoutLookup,
    PayoutRequest,
    ProviderError,
    ProviderRefused,
    ProviderStatus,
    RefundPayer,
)
from teleconsult.payments.providers.card import is_refund_event
from teleconsult.payments.records import Payment, Payout, Refund, scoped
from teleconsult.payments.settlement import CallbackOutcome, payment_event

logger = logging.getLogger(__name__)

PayoutMethod = Literal["provider", "cash"]


class RefundPayouts:
    """Safe to call concurrently from any number of processes (see the module doc)."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        audit: AuditTrail,
        providers: Mapping[str, PaymentProvider],
        settings: PaymentSettings,
        clock: Callable[[], datetime],
    ) -> None:
        self._pool = pool
        self._audit = audit
        self._providers = providers
        self._settings = settings
        self._now = clock

    def _payer(self, name: str) -> RefundPayer:
        found = self._providers.get(name)
        if found is None or not hasattr(found, "refund"):
            raise Unprocessable(
                f"{name!r} cannot pay a refund out here: pay it from the till (cash)",
                code=ErrorCode.PROVIDER_NOT_CONFIGURED,
            )
        return cast(RefundPayer, found)

    def result_url(self, provider: str, payout_id: UUID) -> str:
        token = self._payer(provider).result_token(payout_id)
        base = self._settings.callback_base_url
        return f"{base}/api/v1/webhooks/refunds/{provider}/{payout_id}/{token}"

    def _request(self, payout: Payout, payment: Payment, reason: str) -> PayoutRequest:
        return PayoutRequest(
            payout_id=payout.id,
            amount=payout.amount,
            currency=payout.currency,
            payment_reference=payment.provider_reference or "",
            payment_transaction_id=payment.provider_transaction_id,
            reason=reason,
            result_url=self.result_url(payout.method, payout.id),
        )

    # --- refunding ----------------------------------------------------------------------

    async def refund(
        self,
        principal: Principal,
        payment_id: UUID,
        *,
        amount: int | None,
        reason: str,
        method: PayoutMethod,
        ip: str | None,
    ) -> tuple[Payment, Refund]:
        """Refund all or part of a succeeded payment and pay it out (see the module doc)."""
        async with self._pool.acquire() as conn, conn.transaction():
            payment = scoped(
                principal, await store.get_payment(conn, payment_id, for_update=True), "payment"
            )
            left = payment.amount - payment.refunded
            value = left if amount is None else amount
            if payment.status != "succeeded" or value <= 0 or value > left:
                raise Conflict(
                    f"can refund at most {max(left, 0) if payment.status == 'succeeded' else 0}",
                    code=ErrorCode.NOT_PAYABLE,
                )
            via = "cash" if method == "cash" else payment.provider
            payout_id = uuid4()
            if via != "cash":
                self._check(via, payout_id, payment, value, reason)
            refunded = await store.add_refund(conn, payment_id, value)
            assert refunded is not None
            await store.get_invoice(conn, payment.invoice_id, for_update=True)
            invoice = await store.move_invoice(conn, payment.invoice_id, refunded=value)
            original = await transaction_of(conn, kind="payment", payment_id=payment_id)
            refund_id = await post(
                conn,
                clinic_id=payment.clinic_id,
                kind="refund",
                currency=payment.currency,
                invoice_id=payment.invoice_id,
                payment_id=payment_id,
                reverses=original,
                memo=reason[:500],
                created_by=principal.user_id,
                postings=[
                    Posting(accounts.REFUNDS, value),
                    Posting(accounts.REFUNDS_PAYABLE, -value),
                ],
            )
            await self._audit.record(
                payment_event(
                    principal, "payment.refund", "payment", payment_id,
                    clinic_id=payment.clinic_id, ip=ip, patient_id=str(payment.patient_id),
                    amount=value, currency=payment.currency, invoice_status=invoice.status,
                    payout=via,
                ),
                conn,
            )  # fmt: skip
            payout = await self._open(conn, payout_id, refund_id, payment, via, value, principal)
            if via == "cash":
                await self._settle(conn, payout, ProviderStatus("succeeded"), "desk", principal, ip)
        if via != "cash":
            await self._send(payout, payment, reason)
        async with self._pool.acquire() as conn:
            found = await store.get_refund(conn, refund_id)
        assert found is not None
        return refunded, found

    def _check(self, via: str, payout_id: UUID, payment: Payment, value: int, reason: str) -> None:
        """What the provider would refuse is refused before anything is saved."""
        request = PayoutRequest(
            payout_id=payout_id, amount=value, currency=payment.currency,
            payment_reference=payment.provider_reference or "",
            payment_transaction_id=payment.provider_transaction_id, reason=reason,
            result_url=self.result_url(via, payout_id),
        )  # fmt: skip
        try:
            self._payer(via).check_payout(request)
        except ProviderRefused as exc:
            raise Unprocessable(
                f"the provider would refuse the refund: {exc.reason}; pay it from the till",
                code=ErrorCode.PROVIDER_REFUSED,
            ) from None

    async def _open(
        self,
        conn: asyncpg.Connection,
        payout_id: UUID,
        refund_id: UUID,
        payment: Payment,
        via: str,
        value: int,
        principal: Principal,
    ) -> Payout:
        now = self._now()
        try:
            return await payout_store.insert_payout(
                conn,
                payout_id=payout_id,
                refund_id=refund_id,
                payment=payment,
                method=via,
                amount=value,
                provider_reference=(
                    None if via == "cash" else self._payer(via).payout_reference_for(payout_id)
                ),
                created_by=principal.user_id,
                expires_at=now + timedelta(seconds=self._settings.pending_timeout),
                next_poll_at=now + timedelta(seconds=self._settings.poll_interval),
            )
        except payout_store.PayoutInProgress:
            raise Conflict(
                "this refund is being paid out or was paid out already",
                code=ErrorCode.PAYMENT_IN_PROGRESS,
            ) from None

    async def retry(
        self, principal: Principal, refund_id: UUID, *, method: PayoutMethod, ip: str | None
    ) -> Refund:
        """Pay out a refund whose last payout failed: through the provider again, or
        from the till (``cash``: paid at once)."""
        async with self._pool.acquire() as conn, conn.transaction():
            refund = await store.get_refund(conn, refund_id)
            payment = scoped(
                principal,
                await store.get_payment(conn, refund.payment_id) if refund else None,
                "refund",
            )
            assert refund is not None
            if refund.payout_status in ("pending", "succeeded") or refund.payout_status is None:
                raise Conflict(
                    "this refund is being paid out or was paid out already",
                    code=ErrorCode.PAYMENT_IN_PROGRESS,
                )
            via = "cash" if method == "cash" else payment.provider
            payout_id = uuid4()
            if via != "cash":
                self._check(via, payout_id, payment, refund.amount, refund.reason)
            payout = await self._open(
                conn, payout_id, refund_id, payment, via, refund.amount, principal
            )
            await self._audit.record(
                payment_event(
                    principal, "payment.refund.retry", "payment", payment.id,
                    clinic_id=payment.clinic_id, ip=ip, patient_id=str(payment.patient_id),
                    refund_id=str(refund_id), payout=via,
                ),
                conn,
            )  # fmt: skip
            if via == "cash":
                await self._settle(conn, payout, ProviderStatus("succeeded"), "desk", principal, ip)
        if via != "cash":
            await self._send(payout, payment, refund.reason)
        async with self._pool.acquire() as conn:
            found = await store.get_refund(conn, refund_id)
        assert found is not None
        return found

    async def _send(self, payout: Payout, payment: Payment, reason: str) -> None:
        """Call the provider. Its refusal fails the payout (still owed); no answer leaves
        it pending for the reconciler, which asks by the reference or our id."""
        try:
            started = await self._payer(payout.method).refund(
                self._request(payout, payment, reason)
            )
        except ProviderRefused as exc:
            await self.finalize(
                payout.id,
                ProviderStatus("failed", reason="declined", raw_reason=exc.reason),
                "send",
            )
            return
        except ProviderError:
            logger.warning("payout %s: %s did not answer", payout.id, payout.method)
            return
        except Exception:
            logger.exception("payout %s: calling %s failed", payout.id, payout.method)
            return
        if started.reference is not None:
            try:
                async with self._pool.acquire() as conn:
                    await payout_store.set_reference(
                        conn, payout.id, started.reference, started.originator_reference
                    )
            except Exception:
                logger.exception("payout %s: its reference was not saved", payout.id)

    # --- settling ------------------------------------------------------------------------

    async def _settle(
        self,
        conn: asyncpg.Connection,
        payout: Payout,
        status: ProviderStatus,
        source: str,
        principal: Principal | None = None,
        ip: str | None = None,
    ) -> Payout | None:
        """Inside the caller's transaction: a pending payout becomes final once."""
        done = await payout_store.finalize(
            conn,
            payout.id,
            "succeeded" if status.state == "succeeded" else "failed",
            reason=None if status.state == "succeeded" else (status.reason or "declined"),
            provider_transaction_id=status.transaction_id,
        )
        if done is None:
            return None
        if done.status == "succeeded":
            await post(
                conn,
                clinic_id=done.clinic_id,
                kind="payout",
                currency=done.currency,
                invoice_id=done.invoice_id,
                payment_id=done.payment_id,
                reverses=done.refund_id,
                memo=done.provider_reference,
                created_by=principal.user_id if principal else None,
                payout_id=done.id,
                postings=[
                    Posting(accounts.REFUNDS_PAYABLE, done.amount),
                    Posting(accounts.clearing(done.method), -done.amount),
                ],
            )
        await self._audit.record(
            payment_event(
                principal, f"payment.payout.{done.status}", "payment", done.payment_id,
                clinic_id=done.clinic_id, ip=ip, patient_id=str(done.patient_id),
                payout_id=str(done.id), method=done.method, amount=done.amount,
                currency=done.currency, reason=done.failure_reason, source=source,
                provider_reason=status.raw_reason,
            ),
            conn,
        )  # fmt: skip
        return done

    async def finalize(self, payout_id: UUID, status: ProviderStatus, source: str) -> Payout | None:
        """Apply a final status; None when it is pending or the payout was final already."""
        if status.state == "pending":
            return None
        async with self._pool.acquire() as conn, conn.transaction():
            current = await payout_store.get_payout(conn, payout_id, for_update=True)
            if current is None or current.status != "pending":
                return None
            return await self._settle(conn, current, status, source)

    def _lookup(self, payout: Payout, payment_reference: str, receipt: str | None) -> PayoutLookup:
        return PayoutLookup(
            payout_id=payout.id,
            reference=payout.provider_reference,
            originator_reference=payout.originator_reference,
            payment_reference=payment_reference,
            payment_transaction_id=receipt,
            result_url=self.result_url(payout.method, payout.id),
        )

    async def confirm(self, payout: Payout, *, source: str = "poll") -> Payout | None:
        """Ask the provider about a pending payout; apply a final answer (ProviderError
        when it cannot say)."""
        async with self._pool.acquire() as conn:
            payment = await store.get_payment(conn, payout.payment_id)
        assert payment is not None
        lookup = self._lookup(
            payout, payment.provider_reference or "", payment.provider_transaction_id
        )
        status = await self._payer(payout.method).query_refund(lookup)
        if status.state == "pending" or payout.provider_reference is not None:
            return await self.finalize(payout.id, status, source)
        # The answer to our call was lost (card): the provider named its id since.
        if status.transaction_id is not None:
            async with self._pool.acquire() as conn:
                await payout_store.set_reference(conn, payout.id, status.transaction_id, None)
        return await self.finalize(payout.id, status, source)

    async def expire(self, payout: Payout) -> Payout | None:
        """A payout past its time: ask once more; unless it succeeded, it failed
        (``expired``, or ``no_reference`` when the provider never named one): still owed."""
        try:
            changed = await self.confirm(payout, source="expiry")
        except ProviderError:
            return None
        if changed is not None:
            return changed
        reason = "expired" if payout.provider_reference is not None else "no_reference"
        return await self.finalize(payout.id, ProviderStatus("failed", reason=reason), "expiry")

    # --- callbacks -----------------------------------------------------------------------

    async def _refused(self, provider: str, reason: str, ip: str | None) -> None:
        logger.warning("refund callback from %s refused: %s", provider, reason)
        await self._audit.record(
            AuditEvent(
                action="payment.payout.callback.refused", outcome="denied",
                object_type="payment_provider", object_id=provider, ip=ip,
                detail={"reason": reason[:200]},
            )
        )  # fmt: skip

    async def handle_result(
        self,
        provider: str,
        payout_id: UUID,
        token: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        ip: str | None,
    ) -> CallbackOutcome:
        """A payout's result at the URL we gave the provider: its secret token is checked
        first (a forged or guessed URL changes nothing: 404). M-Pesa's result is applied
        as it is (Daraja has no synchronous query); MoMo's only makes us ask."""
        if provider not in ("momo", "mpesa") or provider not in self._providers:
            raise NotFound("no such payout callback")
        expected = self._payer(provider).result_token(payout_id)
        if not hmac.compare_digest(expected.encode(), token.encode()):
            await self._refused(provider, "bad result token", ip)
            raise NotFound("no such payout callback")
        async with self._pool.acquire() as conn:
            payout = await payout_store.get_payout(conn, payout_id)
        if payout is None or payout.method != provider:
            await self._refused(provider, "unknown payout", ip)
            raise NotFound("no such payout callback")
        try:
            cb = self._payer(provider).parse_refund_callback(headers, body)
        except BadCallback as exc:
            await self._refused(provider, exc.reason, ip)
            raise Unprocessable(f"unreadable callback: {exc.reason}") from None
        if payout.status != "pending":
            return "final"
        if not cb.trusted:
            return await self._hint(payout)
        if cb.state == "pending":
            return "pending"
        if payout.provider_reference is None:  # the call's answer was lost; the result names it
            async with self._pool.acquire() as conn:
                await payout_store.set_reference(
                    conn, payout.id, cb.reference, cb.originator_reference
                )
        done = await self.finalize(
            payout.id,
            ProviderStatus(cb.state, cb.amount, None, cb.reason, cb.transaction_id, cb.raw_reason),
            "callback",
        )
        return "applied" if done is not None else "duplicate"

    async def _hint(self, payout: Payout) -> CallbackOutcome:
        try:
            done = await self.confirm(payout, source="callback")
        except ProviderError:
            async with self._pool.acquire() as conn:
                await store.poll_soon(conn, payout.id, self._now(), table="refund_payouts")
            return "queued"
        return "applied" if done is not None else "pending"

    def is_card_refund(self, provider: str, body: bytes) -> bool:
        return provider == "card" and provider in self._providers and is_refund_event(body)

    async def handle_card_webhook(
        self, headers: Mapping[str, str], body: bytes, *, ip: str | None
    ) -> CallbackOutcome:
        """The gateway's signed ``refund.*`` webhook: makes us read the refund."""
        try:
            cb = self._payer("card").parse_refund_callback(headers, body)
        except BadCallback as exc:
            await self._refused("card", exc.reason, ip)
            if exc.signature:
                raise Unauthenticated(
                    "the webhook's signature does not verify", code=ErrorCode.BAD_WEBHOOK_SIGNATURE
                ) from None
            raise Unprocessable(f"unreadable callback: {exc.reason}") from None
        async with self._pool.acquire() as conn:
            payout = await payout_store.payout_by_reference(conn, "card", cb.reference)
        if payout is None:
            await self._refused("card", "unknown refund", ip)
            return "ignored"
        if payout.status != "pending":
            return "final"
        return await self._hint(payout)

    async def owed(self, principal: Principal, *, limit: int) -> list[Refund]:
        async with self._pool.acquire() as conn:
            return await store.refunds_owed(conn, principal.clinic_id, limit)
