"""Safaricom M-Pesa Daraja simulator: OAuth, STK push, STK query, stkCallback, and the
Reversal and Transaction Status APIs with their results POSTed to ``ResultURL``."""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
from datetime import datetime
from typing import Any

from aiohttp import web

from teleconsult.payments.simulators.common import (
    Behaviour,
    Simulator,
    Txn,
    authed_json,
    json_error,
)

RESULTS = {
    0: "The service request is processed successfully.",
    1: "The balance is insufficient for the transaction.",
    1032: "Request cancelled by user",
    1037: "DS timeout user cannot be reached",
    2001: "The initiator information is invalid.",
}
_REVERSAL_RESULTS = {
    "0": "The service request is processed successfully.",
    "2001": "The initiator information is invalid.",
    "R000001": "The transaction has already been reversed.",
    "R000002": "The OriginalTransID is invalid.",
}
_PHONE = re.compile(r"^2547[0-9]{8}$|^2541[0-9]{8}$")


def _error(status: int, code: str, message: str) -> web.Response:
    return json_error(
        status,
        {"requestId": f"{secrets.randbelow(10**5)}-{secrets.randbelow(10**8)}-1",
         "errorCode": code, "errorMessage": message},
    )  # fmt: skip


def _invalid_payload() -> web.Response:
    return _error(400, "400.002.05", "Invalid Request Payload")


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
        # The API operator of the Reversal and Transaction Status APIs.
        self.initiator = "testapi"
        self.security_credential = secrets.token_urlsafe(48)
        self.by_receipt: dict[str, Txn] = {}
        self.by_originator: dict[str, Txn] = {}  # reversals by OriginatorConversationID

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/oauth/v1/generate", self.oauth)
        app.router.add_post("/mpesa/stkpush/v1/processrequest", self.process_request)
        app.router.add_post("/mpesa/stkpushquery/v1/query", self.query)
        app.router.add_post("/mpesa/reversal/v1/request", self.reversal)
        app.router.add_post("/mpesa/transactionstatus/v1/query", self.transaction_status)
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
        body = await authed_json(request, self._auth_error(request), _invalid_payload)
        if isinstance(body, web.Response):
            return body
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
        txn.extra["receipt"] = self._receipt()
        self.by_receipt[txn.extra["receipt"]] = txn
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

    # --- Reversal and Transaction Status (refunds) ----------------------------------------

    def _receipt(self) -> str:
        return "".join(self.rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789", k=10))

    def _ids(self) -> tuple[str, str]:
        originator = f"{self.rng.randrange(10**4, 10**5)}-{self.rng.randrange(10**7, 10**8)}-1"
        return originator, f"AG_{time.strftime('%Y%m%d')}_{secrets.token_hex(10)}"

    async def _initiator_body(
        self, request: web.Request, command: str
    ) -> dict[str, Any] | web.Response:
        body = await authed_json(request, self._auth_error(request), _invalid_payload)
        if isinstance(body, web.Response):
            return body
        if body.get("CommandID") != command:
            return _error(400, "400.002.02", "Bad Request - Invalid CommandID")
        for name in ("ResultURL", "QueueTimeOutURL"):
            if not str(body.get(name, "")).startswith(("http://", "https://")):
                return _error(400, "400.002.02", f"Bad Request - Invalid {name}")
        if not 2 <= len(str(body.get("Remarks", ""))) <= 100:
            return _error(400, "400.002.02", "Bad Request - Invalid Remarks")
        if self.api_fails():
            return _error(500, "500.003.02", "System is busy. Please try again in few minutes.")
        return body

    def _credentials_ok(self, body: dict[str, Any]) -> bool:
        return body.get("Initiator") == self.initiator and secrets.compare_digest(
            str(body.get("SecurityCredential", "")), self.security_credential
        )

    async def reversal(self, request: web.Request) -> web.Response:
        body = await self._initiator_body(request, "TransactionReversal")
        if isinstance(body, web.Response):
            return body
        checks = {
            "ReceiverParty": str(body.get("ReceiverParty")) == self.shortcode,
            # sic: Daraja's spelling; "11" is an organisation's shortcode
            "RecieverIdentifierType": str(body.get("RecieverIdentifierType")) == "11",
            "Amount": isinstance(body.get("Amount"), int) and body["Amount"] >= 1,
            "TransactionID": isinstance(body.get("TransactionID"), str),
        }
        for name, ok in checks.items():
            if not ok:
                return _error(400, "400.002.02", f"Bad Request - Invalid {name}")
        originator, conversation = self._ids()
        of = self.by_receipt.get(body["TransactionID"])
        # Refused requests are answered later, as a failed result (as Daraja does).
        code = (
            "2001" if not self._credentials_ok(body)
            else "R000002" if of is None
            else "R000001" if body["Amount"] * 100 > self.refundable(of)
            else None
        )  # fmt: skip
        if of is None or code is not None:
            self.spawn(
                self._send_result(body["ResultURL"], code or "R000002", originator, conversation)
            )
        else:
            reversal = self.new_refund(
                conversation, body["Amount"] * 100, "KES", of, body["ResultURL"]
            )
            reversal.extra.update(originator=originator, receipt=self._receipt())
            self.by_originator[originator] = reversal
            if self.refund_answer_lost():
                return _error(500, "500.003.02", "System is busy. Please try again in few minutes.")
        return web.json_response(
            {
                "OriginatorConversationID": originator,
                "ConversationID": conversation,
                "ResponseCode": "0",
                "ResponseDescription": "Accept the service request successfully.",
            }
        )

    async def _send_result(self, url: str, code: str, originator: str, conversation: str) -> None:
        result = {
            "ResultType": 0, "ResultCode": code, "ResultDesc": _REVERSAL_RESULTS[code],
            "OriginatorConversationID": originator, "ConversationID": conversation,
            "TransactionID": self._receipt(),
        }  # fmt: skip
        txn = Txn(conversation, 0, "KES", "", url, "failed", time.monotonic())
        await self._send_later(txn, 0.0, ("POST", json.dumps({"Result": result}).encode(), {}))

    def refund_callback_for(self, refund: Txn) -> tuple[str, bytes, dict[str, str]]:
        code = "0" if refund.outcome == "succeeded" else "R000001"
        result = {
            "ResultType": 0, "ResultCode": int(code) if code == "0" else code,
            "ResultDesc": _REVERSAL_RESULTS[code],
            "OriginatorConversationID": refund.extra["originator"],
            "ConversationID": refund.reference, "TransactionID": refund.extra["receipt"],
            "ReferenceData": {"ReferenceItem": {"Key": "QueueTimeoutURL",
                                                "Value": refund.callback_url}},
        }  # fmt: skip
        return "POST", json.dumps({"Result": result}).encode(), {}

    async def transaction_status(self, request: web.Request) -> web.Response:
        body = await self._initiator_body(request, "TransactionStatusQuery")
        if isinstance(body, web.Response):
            return body
        if str(body.get("PartyA")) != self.shortcode or str(body.get("IdentifierType")) != "4":
            return _error(400, "400.002.02", "Bad Request - Invalid PartyA")
        originator, conversation = self._ids()
        reversal = self.by_originator.get(str(body.get("OriginalConversationID")))
        state = reversal.state() if reversal is not None else None
        values = {
            None: ("R000002", None), "pending": ("0", "Pending"),
            "succeeded": ("0", "Completed"), "failed": ("0", "Failed"),
        }  # fmt: skip
        code, status = values[state] if self._credentials_ok(body) else ("2001", None)
        result: dict[str, Any] = {
            "ResultType": 0, "ResultCode": code, "ResultDesc": _REVERSAL_RESULTS[code],
            "OriginatorConversationID": originator, "ConversationID": conversation,
            "TransactionID": reversal.extra["receipt"] if reversal else "",
        }  # fmt: skip
        if status is not None and reversal is not None:
            result["ResultParameters"] = {"ResultParameter": [
                {"Key": "ReceiptNo", "Value": reversal.extra["receipt"]},
                {"Key": "TransactionStatus", "Value": status},
                {"Key": "Amount", "Value": reversal.amount / 100},
                {"Key": "ReasonType", "Value": "Reversal"},
            ]}  # fmt: skip
        message: tuple[str, bytes, dict[str, str]] = (
            "POST",
            json.dumps({"Result": result}).encode(),
            {},
        )
        txn = Txn(conversation, 0, "KES", "", str(body["ResultURL"]), "failed", time.monotonic())
        if not self.chance(self.behaviour.drop_rate):
            self.spawn(self._send_later(txn, 0.05, message))
        return web.json_response(
            {
                "OriginatorConversationID": originator,
                "ConversationID": conversation,
                "ResponseCode": "0",
                "ResponseDescription": "Accept the service request successfully.",
            }
        )
