"""Paystack-style card gateway simulator: initialize, checkout, verify, signed webhook."""

from __future__ import annotations

import html
import json
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from teleconsult.payments.money import exponent
from teleconsult.payments.providers.card import SIGNATURE_HEADER, sign
from teleconsult.payments.simulators.common import (
    Behaviour,
    Simulator,
    Txn,
    authed_json,
    json_error,
)

_REFERENCE = re.compile(r"^[A-Za-z0-9.=_-]{1,100}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_URL = re.compile(r"^https?://[^\s<>\"']{1,2000}$")


def _invalid_json() -> web.Response:
    return json_error(400, {"status": False, "message": "Invalid JSON"})


class CardSimulator(Simulator):
    name = "card"

    def __init__(
        self,
        *,
        secret_key: str,
        webhook_url: str | None = None,
        public_base: str = "",
        behaviour: Behaviour | None = None,
    ) -> None:
        super().__init__(behaviour)
        self.secret_key = secret_key
        # As set in the gateway's dashboard: webhooks go there, not to callback_url
        # (where the patient's browser returns after the checkout).
        self.webhook_url = webhook_url
        # The key webhooks are signed with (a rotation changes it before the API key).
        self.signing_key = secret_key
        self.public_base = public_base
        self.by_code: dict[str, str] = {}

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/transaction/initialize", self.initialize)
        app.router.add_get("/transaction/verify/{reference}", self.verify)
        app.router.add_get("/checkout/{code}", self.checkout)
        app.router.add_post("/checkout/{code}", self.complete)
        app.router.add_post("/refund", self.refund)
        app.router.add_get("/refund", self.list_refunds)
        app.router.add_get("/refund/{id}", self.fetch_refund)
        return app

    # --- refunds -------------------------------------------------------------------------

    def _of(self, transaction: object) -> Txn | None:
        """A transaction by its reference or its id (Paystack takes either)."""
        found = self.truth.get(str(transaction))
        if found is not None:
            return found
        return next(
            (t for t in self.truth.values() if str(t.extra.get("id")) == str(transaction)), None
        )

    def _refund_data(self, refund: Txn) -> dict[str, Any]:
        of = self.truth[refund.payer]
        return {
            "id": int(refund.reference),
            "transaction": {"id": of.extra.get("id"), "reference": of.reference,
                            "amount": of.amount, "currency": of.currency},
            "integration": 1,
            "amount": refund.amount,
            "deducted_amount": refund.amount,
            "currency": refund.currency,
            "channel": "card",
            "status": {"pending": "pending", "succeeded": "processed", "failed": "failed"}[
                refund.state()
            ],
            "customer_note": refund.extra.get("customer_note", ""),
            "merchant_note": refund.extra.get("merchant_note", ""),
            "transaction_reference": of.reference,
            "refund_reference": refund.extra.get("refund_reference"),
        }  # fmt: skip

    async def refund(self, request: web.Request) -> web.Response:
        body = await authed_json(request, self._auth_error(request), _invalid_json)
        if isinstance(body, web.Response):
            return body
        of = self._of(body.get("transaction"))
        if of is None:
            return json_error(404, {"status": False, "message": "Transaction not found"})
        left = self.refundable(of)
        amount = body.get("amount", left)
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            return json_error(400, {"status": False, "message": "Invalid amount"})
        if body.get("currency", of.currency) != of.currency:
            return json_error(400, {"status": False, "message": "Currency mismatch"})
        if amount > left:
            return json_error(
                400,
                {"status": False,
                 "message": "Refund amount cannot be greater than transaction amount"},
            )  # fmt: skip
        if self.api_fails():
            return json_error(500, {"status": False, "message": "An error occurred"})
        refund = self.new_refund(
            str(self.rng.randrange(10**6, 10**7)), amount, of.currency, of, self.webhook_url
        )
        refund.extra.update(
            customer_note=str(body.get("customer_note", ""))[:200],
            merchant_note=str(body.get("merchant_note", ""))[:200],
            refund_reference=secrets.token_hex(8),
        )
        if self.refund_answer_lost():
            return json_error(500, {"status": False, "message": "An error occurred"})
        return web.json_response(
            {"status": True, "message": "Refund has been queued for processing",
             "data": self._refund_data(refund)}
        )  # fmt: skip

    async def fetch_refund(self, request: web.Request) -> web.Response:
        refused = await self._read_refused(request)
        if refused is not None:
            return refused
        refund = self.refunds.get(request.match_info["id"])
        if refund is None:
            return json_error(404, {"status": False, "message": "Refund not found"})
        return web.json_response(
            {"status": True, "message": "Refund retrieved", "data": self._refund_data(refund)}
        )

    async def list_refunds(self, request: web.Request) -> web.Response:
        refused = await self._read_refused(request)
        if refused is not None:
            return refused
        of = self._of(request.query.get("transaction"))
        found = [
            self._refund_data(r)
            for r in self.refunds.values()
            if of is not None and r.payer == of.reference
        ]
        return web.json_response(
            {"status": True, "message": "Refunds retrieved", "data": found,
             "meta": {"total": len(found), "page": 1, "perPage": 50}}
        )  # fmt: skip

    def refund_callback_for(self, refund: Txn) -> tuple[str, bytes, dict[str, str]]:
        event = "refund.processed" if refund.outcome == "succeeded" else "refund.failed"
        return self._signed({"event": event, "data": self._refund_data(refund)}, self.signing_key)

    async def _read_refused(self, request: web.Request) -> web.Response | None:
        """The answer to a read that is not served: bad credentials, or a 500 (slow
        answers sleep here first)."""
        refused = self._auth_error(request)
        if refused is None and await self.api_misbehaves():
            refused = json_error(500, {"status": False, "message": "An error occurred"})
        return refused

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if not secrets.compare_digest(
            request.headers.get("Authorization", ""), f"Bearer {self.secret_key}"
        ):
            return json_error(401, {"status": False, "message": "Invalid key"})
        return None

    async def initialize(self, request: web.Request) -> web.Response:
        body = await authed_json(request, self._auth_error(request), _invalid_json)
        if isinstance(body, web.Response):
            return body
        email, amount, currency = body.get("email"), body.get("amount"), body.get("currency", "NGN")
        if not isinstance(email, str) or not _EMAIL.match(email):
            return json_error(400, {"status": False, "message": "Invalid Email Address Passed"})
        if isinstance(amount, str) and amount.isdigit():
            amount = int(amount)
        if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
            return json_error(400, {"status": False, "message": "Invalid Amount Sent"})
        try:
            exponent(str(currency))
        except Exception:
            return json_error(
                403, {"status": False, "message": "Currency not supported by merchant"}
            )
        # Where the payer's browser returns after the checkout (never the webhook).
        return_url = body.get("callback_url")
        if return_url is not None and (
            not isinstance(return_url, str) or not _URL.match(return_url)
        ):
            return json_error(400, {"status": False, "message": "Invalid callback_url"})
        reference = body.get("reference") or secrets.token_hex(10)
        if not isinstance(reference, str) or not _REFERENCE.match(reference):
            return json_error(400, {"status": False, "message": "Invalid transaction reference"})
        if reference in self.truth:
            return json_error(400, {"status": False, "message": "Duplicate Transaction Reference"})
        if self.api_fails():
            return json_error(500, {"status": False, "message": "An error occurred"})
        txn = self.new_txn(reference, amount, str(currency), email, self.webhook_url)
        code = secrets.token_hex(8)
        txn.extra["access_code"] = code
        txn.extra["callback_url"] = return_url
        txn.extra["id"] = self.rng.randrange(10**9, 10**10)
        self.by_code[code] = reference
        base = (
            self.public_base
            or f"{request.scheme}://{request.host}{request.path.rsplit('/transaction', 1)[0]}"
        )  # noqa: E501
        await self.answer_late()
        return web.json_response(
            {
                "status": True,
                "message": "Authorization URL created",
                "data": {
                    "authorization_url": f"{base}/checkout/{code}",
                    "access_code": code,
                    "reference": reference,
                },
            }
        )

    def _data(self, txn: Txn, *, state: str | None = None, amount: int | None = None,
              reference: str | None = None) -> dict[str, Any]:  # fmt: skip
        state = state or txn.state()
        status = {"pending": "abandoned", "succeeded": "success", "failed": "failed"}[state]
        return {
            "id": txn.extra.get("id"),
            "domain": "test",
            "status": status,
            "reference": reference or txn.reference,
            "amount": txn.amount if amount is None else amount,
            "currency": txn.currency,
            "gateway_response": {"success": "Successful", "failed": "Declined"}.get(
                status, "The transaction was not completed"
            ),
            "paid_at": datetime.now(UTC).isoformat() if status == "success" else None,
            "channel": "card",
            "customer": {"email": txn.payer},
        }

    async def verify(self, request: web.Request) -> web.Response:
        refused = await self._read_refused(request)
        if refused is not None:
            return refused
        txn = self.truth.get(request.match_info["reference"])
        if txn is None:
            return json_error(400, {"status": False, "message": "Transaction reference not found"})
        return web.json_response(
            {"status": True, "message": "Verification successful", "data": self._data(txn)}
        )

    def _txn_of(self, request: web.Request) -> Txn:
        reference = self.by_code.get(request.match_info["code"])
        if reference is None:
            raise web.HTTPNotFound()
        return self.truth[reference]

    async def checkout(self, request: web.Request) -> web.Response:
        """The hosted checkout page. The payer's answer is the simulator's (it comes at
        ``decide_at`` whatever is done here); "Pay" sends the browser back."""
        txn = self._txn_of(request)
        amount = html.escape(f"{txn.amount} {txn.currency}")
        return web.Response(
            text=f"<!doctype html><html lang=en><title>Checkout</title><main>"
            f"<h1>Simulated card checkout</h1><p>Simulated card checkout for {amount}: "
            f"{txn.state()}</p><form method=post><button type=submit>Pay {amount}</button>"
            f"</form></main></html>",
            content_type="text/html",
        )

    async def complete(self, request: web.Request) -> web.Response:
        """As Paystack after a checkout: the browser goes to the ``callback_url`` given
        at initialize, with ``trxref`` and ``reference`` added to its query."""
        txn = self._txn_of(request)
        target = txn.extra.get("callback_url")
        if not target:
            return web.Response(
                text="<!doctype html><title>Checkout</title><p>Payment submitted.</p>",
                content_type="text/html",
            )
        query = urlencode({"trxref": txn.reference, "reference": txn.reference})
        raise web.HTTPFound(f"{target}{'&' if '?' in target else '?'}{query}")

    def _signed(self, document: dict[str, Any], key: str) -> tuple[str, bytes, dict[str, str]]:
        body = json.dumps(document).encode()
        return "POST", body, {SIGNATURE_HEADER: sign(key, body)}

    def callback_for(self, txn: Txn) -> tuple[str, bytes, dict[str, str]] | None:
        if txn.state(time.monotonic() + 3600) != "succeeded":
            return None  # Paystack sends charge.success only; a failure shows on verify
        return self._signed({"event": "charge.success", "data": self._data(txn)}, self.signing_key)

    def forged_for(self, txn: Txn) -> tuple[str, bytes, dict[str, str]]:
        kind = self.forgery_kind()
        if kind == "signature":
            document = {"event": "charge.success", "data": self._data(txn, state="succeeded")}
            return self._signed(document, secrets.token_hex(24))
        if kind == "amount":  # signed, as a confused upstream might: the amount must still match
            data = self._data(txn, state="succeeded", amount=txn.amount + 1)
        else:
            data = self._data(txn, state="succeeded", reference=f"tc_{secrets.token_hex(16)}")
        return self._signed({"event": "charge.success", "data": data}, self.signing_key)
