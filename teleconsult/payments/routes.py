"""HTTP transport for payments: invoices, paying, the front desk's money, reports, and
the providers' webhooks (refunds and their payouts: refund_routes.py). Every POST that
creates or moves money needs an ``Idempotency-Key`` (idempotency.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints

from teleconsult.api.models import Body, IsoDateTime, Limit
from teleconsult.api.pagination import cut_page, decode_cursor
from teleconsult.api.problems import PROBLEM_CONTENT_TYPE, from_client_error
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.errors import BadRequest, ClientError, PayloadTooLarge, RateLimited
from teleconsult.core.errors import Unavailable as UnavailableError
from teleconsult.core.policy import Action
from teleconsult.payments.idempotency import IdempotencyKeys, check_key, fingerprint
from teleconsult.payments.records import Invoice, InvoiceStatus, Payment, PaymentStatus, Refund
from teleconsult.payments.service import PaymentService

PAYMENTS = web.AppKey("payments", PaymentService)
IDEMPOTENCY = web.AppKey("idempotency_keys", IdempotencyKeys)
api = Api()
TAG = "payments"
MAX_WEBHOOK_BYTES = 64 * 1024

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
Provider = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,30}$")]


# --- models ---------------------------------------------------------------------------


class Line(BaseModel):
    position: int
    kind: str
    description: str
    amount: int


class RefundOut(BaseModel):
    id: UUID = Field(description="its ledger transaction")
    payment_id: UUID
    amount: int = Field(description="minor units")
    currency: str
    reason: str
    by: UUID | None = Field(description="who refunded (a front desk user)")
    by_name: str | None
    created_at: datetime
    invoice_id: UUID | None = None
    payout_id: UUID | None = Field(default=None, description="its latest payout")
    payout_method: str | None = Field(
        default=None, description="momo, mpesa, card (through the provider) or cash (the till)"
    )
    payout_status: PaymentStatus | None = Field(
        default=None,
        description="pending, succeeded (the money went back) or failed (still owed: retry "
        "or pay from the till); null for refunds recorded before payouts",
    )
    payout_failure_reason: str | None = None
    payout_reference: str | None = Field(
        default=None, description="the provider's id of the payout (MoMo, card, M-Pesa)"
    )

    @classmethod
    def of(cls, r: Refund) -> RefundOut:
        return cls(**vars(r))


class PaymentOut(BaseModel):
    id: UUID
    invoice_id: UUID
    provider: str
    amount: int
    currency: str
    status: PaymentStatus
    provider_reference: str | None
    redirect_url: str | None
    failure_reason: str | None
    refunded: int
    created_at: datetime
    finalized_at: datetime | None
    refund: RefundOut | None = Field(
        default=None, description="the refund just made, with its payout (refund answers only)"
    )

    @classmethod
    def of(cls, p: Payment) -> PaymentOut:
        return cls(
            id=p.id,
            invoice_id=p.invoice_id,
            provider=p.provider,
            amount=p.amount,
            currency=p.currency,
            status=p.status,
            provider_reference=p.provider_reference,
            redirect_url=p.redirect_url,
            failure_reason=p.failure_reason,
            refunded=p.refunded,
            created_at=p.created_at,
            finalized_at=p.finalized_at,
        )


class InvoiceOut(BaseModel):
    id: UUID
    number: str
    appointment_id: UUID | None
    patient_id: UUID
    currency: str
    subtotal: int = Field(description="minor units of the currency (XOF: francs, KES: cents)")
    tax: int
    total: int
    paid: int
    refunded: int
    waived: int
    outstanding: int
    status: InvoiceStatus
    lines: list[Line]
    created_at: datetime
    appointment_starts_at: datetime | None = Field(
        default=None, description="when its appointment starts (None: no appointment)"
    )
    payments: list[PaymentOut] | None = None
    refunds: list[RefundOut] | None = Field(
        default=None, description="each refund of its payments, oldest first (single reads)"
    )

    @classmethod
    def of(
        cls, i: Invoice, payments: list[Payment] | None = None, refunds: list[Refund] | None = None
    ) -> InvoiceOut:
        return cls(
            id=i.id,
            number=i.number,
            appointment_id=i.appointment_id,
            patient_id=i.patient_id,
            currency=i.currency,
            subtotal=i.subtotal,
            tax=i.tax,
            total=i.total,
            paid=i.paid,
            refunded=i.refunded,
            waived=i.waived,
            outstanding=i.outstanding,
            status=i.status,
            lines=[Line(**vars(x)) for x in i.lines],
            created_at=i.created_at,
            appointment_starts_at=i.appointment_starts_at,
            payments=None if payments is None else [PaymentOut.of(p) for p in payments],
            refunds=None if refunds is None else [RefundOut.of(r) for r in refunds],
        )


class InvoicePage(BaseModel):
    items: list[InvoiceOut]
    next_cursor: str | None


class InvoiceQuery(BaseModel):
    cursor: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    limit: Limit = 50
    patient_id: UUID | None = None
    status: InvoiceStatus | None = None
    starts_from: IsoDateTime | None = Field(
        default=None, description="only invoices whose appointment starts at or after this"
    )
    starts_before: IsoDateTime | None = Field(
        default=None, description="only invoices whose appointment starts before this"
    )


class StartPaymentBody(Body):
    provider: Provider
    payer: (
        Annotated[str, StringConstraints(pattern=r"^\+?[0-9]{8,15}$|^[^@\s]{1,64}@[^@\s]{1,190}$")]
        | None
    ) = None  # noqa: E501


class WaiveBody(Body):
    reason: Text


class SettingsOut(BaseModel):
    gate: Literal["pay_before", "pay_after", "none"]
    tax_label: str | None
    tax_rate_bp: int
    providers: list[str]


class SettingsBody(Body):
    gate: Literal["pay_before", "pay_after", "none"]
    tax_label: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=40)] | None
    ) = None  # noqa: E501
    tax_rate_bp: Annotated[int, Field(ge=0, le=10_000, description="1800 is 18 %")] = 0


class BalanceRow(BaseModel):
    account: str
    currency: str
    debit: int
    credit: int


class TrialBalance(BaseModel):
    accounts: list[BalanceRow]
    totals: dict[str, int] = Field(description="per currency: debits minus credits (always 0)")


class ReconQuery(BaseModel):
    provider: Provider
    from_: IsoDateTime | None = Field(default=None, alias="from")
    to: IsoDateTime | None = None
    verify: bool = False


class ReconRowOut(BaseModel):
    payment_id: UUID
    reference: str | None
    ours: str
    provider: str | None
    amount: int
    currency: str
    matches: bool


class ReconOut(BaseModel):
    provider: str
    succeeded_count: int
    succeeded_amount: dict[str, int]
    pending: int
    failed: int
    ledger_clearing: dict[str, int]
    mismatches: int
    rows: list[ReconRowOut]


class WebhookAnswer(BaseModel):
    result: Literal["applied", "duplicate", "final", "pending", "ignored", "queued"]


# --- idempotent POSTs -----------------------------------------------------------------


async def idempotent(
    req: ApiRequest, operation: str, status: int, run: Callable[[], Awaitable[BaseModel]]
) -> web.Response:
    """Run ``run`` once per Idempotency-Key; store and replay its answer (idempotency.py)."""
    key = check_key(req.request.headers.get("Idempotency-Key"))
    keys = req.request.app[IDEMPOTENCY]
    user = req.principal.user_id
    raw = await req.request.read()  # cached: the registry read it already
    replay = await keys.begin(user, key, operation, fingerprint(operation, req.request.path, raw))
    if replay is not None:
        return web.Response(
            status=replay.status,
            text=replay.body,
            headers={"Content-Type": replay.content_type, "Idempotent-Replayed": "true"},
        )
    try:
        result = await run()
    except (UnavailableError, RateLimited):
        await keys.release(user, key)  # "try again" answers are not kept
        raise
    except ClientError as exc:
        answer = from_client_error(exc)
        await keys.finish(user, key, answer.status, answer.text or "", PROBLEM_CONTENT_TYPE)
        raise
    except BaseException:
        await keys.release(user, key)
        raise
    text = result.model_dump_json()
    await keys.finish(user, key, status, text, "application/json")
    return web.Response(status=status, text=text, content_type="application/json")


# --- invoices -------------------------------------------------------------------------

INVOICE = "/api/v1/invoices/{invoice_id}"
PAYMENT = "/api/v1/payments/{payment_id}"


@api.op(
    "GET", "/api/v1/invoices", operation_id="listInvoices", summary="List invoices", tag=TAG,
    action=Action.INVOICE_READ, query=InvoiceQuery, response=InvoicePage,
)  # fmt: skip
async def list_invoices(req: ApiRequest) -> InvoicePage:
    """A patient's own invoices; the front desk's and admins' clinic's, newest first."""
    query = req.query(InvoiceQuery)
    if query.starts_from and query.starts_before and query.starts_from >= query.starts_before:
        raise BadRequest("'starts_from' must be before 'starts_before'")
    found = await req.request.app[PAYMENTS].list_invoices(
        req.principal,
        patient_id=query.patient_id,
        status=query.status,
        after=decode_cursor(query.cursor),
        limit=query.limit + 1,
        ip=req.ip,
        starts_from=query.starts_from,
        starts_before=query.starts_before,
    )
    page, cursor = cut_page(found, query.limit)
    return InvoicePage(items=[InvoiceOut.of(i) for i in page], next_cursor=cursor)


@api.op(
    "GET", INVOICE, operation_id="getInvoice", summary="Read an invoice and its payments",
    tag=TAG, action=Action.INVOICE_READ, response=InvoiceOut,
)  # fmt: skip
async def get_invoice(req: ApiRequest) -> InvoiceOut:
    invoice, payments, refunds = await req.request.app[PAYMENTS].get_invoice(
        req.principal, req.params["invoice_id"], ip=req.ip
    )
    return InvoiceOut.of(invoice, payments, refunds)


@api.op(
    "GET", "/api/v1/appointments/{appointment_id}/invoice", operation_id="getAppointmentInvoice",
    summary="Read the invoice of an appointment", tag=TAG, action=Action.INVOICE_READ,
    response=InvoiceOut,
)  # fmt: skip
async def appointment_invoice(req: ApiRequest) -> InvoiceOut:
    invoice, payments, refunds = await req.request.app[PAYMENTS].invoice_of_appointment(
        req.principal, req.params["appointment_id"], ip=req.ip
    )
    return InvoiceOut.of(invoice, payments, refunds)


@api.op(
    "POST", f"{INVOICE}/payments", operation_id="startPayment",
    summary="Pay an invoice through a provider (Idempotency-Key required)", tag=TAG,
    action=Action.PAYMENT_START, body=StartPaymentBody, response=PaymentOut, status=201,
    errors=(409, 422, 503),
)  # fmt: skip
async def start_payment(req: ApiRequest) -> web.Response:
    """Mobile money (``momo``, ``mpesa``: ``payer`` is the phone number, the patient
    approves on the phone) or ``card`` (open ``redirect_url``). The payment is
    ``pending`` until the provider confirms; poll ``GET /payments/{id}``."""
    body = req.body(StartPaymentBody)

    async def run() -> PaymentOut:
        payment = await req.request.app[PAYMENTS].start_payment(
            req.principal,
            req.params["invoice_id"],
            provider_name=body.provider,
            payer=body.payer,
            ip=req.ip,
        )
        return PaymentOut.of(payment)

    return await idempotent(req, "startPayment", 201, run)


@api.op(
    "POST", f"{INVOICE}/cash", operation_id="takeCash",
    summary="Record the outstanding amount as paid in cash (Idempotency-Key required)",
    tag=TAG, action=Action.PAYMENT_DESK, response=PaymentOut, status=201, errors=(400, 409),
)  # fmt: skip
async def take_cash(req: ApiRequest) -> web.Response:
    async def run() -> PaymentOut:
        payment = await req.request.app[PAYMENTS].take_cash(
            req.principal, req.params["invoice_id"], ip=req.ip
        )
        return PaymentOut.of(payment)

    return await idempotent(req, "takeCash", 201, run)


@api.op(
    "POST", f"{INVOICE}/waiver", operation_id="waiveFee",
    summary="Waive what is still owed (Idempotency-Key required)", tag=TAG,
    action=Action.PAYMENT_DESK, body=WaiveBody, response=InvoiceOut, errors=(409,),
)  # fmt: skip
async def waive_fee(req: ApiRequest) -> web.Response:
    body = req.body(WaiveBody)

    async def run() -> InvoiceOut:
        invoice = await req.request.app[PAYMENTS].waive(
            req.principal, req.params["invoice_id"], reason=body.reason, ip=req.ip
        )
        return InvoiceOut.of(invoice)

    return await idempotent(req, "waiveFee", 200, run)


@api.op(
    "GET", PAYMENT, operation_id="getPayment", summary="Read a payment", tag=TAG,
    action=Action.INVOICE_READ, response=PaymentOut,
)  # fmt: skip
async def get_payment(req: ApiRequest) -> PaymentOut:
    payment = await req.request.app[PAYMENTS].get_payment(
        req.principal, req.params["payment_id"], ip=req.ip
    )
    return PaymentOut.of(payment)


# --- settings and reports -------------------------------------------------------------


@api.op(
    "GET", "/api/v1/payment-settings", operation_id="getPaymentSettings",
    summary="The clinic's payment gate and tax", tag=TAG, action=Action.PAYMENT_REPORT,
    response=SettingsOut,
)  # fmt: skip
async def get_settings(req: ApiRequest) -> SettingsOut:
    service = req.request.app[PAYMENTS]
    s = await service.settings_of(req.principal)
    return SettingsOut(
        gate=s.gate, tax_label=s.tax_label, tax_rate_bp=s.tax_rate_bp,
        providers=service.provider_names,
    )  # fmt: skip


@api.op(
    "PUT", "/api/v1/payment-settings", operation_id="putPaymentSettings",
    summary="Set the clinic's payment gate and tax", tag=TAG, action=Action.PAYMENT_SETTINGS,
    body=SettingsBody, response=SettingsOut, errors=(422,),
)  # fmt: skip
async def put_settings(req: ApiRequest) -> SettingsOut:
    body = req.body(SettingsBody)
    service = req.request.app[PAYMENTS]
    s = await service.put_settings(
        req.principal, gate=body.gate, tax_label=body.tax_label, tax_rate_bp=body.tax_rate_bp,
        ip=req.ip,
    )  # fmt: skip
    return SettingsOut(
        gate=s.gate, tax_label=s.tax_label, tax_rate_bp=s.tax_rate_bp,
        providers=service.provider_names,
    )  # fmt: skip


@api.op(
    "GET", "/api/v1/ledger/trial-balance", operation_id="trialBalance",
    summary="Every ledger account's debits and credits", tag=TAG,
    action=Action.PAYMENT_REPORT, response=TrialBalance,
)  # fmt: skip
async def trial_balance(req: ApiRequest) -> TrialBalance:
    rows = await req.request.app[PAYMENTS].trial_balance(req.principal, ip=req.ip)
    totals: dict[str, int] = {}
    for r in rows:
        totals[r.currency] = totals.get(r.currency, 0) + r.net
    return TrialBalance(
        accounts=[BalanceRow(account=r.account, currency=r.currency, debit=r.debit,
                             credit=r.credit) for r in rows],
        totals=totals,
    )  # fmt: skip


@api.op(
    "GET", "/api/v1/ledger/reconciliation", operation_id="reconciliationReport",
    summary="Our payments of a provider against the provider's statuses", tag=TAG,
    action=Action.PAYMENT_REPORT, query=ReconQuery, response=ReconOut, errors=(422,),
)  # fmt: skip
async def reconciliation(req: ApiRequest) -> ReconOut:
    """``verify=true`` asks the provider about each payment of the period (default: the
    last 24 hours)."""
    query = req.query(ReconQuery)
    until = query.to or datetime.now(UTC)
    since = query.from_ or until - timedelta(days=1)
    if since >= until:
        raise BadRequest("'from' must be before 'to'")
    report = await req.request.app[PAYMENTS].reconciliation(
        req.principal, provider_name=query.provider, since=since, until=until,
        verify=query.verify, ip=req.ip,
    )  # fmt: skip
    return ReconOut(
        provider=report.provider,
        succeeded_count=report.succeeded_count,
        succeeded_amount=report.succeeded_amount,
        pending=report.pending,
        failed=report.failed,
        ledger_clearing=report.ledger_clearing,
        mismatches=len(report.mismatches),
        rows=[
            ReconRowOut(payment_id=r.payment_id, reference=r.reference, ours=r.ours,
                        provider=r.provider, amount=r.amount, currency=r.currency,
                        matches=r.matches)
            for r in report.rows
        ],
    )  # fmt: skip


# --- webhooks -------------------------------------------------------------------------

WEBHOOK = "/api/v1/webhooks/payments/{provider}"


async def callback_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_WEBHOOK_BYTES:
        raise PayloadTooLarge(f"a callback is at most {MAX_WEBHOOK_BYTES} bytes")
    raw = await request.read()
    if len(raw) > MAX_WEBHOOK_BYTES:
        raise PayloadTooLarge(f"a callback is at most {MAX_WEBHOOK_BYTES} bytes")
    return raw


async def _webhook(req: ApiRequest) -> WebhookAnswer:
    request = req.request
    raw = await callback_body(request)
    outcome = await request.app[PAYMENTS].handle_callback(
        request.match_info["provider"], request.headers, raw, ip=req.ip
    )
    return WebhookAnswer(result=outcome)


@api.op(
    "POST", WEBHOOK, operation_id="paymentWebhook", summary="A payment provider's callback",
    tag=TAG, action=None, response=WebhookAnswer, string_params=("provider",),
    errors=(401, 404, 413, 422),
)  # fmt: skip
async def payment_webhook(req: ApiRequest) -> WebhookAnswer:
    """Signed webhooks (card) are verified on the raw body; unsigned callbacks (MoMo,
    M-Pesa) only make the server ask the provider. The body is the provider's own."""
    return await _webhook(req)


@api.op(
    "PUT", WEBHOOK, operation_id="paymentWebhookPut",
    summary="A payment provider's callback (MTN MoMo sends PUT)", tag=TAG, action=None,
    response=WebhookAnswer, string_params=("provider",), errors=(401, 404, 413, 422),
)  # fmt: skip
async def payment_webhook_put(req: ApiRequest) -> WebhookAnswer:
    return await _webhook(req)
