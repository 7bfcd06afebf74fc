"""HTTP transport for refunds and their payouts: refunding a payment, paying a failed
payout again or from the till, the refunds still owed to patients, and the providers'
results of payouts (payouts.py). Mounted beside routes.py, whose app keys, answers and
``idempotent`` it shares."""

from __future__ import annotations

from typing import Annotated, Literal

from aiohttp import web
from pydantic import BaseModel, Field

from teleconsult.api.models import Body, Limit
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.policy import Action
from teleconsult.payments.routes import (
    PAYMENT,
    PAYMENTS,
    TAG,
    PaymentOut,
    RefundOut,
    Text,
    WebhookAnswer,
    callback_body,
    idempotent,
)

api = Api()


PayoutChoice = Literal["provider", "cash"]


class RefundBody(Body):
    amount: Annotated[int, Field(ge=1, le=10**15)] | None = None
    reason: Text
    payout: PayoutChoice = Field(
        default="provider",
        description="provider: sent back through the provider that took the payment (cash "
        "payments: from the till); cash: the desk pays it from the till now",
    )


class PayoutBody(Body):
    method: PayoutChoice = "provider"


class OwedRefunds(BaseModel):
    items: list[RefundOut]


class OwedQuery(BaseModel):
    limit: Limit = 50


@api.op(
    "POST", f"{PAYMENT}/refunds", operation_id="refundPayment",
    summary="Refund all or part of a payment (Idempotency-Key required)", tag=TAG,
    action=Action.PAYMENT_DESK, body=RefundBody, response=PaymentOut, status=201, errors=(409,),
)  # fmt: skip
async def refund_payment(req: ApiRequest) -> web.Response:
    body = req.body(RefundBody)

    async def run() -> PaymentOut:
        payment, refund = await req.request.app[PAYMENTS].refund(
            req.principal, req.params["payment_id"], amount=body.amount, reason=body.reason,
            ip=req.ip, method=body.payout,
        )  # fmt: skip
        return PaymentOut.of(payment).model_copy(update={"refund": RefundOut.of(refund)})

    return await idempotent(req, "refundPayment", 201, run)


@api.op(
    "POST", "/api/v1/refunds/{refund_id}/payouts", operation_id="retryRefundPayout",
    summary="Pay out a refund whose payout failed, again or from the till (Idempotency-Key "
    "required)", tag=TAG, action=Action.PAYMENT_DESK, body=PayoutBody, response=RefundOut,
    status=201, errors=(409, 422, 503),
)  # fmt: skip
async def retry_refund_payout(req: ApiRequest) -> web.Response:
    """``method: provider`` sends it through the payment's provider again; ``cash``
    records that the desk paid it from the till (at once)."""
    body = req.body(PayoutBody)

    async def run() -> RefundOut:
        refund = await req.request.app[PAYMENTS].payouts.retry(
            req.principal, req.params["refund_id"], method=body.method, ip=req.ip
        )
        return RefundOut.of(refund)

    return await idempotent(req, "retryRefundPayout", 201, run)


@api.op(
    "GET", "/api/v1/refunds/owed", operation_id="listOwedRefunds",
    summary="Refunds not paid out yet (payout pending or failed)", tag=TAG,
    action=Action.PAYMENT_REPORT, query=OwedQuery, response=OwedRefunds,
)  # fmt: skip
async def owed_refunds(req: ApiRequest) -> OwedRefunds:
    """The front desk's exceptions: money owed back to patients, oldest first."""
    query = req.query(OwedQuery)
    found = await req.request.app[PAYMENTS].payouts.owed(req.principal, limit=query.limit)
    return OwedRefunds(items=[RefundOut.of(r) for r in found])


# --- results of payouts --------------------------------------------------------------

REFUND_RESULT = "/api/v1/webhooks/refunds/{provider}/{payout_id}/{token}"


async def _refund_result(req: ApiRequest) -> WebhookAnswer:
    request = req.request
    raw = await callback_body(request)
    outcome = await request.app[PAYMENTS].payouts.handle_result(
        request.match_info["provider"], req.params["payout_id"], request.match_info["token"],
        request.headers, raw, ip=req.ip,
    )  # fmt: skip
    return WebhookAnswer(result=outcome)


@api.op(
    "POST", REFUND_RESULT, operation_id="refundResult",
    summary="A provider's result of a refund payout (M-Pesa reversal, MoMo refund)", tag=TAG,
    action=None, response=WebhookAnswer, string_params=("provider", "token"),
    errors=(404, 413, 422),
)  # fmt: skip
async def refund_result(req: ApiRequest) -> WebhookAnswer:
    """The URL carries a secret per payout that only the provider was given: a wrong one
    answers 404 and changes nothing. M-Pesa's result is applied (Daraja has no synchronous
    status query); MoMo's makes the server ask MoMo."""
    return await _refund_result(req)


@api.op(
    "PUT", REFUND_RESULT, operation_id="refundResultPut",
    summary="A provider's result of a refund payout (MTN MoMo sends PUT)", tag=TAG,
    action=None, response=WebhookAnswer, string_params=("provider", "token"),
    errors=(404, 413, 422),
)  # fmt: skip
async def refund_result_put(req: ApiRequest) -> WebhookAnswer:
    return await _refund_result(req)
