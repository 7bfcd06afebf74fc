"""MTN MoMo Collection simulator: token, requesttopay, its status, PUT callbacks."""

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

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/collection/token/", self.token)
        app.router.add_post("/collection/v1_0/requesttopay", self.request_to_pay)
        app.router.add_get("/collection/v1_0/requesttopay/{ref}", self.status)
        return app

    def _subscription_ok(self, request: web.Request) -> bool:
        return secrets.compare_digest(
            request.headers.get("Ocp-Apim-Subscription-Key", ""), self.subscription_key
        )

    def _bearer_error(self, request: web.Request) -> web.Response | None:
        if not self._subscription_ok(request):
            return json_error(401, _BAD_SUBSCRIPTION)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or self.tokens.get(token, 0) < time.monotonic():
            return json_error(401, {"code": "UNAUTHORIZED", "message": "Invalid access token"})
        if request.headers.get("X-Target-Environment") != self.target_environment:
            return json_error(
                400, {"code": "INVALID_TARGET_ENVIRONMENT", "message": "Unknown environment"}
            )
        return None

    async def token(self, request: web.Request) -> web.Response:
        if not self._subscription_ok(request):
            return json_error(401, _BAD_SUBSCRIPTION)
        expected = base64.b64encode(f"{self.user_id}:{self.api_key}".encode()).decode()
        if not secrets.compare_digest(
            request.headers.get("Authorization", ""), f"Basic {expected}"
        ):
            return json_error(401, {"error": "login_failed"})
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.monotonic() + 3600
        return web.json_response(
            {"access_token": token, "token_type": "access_token", "expires_in": 3600}
        )

    async def request_to_pay(self, request: web.Request) -> web.Response:
        refused = self._bearer_error(request)
        if refused is not None:
            return refused
        reference = request.headers.get("X-Reference-Id", "")
        if not _UUID.match(reference):
            return json_error(400, {"code": "INVALID_REFERENCE_ID", "message": "X-Reference-Id"})
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
        refused = self._bearer_error(request)
        if refused is not None:
            return refused
        if await self.api_misbehaves():
            return json_error(500, {"code": "INTERNAL_PROCESSING_ERROR", "message": "error"})
        txn = self.truth.get(request.match_info["ref"])
        if txn is None:
            return json_error(
                404,
                {"code": "RESOURCE_NOT_FOUND", "message": "Requested resource was not found."},
            )
        return web.json_response(self._status_body(txn))

    def callback_for(self, txn: Txn) -> tuple[str, bytes, dict[str, str]]:
        return "PUT", json.dumps(self._status_body(txn)).encode(), {}

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
