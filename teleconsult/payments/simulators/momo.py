"""MTN MoMo simulator: Collection (token, requesttopay, its status, PUT callbacks) and
Disbursement refunds (its own token and subscription key, refund, its status, callbacks)."""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
import uuid
from typing import Any

from aiohttp import web

from teleconsult.payments.money import Money, parse_major
from teleconsult.payments.simulators.common import Behaviour, Simulator, Txn, json_error

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_BAD_SUBSCRIPTION = {
    "statusCode": 401,
    "message": "Access denied due to invalid subscription key. Make sure to provide a valid "
    "key for an active subscription.",
}
_STATUS = {"pending": "PENDING", "succeeded": "SUCCESSFUL", "failed": "FAILED"}


class MomoSimulator(Simulator):
    name = "momo"

    def __init__(
        self,
        *,
        user_id: str,
        api_key: str,
        subscription_key: str,
        target_environment: str = "sandbox",
        behaviour: Behaviour | None = None,
    ) -> None:
        super().__init__(behaviour)
        self.user_id = user_id
        self.api_key = api_key
        self.subscription_key = subscription_key
        self.target_environment = target_environment
        self.tokens: dict[str, float] = {}
        # The Disbursement product: its own API user, key, subscription key and tokens.
        self.disbursement_user_id = str(uuid.uuid4())
        self.disbursement_api_key = secrets.token_hex(16)
        self.disbursement_subscription_key = secrets.token_hex(16)
        self.disbursement_tokens: dict[str, float] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/collection/token/", self.token)
        app.router.add_post("/collection/v1_0/requesttopay", self.request_to_pay)
        app.router.add_get("/collection/v1_0/requesttopay/{ref}", self.status)
        app.router.add_post("/disbursement/token/", self.disbursement_token)
        app.router.add_post("/disbursement/v1_0/refund", self.refund)
        app.router.add_get("/disbursement/v1_0/refund/{ref}", self.refund_status)
        return app

    def _subscription_ok(self, request: web.Request, disbursement: bool = False) -> bool:
        expected = self.disbursement_subscription_key if disbursement else self.subscription_key
        return secrets.compare_digest(
            request.headers.get("Ocp-Apim-Subscription-Key", ""), expected
        )

    def _create_refused(
        self, request: web.Request, disbursement: bool = False
    ) -> web.Response | None:
        """A request that creates (a payment, a refund): credentials and its reference."""
        refused = self._bearer_error(request, disbursement)
        if refused is None and not _UUID.match(request.headers.get("X-Reference-Id", "")):
            refused = json_error(400, {"code": "INVALID_REFERENCE_ID", "message": "X-Reference-Id"})
        return refused

    async def _read_refused(
        self, request: web.Request, disbursement: bool = False
    ) -> web.Response | None:
        """A status read: credentials, then a 500 now and then (slow ones sleep first)."""
        refused = self._bearer_error(request, disbursement)
        if refused is None and await self.api_misbehaves():
            refused = json_error(500, {"code": "INTERNAL_PROCESSING_ERROR", "message": "error"})
        return refused

    def _bearer_error(
        self, request: web.Request, disbursement: bool = False
    ) -> web.Response | None:
        if not self._subscription_ok(request, disbursement):
            return json_error(401, _BAD_SUBSCRIPTION)
        tokens = self.disbursement_tokens if disbursement else self.tokens
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or tokens.get(token, 0) < time.monotonic():
            return json_error(401, {"code": "UNAUTHORIZED", "message": "Invalid access token"})
        if request.headers.get("X-Target-Environment") != self.target_environment:
            return json_error(
                400, {"code": "INVALID_TARGET_ENVIRONMENT", "message": "Unknown environment"}
            )
        return None

    async def token(self, request: web.Request, disbursement: bool = False) -> web.Response:
        if not self._subscription_ok(request, disbursement):
            return json_error(401, _BAD_SUBSCRIPTION)
        user, key = (
            (self.disbursement_user_id, self.disbursement_api_key)
            if disbursement
            else (self.user_id, self.api_key)
        )
        expected = base64.b64encode(f"{user}:{key}".encode()).decode()
        if not secrets.compare_digest(
            request.headers.get("Authorization", ""), f"Basic {expected}"
        ):
            return json_error(401, {"error": "login_failed"})
        token = secrets.token_urlsafe(32)
        (self.disbursement_tokens if disbursement else self.tokens)[token] = time.monotonic() + 3600
        return web.json_response(
            {"access_token": token, "token_type": "access_token", "expires_in": 3600}
        )

    async def request_to_pay(self, request: web.Request) -> web.Response:
        refused = self._create_refused(request)
        if refused is not None:
            return refused
        reference = request.headers["X-Reference-Id"]
        try:
            body = await request.json()
            amount = (
                parse_major(body["amount"], body["currency"])
                if isinstance(body["amount"], str)
                else None
            )
            payer = body["payer"]
            ok = (
                amount is not None
                and amount.minor > 0
                and isinstance(body.get("externalId"), str)
                and payer.get("partyIdType") in ("MSISDN", "EMAIL", "PARTY_CODE")
                and isinstance(payer.get("partyId"), str)
                and re.fullmatch(r"[0-9]{8,15}", payer["partyId"]) is not None
                and set(body) <= {"amount", "currency", "externalId", "payer", "payerMessage",
                                  "payeeNote"}
            )  # fmt: skip
        except Exception:
            ok = False
        if not ok or amount is None:
            return json_error(
                400, {"code": "INVALID_REQUEST", "message": "Request body is not valid"}
            )
        if reference in self.truth:
            return json_error(
                409,
                {
                    "code": "RESOURCE_ALREADY_EXIST",
                    "message": "Duplicated reference id. Creation of resource failed.",
                },
            )
        if self.api_fails():
            return json_error(500, {"code": "INTERNAL_PROCESSING_ERROR", "message": "error"})
        callback = request.headers.get("X-Callback-Url")
        txn = self.new_txn(reference, amount.minor, amount.currency, payer["partyId"], callback)
        txn.extra["externalId"] = body["externalId"]
        txn.extra["financialTransactionId"] = str(self.rng.randrange(10**8, 10**9))
        await self.answer_late()
        return web.Response(status=202)

    def _status_body(self, txn: Txn, state: str | None = None) -> dict[str, Any]:
        state = state or txn.state()
        body: dict[str, Any] = {
            "amount": Money(txn.amount, txn.currency).major_string(),
            "currency": txn.currency,
            "externalId": txn.extra.get("externalId", txn.reference),
            "payer": {"partyIdType": "MSISDN", "partyId": txn.payer},
            "payerMessage": "",
            "payeeNote": "",
            "status": _STATUS[state],
        }
        if state == "succeeded":
            body["financialTransactionId"] = txn.extra.get("financialTransactionId")
        if state == "failed":
            body["reason"] = "EXPIRED" if txn.outcome == "timeout" else "APPROVAL_REJECTED"
        return body

    async def status(self, request: web.Request) -> web.Response:
        refused = await self._read_refused(request)
        if refused is not None:
            return refused
        txn = self.truth.get(request.match_info["ref"])
        if txn is None:
            return json_error(
                404,
                {"code": "RESOURCE_NOT_FOUND", "message": "Requested resource was not found."},
            )
        return web.json_response(self._status_body(txn))

    def callback_for(self, txn: Txn) -> tuple[str, bytes, dict[str, str]]:
        return "PUT", json.dumps(self._status_body(txn)).encode(), {}

    # --- Disbursement: refunds -------------------------------------------------------

    async def disbursement_token(self, request: web.Request) -> web.Response:
        return await self.token(request, disbursement=True)

    async def refund(self, request: web.Request) -> web.Response:
        refused = self._create_refused(request, disbursement=True)
        if refused is not None:
            return refused
        reference = request.headers["X-Reference-Id"]
        try:
            body = await request.json()
            amount = parse_major(body["amount"], body["currency"])
            of = self.truth.get(str(body["referenceIdToRefund"]))
            ok = (
                isinstance(body["amount"], str) and amount.minor > 0
                and isinstance(body.get("externalId"), str)
                and set(body) <= {"amount", "currency", "externalId", "payerMessage",
                                  "payeeNote", "referenceIdToRefund"}
            )  # fmt: skip
        except Exception:
            ok, of = False, None
        if not ok:
            return json_error(
                400, {"code": "INVALID_REQUEST", "message": "Request body is not valid"}
            )
        if reference in self.refunds:
            return json_error(
                409, {"code": "RESOURCE_ALREADY_EXIST", "message": "Duplicated reference id."}
            )
        if of is None or of.currency != amount.currency:
            return json_error(404, {"code": "RESOURCE_NOT_FOUND", "message": "referenceIdToRefund"})
        if amount.minor > self.refundable(of):
            return json_error(
                409, {"code": "NOT_ALLOWED", "message": "The amount exceeds what can be refunded"}
            )
        if self.api_fails():
            return json_error(500, {"code": "INTERNAL_PROCESSING_ERROR", "message": "error"})
        refund = self.new_refund(
            reference, amount.minor, amount.currency, of, request.headers.get("X-Callback-Url")
        )
        refund.extra["externalId"] = body["externalId"]
        refund.extra["financialTransactionId"] = str(self.rng.randrange(10**8, 10**9))
        if self.refund_answer_lost():
            return json_error(500, {"code": "INTERNAL_PROCESSING_ERROR", "message": "error"})
        return web.Response(status=202)

    def _refund_body(self, refund: Txn) -> dict[str, Any]:
        state = refund.state()
        body: dict[str, Any] = {
            "amount": Money(refund.amount, refund.currency).major_string(),
            "currency": refund.currency,
            "externalId": refund.extra.get("externalId", refund.reference),
            "payee": {"partyIdType": "MSISDN", "partyId": self.truth[refund.payer].payer},
            "status": _STATUS[state],
        }
        if state == "succeeded":
            body["financialTransactionId"] = refund.extra["financialTransactionId"]
        if state == "failed":
            body["reason"] = "NOT_ENOUGH_FUNDS"  # the disbursement account ran dry
        return body

    async def refund_status(self, request: web.Request) -> web.Response:
        refused = await self._read_refused(request, disbursement=True)
        if refused is not None:
            return refused
        refund = self.refunds.get(request.match_info["ref"])
        if refund is None:
            return json_error(
                404, {"code": "RESOURCE_NOT_FOUND", "message": "Requested resource was not found."}
            )
        return web.json_response(self._refund_body(refund))

    def refund_callback_for(self, refund: Txn) -> tuple[str, bytes, dict[str, str]]:
        return "PUT", json.dumps(self._refund_body(refund)).encode(), {}

    def forged_for(self, txn: Txn) -> tuple[str, bytes, dict[str, str]]:
        """Unsigned, so anyone can claim success: for a real reference (truth may be a
        failure), with a wrong amount, or for a reference nobody made."""
        body = self._status_body(txn, "succeeded")
        kind = self.forgery_kind()
        if kind == "amount":
            body["amount"] = Money(txn.amount * 2 + 100, txn.currency).major_string()
        elif kind == "reference":
            body["externalId"] = str(uuid.uuid4())
        return "PUT", json.dumps(body).encode(), {}
