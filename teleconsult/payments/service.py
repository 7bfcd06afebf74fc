"""The payments domain: invoices, payments through providers, cash, refunds, waivers,
the consultation gate, and the ledger's reports. No HTTP here.

Exactly once: a payment's status leaves ``pending`` once, by a conditional UPDATE
in the same transaction as its ledger posting, its invoice's totals and its audit
event (store.finalize). A callback, a poll and a retry racing each other find the
row final and change nothing. Unsigned callbacks (MoMo, M-Pesa) only make us ask
the provider (``query``); a signed one (card) is applied as it is, after its
signature, amount and currency were checked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import asyncpg

from teleconsult.audit import AuditEvent, AuditTrail
from teleconsult.core.errors import (
    ClientError,
    Conflict,
    ErrorCode,
    FieldError,
    PaymentRequired,
    Unavailable,
    Unprocessable,
)
from teleconsult.core.identity import Principal, Role
from teleconsult.core.payment_settings import PaymentSettings
from teleconsult.payments import store
from teleconsult.payments.ledger import accounts
from teleconsult.payments.ledger.store import Balance, Posting, post, trial_balance
from teleconsult.payments.payouts import PayoutMethod, RefundPayouts
from teleconsult.payments.providers.base import (
    Initiation,
    PaymentProvider,
    ProviderError,
    ProviderRefused,
    ProviderStatus,
)
from teleconsult.payments.records import (
    ClinicPaymentSettings,
    Gate,
    Invoice,
    InvoiceStatus,
    Payment,
    PaymentDue,
    Refund,
    scoped,
)
from teleconsult.payments.reports import Reconciliation, reconcile
from teleconsult.payments.settlement import CallbackOutcome, Settlement, payment_event

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class PaymentService:
    """Safe to call concurrently from any number of processes (see the module doc)."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        audit: AuditTrail,
        providers: Mapping[str, PaymentProvider],
        settings: PaymentSettings,
        clock: Clock = utc_now,
    ) -> None:
        self._pool = pool
        self._audit = audit
        self._providers = dict(providers)
        self._settings = settings
        self._now = clock
        self._settle = Settlement(pool=pool, audit=audit, providers=self._providers, clock=clock)
        self.payouts = RefundPayouts(
            pool=pool, audit=audit, providers=self._providers, settings=settings, clock=clock
        )

    @property
    def provider_names(self) -> list[str]:
        return sorted(self._providers)

    def provider(self, name: str) -> PaymentProvider:
        found = self._providers.get(name)
        if found is None:
            raise Unprocessable(
                f"no payment provider {name!r} here; configured: {', '.join(self.provider_names)}",
                code=ErrorCode.PROVIDER_NOT_CONFIGURED,
            )
        return found

    def callback_url(self, provider: str) -> str:
        return f"{self._settings.callback_base_url}/api/v1/webhooks/payments/{provider}"

    # --- reading ----------------------------------------------------------------------

    _event = staticmethod(payment_event)

    async def get_invoice(
        self, principal: Principal, invoice_id: UUID, *, ip: str | None
    ) -> tuple[Invoice, list[Payment], list[Refund]]:
        """The invoice with its payments and its refunds (amount, reason, who, when)."""
        async with self._pool.acquire() as conn, conn.transaction():
            invoice = scoped(principal, await store.get_invoice(conn, invoice_id), "invoice")
            payments = await store.payments_of_invoice(conn, invoice_id)
            refunds = await store.refunds_of_invoice(conn, invoice_id) if invoice.refunded else []
            await self._audit.record(
                self._event(
                    principal, "invoice.read", "invoice", invoice.id,
                    clinic_id=invoice.clinic_id, ip=ip, patient_id=str(invoice.patient_id),
                ),
                conn,
            )  # fmt: skip
        return invoice, payments, refunds

    async def invoice_of_appointment(
        self, principal: Principal, appointment_id: UUID, *, ip: str | None
    ) -> tuple[Invoice, list[Payment], list[Refund]]:
        async with self._pool.acquire() as conn:
            invoice = await store.invoice_for_appointment(conn, appointment_id)
        invoice = scoped(principal, invoice, "invoice")
        return await self.get_invoice(principal, invoice.id, ip=ip)

    async def list_invoices(
        self,
        principal: Principal,
        *,
        patient_id: UUID | None,
        status: InvoiceStatus | None,
        after: tuple[datetime, UUID] | None,
        limit: int,
        ip: str | None,
        starts_from: datetime | None = None,
        starts_before: datetime | None = None,
    ) -> list[Invoice]:
        """A patient's own invoices, or the front desk's clinic's (optionally one patient's,
        or those whose appointment starts in ``[starts_from, starts_before)``)."""
        if principal.role is Role.PATIENT:
            if patient_id not in (None, principal.user_id):
                return []
            patient_id = principal.user_id
        async with self._pool.acquire() as conn, conn.transaction():
            found = await store.list_invoices(
                conn,
                clinic_id=principal.clinic_id,
                patient_id=patient_id,
                status=status,
                after=after,
                limit=limit,
                starts_from=starts_from,
                starts_before=starts_before,
            )
            await self._audit.record(
                AuditEvent.by(
                    principal, "invoice.list", "invoice_list", ip=ip,
                    detail={"results": len(found)},
                ),
                conn,
            )  # fmt: skip
        return found

    async def get_payment(
        self, principal: Principal, payment_id: UUID, *, ip: str | None
    ) -> Payment:
        async with self._pool.acquire() as conn, conn.transaction():
            payment = scoped(principal, await store.get_payment(conn, payment_id), "payment")
            await self._audit.record(
                self._event(
                    principal, "payment.read", "payment", payment.id,
                    clinic_id=payment.clinic_id, ip=ip, patient_id=str(payment.patient_id),
                ),
                conn,
            )  # fmt: skip
        return payment

    # --- clinic settings --------------------------------------------------------------

    async def settings_of(self, principal: Principal) -> ClinicPaymentSettings:
        return await store.get_settings(self._pool, principal.clinic_id)

    async def put_settings(
        self,
        principal: Principal,
        *,
        gate: Gate,
        tax_label: str | None,
        tax_rate_bp: int,
        ip: str | None,
    ) -> ClinicPaymentSettings:
        if tax_rate_bp and not tax_label:
            raise Unprocessable(
                "a tax needs a label", fields=[FieldError("body.tax_label", "required")]
            )
        wanted = ClinicPaymentSettings(principal.clinic_id, gate, tax_label, tax_rate_bp)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.put_settings(conn, wanted)
            await self._audit.record(
                AuditEvent.by(
                    principal, "payment.settings.update", "clinic", principal.clinic_id, ip=ip,
                    detail={"gate": gate, "tax_rate_bp": tax_rate_bp},
                ),
                conn,
            )  # fmt: skip
        return wanted

    # --- paying -----------------------------------------------------------------------

    async def start_payment(
        self,
        principal: Principal,
        invoice_id: UUID,
        *,
        provider_name: str,
        payer: str | None,
        ip: str | None,
    ) -> Payment:
        """Begin paying the invoice's outstanding amount through a provider.

        The pending payment is committed before the provider is called, with the
        reference we choose where the provider lets us (MoMo, card), so a lost answer
        is found again by the reconciler's status query."""
        if provider_name == "cash":
            raise Unprocessable(
                "cash is taken by the front desk (POST /invoices/{id}/cash)",
                code=ErrorCode.PROVIDER_NOT_CONFIGURED,
            )
        provider = self.provider(provider_name)
        payment_id = uuid4()
        now = self._now()
        async with self._pool.acquire() as conn, conn.transaction():
            invoice = scoped(
                principal, await store.get_invoice(conn, invoice_id, for_update=True), "invoice"
            )
            amount = self._payable(invoice)
            request = Initiation(
                payment_id=payment_id,
                amount=amount,
                currency=invoice.currency,
                payer=payer,
                description=f"Invoice {invoice.number}",
                callback_url=self.callback_url(provider_name),
                return_url=self.return_url(payment_id),
            )
            try:
                # What the provider would refuse is refused before anything is saved.
                provider.check(request)
            except ProviderRefused as exc:
                raise Unprocessable(
                    f"the provider would refuse the payment: {exc.reason}",
                    code=ErrorCode.PROVIDER_REFUSED,
                ) from None
            try:
                payment = await store.insert_payment(
                    conn,
                    payment_id=payment_id,
                    invoice=invoice,
                    provider=provider_name,
                    amount=amount,
                    provider_reference=provider.reference_for(payment_id),
                    created_by=principal.user_id,
                    expires_at=now + timedelta(seconds=self._settings.pending_timeout),
                    next_poll_at=now + timedelta(seconds=self._settings.poll_interval),
                )
            except store.PaymentInProgress:
                raise Conflict(
                    "this invoice already has a payment under way or paid",
                    code=ErrorCode.PAYMENT_IN_PROGRESS,
                ) from None
            await self._audit.record(
                self._event(
                    principal, "payment.start", "payment", payment_id,
                    clinic_id=invoice.clinic_id, ip=ip, patient_id=str(invoice.patient_id),
                    invoice_id=str(invoice.id), provider=provider_name, amount=amount,
                    currency=invoice.currency,
                ),
                conn,
            )  # fmt: skip
        # From here until the provider's reference is saved, every way out leaves the
        # invoice payable again or the payment where the reconciler finds it (_abandon).
        try:
            initiated = await provider.initiate(request)
        except ProviderRefused as exc:
            await self._settle.finalize(
                payment_id,
                ProviderStatus("failed", reason="declined", raw_reason=exc.reason),
                "initiate",
            )
            raise Unprocessable(
                f"the provider refused the payment: {exc.reason}", code=ErrorCode.PROVIDER_REFUSED
            ) from None
        except ProviderError:
            logger.warning("payment %s: provider %s did not answer", payment_id, provider_name)
            if payment.provider_reference is None:
                # Nothing to ask later: the provider never named its reference.
                await self._settle.finalize(
                    payment_id, ProviderStatus("failed", reason="provider_unreachable"), "initiate"
                )
                raise Unavailable(
                    "the payment provider did not answer; try again",
                    code=ErrorCode.PROVIDER_UNAVAILABLE,
                ) from None
            return payment  # pending; the reconciler asks the provider
        except Exception as exc:
            await self._abandon(payment, exc)
            if isinstance(exc, ClientError):
                raise
            raise _try_again() from exc
        try:
            async with self._pool.acquire() as conn:
                updated = await store.set_reference(
                    conn, payment_id, initiated.reference, initiated.redirect_url
                )
        except Exception as exc:
            await self._abandon(payment, exc)
            if isinstance(exc, ClientError):
                raise
            raise _try_again() from exc
        return updated or payment

    def return_url(self, payment_id: UUID) -> str:
        """Where a card payer's browser comes back to after the gateway's checkout."""
        return f"{self._settings.public_url}/pay.html?payment={payment_id}"

    async def _abandon(self, payment: Payment, exc: Exception) -> None:
        """Starting ``payment`` failed in an unforeseen way (``exc``) after it was saved.
        Leave its invoice payable again unless the provider may have the payment:

        * no reference saved (the provider names it, M-Pesa): nobody can ever ask about
          it, so it fails now (``initiation_error``) instead of blocking its invoice
          until it expires;
        * a reference we chose (MoMo, card): ask the provider. Not known there, it fails;
          final there, that is applied; pending there (or no answer), it stays pending
          for the reconciler, since the payer may be paying it right now.
        """
        logger.error(
            "payment %s: starting it with %s failed", payment.id, payment.provider, exc_info=exc
        )
        failed = ProviderStatus("failed", reason="initiation_error", raw_reason=repr(exc)[:200])
        try:
            if payment.provider_reference is None:
                await self._settle.finalize(payment.id, failed, "initiate")
                return
            status = await self.provider(payment.provider).query(payment.provider_reference)
            if status.state == "pending" and status.reason == "reference_not_found":
                status = failed
            await self._settle.finalize(payment.id, status, "initiate")
        except Exception:
            # The reconciler settles it (at the latest at its expiry).
            logger.warning("payment %s: left pending for the reconciler", payment.id, exc_info=True)

    @staticmethod
    def _payable(invoice: Invoice) -> int:
        if invoice.status != "open" or invoice.outstanding <= 0:
            raise Conflict(
                f"invoice {invoice.number} is {invoice.status}, nothing to pay",
                code=ErrorCode.NOT_PAYABLE,
            )
        return invoice.outstanding

    async def take_cash(self, principal: Principal, invoice_id: UUID, *, ip: str | None) -> Payment:
        """The front desk took the outstanding amount in cash: paid at once."""
        payment_id = uuid4()
        now = self._now()
        async with self._pool.acquire() as conn, conn.transaction():
            invoice = scoped(
                principal, await store.get_invoice(conn, invoice_id, for_update=True), "invoice"
            )
            amount = self._payable(invoice)
            try:
                await store.insert_payment(
                    conn,
                    payment_id=payment_id,
                    invoice=invoice,
                    provider="cash",
                    amount=amount,
                    provider_reference=f"cash_{payment_id.hex}",
                    created_by=principal.user_id,
                    expires_at=now,
                    next_poll_at=now,
                )
            except store.PaymentInProgress:
                raise Conflict(
                    "this invoice already has a payment under way or paid",
                    code=ErrorCode.PAYMENT_IN_PROGRESS,
                ) from None
            payment = await self._settle.succeed(
                conn, payment_id, ProviderStatus("succeeded"), principal=principal, ip=ip
            )
        assert payment is not None
        return payment

    async def refund(
        self,
        principal: Principal,
        payment_id: UUID,
        *,
        amount: int | None,
        reason: str,
        ip: str | None,
        method: PayoutMethod = "provider",
    ) -> tuple[Payment, Refund]:
        """Refund all or part of a succeeded payment and pay it back out through the
        provider that took it, or from the till (payouts.py)."""
        return await self.payouts.refund(
            principal, payment_id, amount=amount, reason=reason, method=method, ip=ip
        )

    async def waive(
        self, principal: Principal, invoice_id: UUID, *, reason: str, ip: str | None
    ) -> Invoice:
        """The front desk waives what is still owed: fees_waived against receivables."""
        async with self._pool.acquire() as conn, conn.transaction():
            invoice = scoped(
                principal, await store.get_invoice(conn, invoice_id, for_update=True), "invoice"
            )
            amount = self._payable(invoice)
            live = list(await store.payments_of_invoice(conn, invoice_id))
            if any(p.status == "pending" for p in live):
                raise Conflict(
                    "a payment of this invoice is under way", code=ErrorCode.PAYMENT_IN_PROGRESS
                )
            await post(
                conn,
                clinic_id=invoice.clinic_id,
                kind="waiver",
                currency=invoice.currency,
                invoice_id=invoice.id,
                memo=reason[:500],
                created_by=principal.user_id,
                postings=[
                    Posting(accounts.FEES_WAIVED, amount),
                    Posting(accounts.RECEIVABLES, -amount),
                ],
            )
            changed = await store.move_invoice(conn, invoice.id, waived=amount)
            await self._audit.record(
                self._event(
                    principal, "invoice.waive", "invoice", invoice.id,
                    clinic_id=invoice.clinic_id, ip=ip, patient_id=str(invoice.patient_id),
                    amount=amount, currency=invoice.currency,
                ),
                conn,
            )  # fmt: skip
        return changed

    # --- the provider's word (settlement.py) -------------------------------------------

    async def confirm(self, payment: Payment, *, source: str = "poll") -> Payment | None:
        """Ask the provider about a pending payment; apply a final answer (ProviderError
        when it cannot say)."""
        return await self._settle.confirm(payment, source=source)

    async def expire(self, payment: Payment) -> Payment | None:
        return await self._settle.expire(payment)

    async def handle_callback(
        self, provider_name: str, headers: Mapping[str, str], body: bytes, *, ip: str | None
    ) -> CallbackOutcome:
        if self.payouts.is_card_refund(provider_name, body):  # the gateway's one webhook URL
            return await self.payouts.handle_card_webhook(headers, body, ip=ip)
        return await self._settle.handle_callback(provider_name, headers, body, ip=ip)

    # --- the consultation gate --------------------------------------------------------

    async def payment_due(self, appointment_id: UUID, clinic_id: UUID) -> PaymentDue | None:
        """What must be paid before joining, under the clinic's ``pay_before`` gate."""
        async with self._pool.acquire() as conn:
            settings = await store.get_settings(conn, clinic_id)
            if settings.gate != "pay_before":
                return None
            invoice = await store.invoice_for_appointment(conn, appointment_id)
        if invoice is None or invoice.status not in ("open", "refunded"):
            return None
        owed = (
            invoice.total - invoice.waived if invoice.status == "refunded" else invoice.outstanding
        )
        if owed <= 0:
            return None
        return PaymentDue(invoice.id, owed, invoice.currency)

    async def ensure_paid(self, appointment_id: UUID, clinic_id: UUID) -> None:
        """Raise ``payment_required`` (402) naming what to pay, when the gate is closed."""
        due = await self.payment_due(appointment_id, clinic_id)
        if due is not None:
            raise PaymentRequired(
                "this clinic asks for payment before the consultation",
                fields=[
                    FieldError("invoice_id", str(due.invoice_id)),
                    FieldError("amount", str(due.amount)),
                    FieldError("currency", due.currency),
                ],
            )

    # --- reports ----------------------------------------------------------------------

    async def trial_balance(self, principal: Principal, *, ip: str | None) -> list[Balance]:
        async with self._pool.acquire() as conn:
            return await trial_balance(conn, principal.clinic_id)

    async def reconciliation(
        self,
        principal: Principal,
        *,
        provider_name: str,
        since: datetime,
        until: datetime,
        verify: bool,
        ip: str | None,
    ) -> Reconciliation:
        """Our ledger against the provider (reports.py)."""
        return await reconcile(
            self._pool,
            self.provider(provider_name),
            clinic_id=principal.clinic_id,
            provider_name=provider_name,
            since=since,
            until=until,
            verify=verify,
        )


def _try_again() -> Unavailable:
    """An unforeseen failure while starting a payment: "try again", never a 500."""
    return Unavailable(
        "the payment could not be started; try again", code=ErrorCode.PROVIDER_UNAVAILABLE
    )


def outstanding(invoices: Sequence[Invoice]) -> int:
    return sum(i.outstanding for i in invoices)
