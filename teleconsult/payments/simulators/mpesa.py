"""Safaricom M-Pesa Daraja simulator: OAuth, STK push, STK query, stkCallback."""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from datetime import datetime
from typing import Any

from aiohttp import web

from teleconsult.payments.simulators.common import Behaviour, Simulator, Txn, json_error

RESULTS = {
    0: "The service request is processed successfully.",
    1: "The balance is insufficient for the transaction.",
    1032: "Request cancelled by user",
    1037: "DS timeout user cannot be reached",
    2001: "The initiator information is invalid.",
}
_PHONE = re.compile(r"^2547[0-9]{8}$|^2541[0-9]{8}$")


def _error(status: int, code: str, message: str) -> web.Response:
    return json_error(
        status,
        {"requestId": f"{secrets.randbelow(10**5)}-{secrets.randbelow(10**8)}-1",
         "errorCode": code, "errorMessage": message},
    )  # fmt: skip


class MpesaSimulator(Simulator):
    name = "mpesa"

    def __init__(
        self,
        *,
        consumer_key: str,
        consumer_secret: str,
        shortcode: str,
        passkey: str,
        behaviour: Behaviour | None = None,
    ) -> None:
        super().__init__(behaviour)
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.shortcode = shortcode
        self.passkey = passkey
        self.tokens: dict[str, float] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/oauth/v1/generate", self.oauth)
        app.router.add_post("/mpesa/stkpush/v1/processrequest", self.process_request)
        app.router.add_post("/mpesa/stkpushquery/v1/query", self.query)
        return app

    async def oauth(self, request: web.Request) -> web.Response:
        if request.query.get("grant_type") != "client_credentials":
            return _error(400, "400.008.02", "Invalid grant type passed")
        expected = base64.b64encode(f"{self.consumer_key}:{self.consumer_secret}".encode())
        if not secrets.compare_digest(
            request.headers.get("Authorization", ""), f"Basic {expected.decode()}"
        ):
            return _error(400, "400.008.01", "Invalid Authentication passed")
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.monotonic() + 3599
        return web.json_response({"access_token": token, "expires_in": "3599"})

    def _auth_error(self, request: web.Request) -> web.Response | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or self.tokens.get(token, 0) < time.monotonic():
            return _error(401, "404.001.03", "Invalid Access Token")
        return None

    def _signature_error(self, body: dict[str, Any]) -> web.Response | None:
        if str(body.get("BusinessShortCode")) != self.shortcode:
            return _error(400, "400.002.02", "Bad Request - Invalid BusinessShortCode")
        stamp = body.get("Timestamp")
        try:
            datetime.strptime(str(stamp), "%Y%m%d%H%M%S")
        except ValueError:
            return _error(400, "400.002.02", "Bad Request - Invalid Timestamp")
        expected = base64.b64encode(f"{self.shortcode}{self.passkey}{stamp}".encode()).decode()
        if not secrets.compare_digest(str(body.get("Password", "")), expected):
            return _error(500, "500.001.1001", "Wrong credentials")
        return None

    async def _signed_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        """The JSON body of a request with a valid token and password, or the refusal."""
        refused = self._auth_error(request)
        if refused is not None:
            return refused
        try:
            body = await request.json()
            assert isinstance(body, dict)
        except Exception:
            return _error(400, "400.002.05", "Invalid Request Payload")
        refused = self._signature_error(body)
        return body if refused is None else refused

    async def process_request(self, request: web.Request) -> web.Response:
        body = await self._signed_body(request)
        if isinstance(body, web.Response):
            return body
        checks = {
            "TransactionType": body.get("TransactionType")
            in ("CustomerPayBillOnline", "CustomerBuyGoodsOnline"),
            "Amount": isinstance(body.get("Amount"), int) and body["Amount"] >= 1,
            "PartyA": bool(_PHONE.match(str(body.get("PartyA", "")))),
            "PartyB": str(body.get("PartyB")) == self.shortcode,
            "PhoneNumber": bool(_PHONE.match(str(body.get("PhoneNumber", "")))),
            "CallBackURL": str(body.get("CallBackURL", "")).startswith(("http://", "https://")),
            "AccountReference": 1 <= len(str(body.get("AccountReference", ""))) <= 12,
            "TransactionDesc": 1 <= len(str(body.get("TransactionDesc", ""))) <= 13,
        }
        for name, ok in checks.items():
            if not ok:
                return _error(400, "400.002.02", f"Bad Request - Invalid {name}")
        if self.api_fails():
            return _error(500, "500.003.02", "System is busy. Please try again in few minutes.")
        merchant = f"{self.rng.randrange(10**4, 10**5)}-{self.rng.randrange(10**7, 10**8)}-1"
        checkout = f"ws_CO_{time.strftime('%d%m%Y%H%M%S')}{self.rng.randrange(10**9):09d}"
        txn = self.new_txn(
            checkout, body["Amount"] * 100, "KES", str(body["PhoneNumber"]), body["CallBackURL"]
        )
        txn.extra["MerchantRequestID"] = merchant
        txn.extra["AccountReference"] = str(body["AccountReference"])
        txn.extra["code"] = (
            0 if txn.outcome == "succeeded"
            else 1037 if txn.outcome == "timeout"
            else self.rng.choice((1, 1032, 2001))
        )  # fmt: skip
        txn.extra["receipt"] = "".join(self.rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", k=10))
        await self.answer_late()
        return web.json_response(
            {
                "MerchantRequestID": merchant,
                "CheckoutRequestID": checkout,
                "ResponseCode": "0",
                "ResponseDescription": "Success. Request accepted for processing",
                "CustomerMessage": "Success. Request accepted for processing",
            }
        )

    async def query(self, request: web.Request) -> web.Response:
        body = await self._signed_body(request)
        if isinstance(body, web.Response):
            return body
        if await self.api_misbehaves():
            return _error(500, "500.003.02", "System is busy. Please try again in few minutes.")
        txn = self.truth.get(str(body.get("CheckoutRequestID")))
        if txn is None:
            return _error(400, "400.002.02", "Bad Request - Invalid CheckoutRequestID")
        if txn.state() == "pending":
            return _error(500, "500.001.1001", "The transaction is being processed")
        code = txn.extra["code"]
        return web.json_response(
            {
                "ResponseCode": "0",
                "ResponseDescription": "The service request has been accepted successsfully",
                "MerchantRequestID": txn.extra["MerchantRequestID"],
                "CheckoutRequestID": txn.reference,
                "ResultCode": str(code),
                "ResultDesc": RESULTS[code],
            }
        )

    def _callback(self, txn: Txn, code: int, amount: int, reference: str) -> bytes:
        cb: dict[str, Any] = {
            "MerchantRequestID": txn.extra["MerchantRequestID"],
            "CheckoutRequestID": reference,
            "ResultCode": code,
            "ResultDesc": RESULTS[code],
        }
        if code == 0:
            cb["CallbackMetadata"] = {
                "Item": [
                    {"Name": "Amount", "Value": amount / 100},
                    {"Name": "MpesaReceiptNumber", "Value": txn.extra["receipt"]},
                    {"Name": "TransactionDate", "Value": int(time.strftime("%Y%m%d%H%M%S"))},
                    {"Name": "PhoneNumber", "Value": int(txn.payer)},
                ]
            }
        return json.dumps({"Body": {"stkCallback": cb}}).encode()

    def callback_for(self, txn: Txn) -> tuple[str, bytes, dict[str, str]]:
        return "POST", self._callback(txn, txn.extra["code"], txn.amount, txn.reference), {}

    def forged_for(self, txn: Txn) -> tuple[str, bytes, dict[str, str]]:
        kind = self.forgery_kind()
        amount = txn.amount + 10_000 if kind == "amount" else txn.amount
        reference = (
            f"ws_CO_forged{self.rng.randrange(10**12)}" if kind == "reference" else (txn.reference)
        )
        return "POST", self._callback(txn, 0, amount, reference), {}
