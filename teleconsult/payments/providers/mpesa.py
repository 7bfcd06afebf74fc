"""Safaricom M-Pesa Daraja STK push (Lipa na M-Pesa Online), its query and callback.

* ``GET /oauth/v1/generate?grant_type=client_credentials`` with Basic
  ``consumer_key:consumer_secret`` gives ``access_token`` and ``expires_in``.
* ``POST /mpesa/stkpush/v1/processrequest``: ``BusinessShortCode``, ``Password``
  = base64(shortcode + passkey + timestamp), ``Timestamp`` (YYYYMMDDHHMMSS),
  ``TransactionType`` CustomerPayBillOnline, ``Amount`` (whole shillings),
  ``PartyA`` and ``PhoneNumber`` (2547…), ``PartyB`` (the shortcode),
  ``CallBackURL``, ``AccountReference`` (≤ 12), ``TransactionDesc`` (≤ 13). The
  answer names ``MerchantRequestID`` and ``CheckoutRequestID`` (our reference)
  with ``ResponseCode`` "0".
* ``POST /mpesa/stkpushquery/v1/query`` answers ``ResultCode`` (0 paid, 1032
  cancelled, 1037 timed out, 1 insufficient funds, 2001 wrong PIN, …), or an error
  ``500.001.1001`` while the customer has not answered yet.
* The callback ``Body.stkCallback`` carries ``ResultCode`` and on success
  ``CallbackMetadata.Item`` (Amount, MpesaReceiptNumber, TransactionDate,
  PhoneNumber). It is not signed: a hint to query.

Refunds are reversals: ``POST /mpesa/reversal/v1/request`` (``Initiator``,
``SecurityCredential``, ``CommandID`` TransactionReversal, ``TransactionID`` the
payment's receipt, ``Amount``, ``ReceiverParty`` the shortcode,
``RecieverIdentifierType`` 11 (Daraja's spelling), ``ResultURL``, ``QueueTimeOutURL``,
``Remarks``, ``Occasion``) answers ``ConversationID``, ``OriginatorConversationID``
and ``ResponseCode`` "0" at once; the result is POSTed later to ``ResultURL``
(``Result.ResultCode``, ``ResultDesc``, ``ConversationID``, ``TransactionID``). It is
not signed and there is no synchronous status query, so the ResultURL carries a
secret per payout (``result_token``). A lost result is asked for again with the
Transaction Status query (``/mpesa/transactionstatus/v1/query``, ``CommandID``
TransactionStatusQuery, ``OriginalConversationID``), whose own result comes to the
same ResultURL (``ResultParameters``: ``TransactionStatus``, ``ReceiptNo``, ``Amount``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from uuid import UUID
from zoneinfo import ZoneInfo

import aiohttp

from teleconsult.core.payment_settings import MpesaSettings
from teleconsult.payments.money import Money
from teleconsult.payments.providers.base import (
    BadCallback,
    Callback,
    Initiated,
    Initiation,
    PayoutCallback,
    PayoutLookup,
    PayoutRequest,
    PayoutStarted,
    ProviderError,
    ProviderRefused,
    ProviderState,
    ProviderStatus,
)
from teleconsult.payments.providers.oauth import AccessToken

NAIROBI = ZoneInfo("Africa/Nairobi")
# The query's answer while the customer has not entered their PIN yet.
STILL_PROCESSING = "500.001.1001"
# Daraja's ResultCodes onto our reasons (base.REASONS); any other is ``declined``.
RESULT_REASONS = {
    1: "insufficient_funds",
    1001: "declined",  # another transaction of the subscriber is under way
    1019: "timeout",  # the transaction expired
    1025: "provider_error",
    1032: "cancelled_by_user",
    1037: "timeout",
    2001: "wrong_pin",
    9999: "provider_error",
}


def timestamp(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(NAIROBI).strftime("%Y%m%d%H%M%S")


def password(shortcode: str, passkey: str, stamp: str) -> str:
    return base64.b64encode(f"{shortcode}{passkey}{stamp}".encode()).decode()


def state_of(result_code: int) -> tuple[ProviderState, str | None]:
    if result_code == 0:
        return "succeeded", None
    return "failed", RESULT_REASONS.get(result_code, "declined")


def raw_of(result_code: int) -> str | None:
    """The provider's own code, kept beside our reason for the accountant."""
    return None if result_code == 0 else f"ResultCode {result_code}"


def msisdn(number: str) -> str:
    digits = number.strip().lstrip("+")
    if digits.startswith("0") and len(digits) == 10:
        digits = "254" + digits[1:]
    if not (digits.isdigit() and digits.startswith("254") and len(digits) == 12):
        raise ProviderRefused("an M-Pesa number looks like 2547XXXXXXXX")
    return digits


class MpesaProvider:
    name = "mpesa"

    def __init__(self, settings: MpesaSettings, session: aiohttp.ClientSession) -> None:
        self._s = settings
        self._http = session
        self._token = AccessToken("mpesa oauth", default_expiry=3599)

    def reference_for(self, payment_id: UUID) -> None:
        return None  # Daraja names the CheckoutRequestID

    async def _bearer(self) -> str:
        basic = base64.b64encode(
            f"{self._s.consumer_key}:{self._s.consumer_secret}".encode()
        ).decode()
        return await self._token.get(
            lambda: self._http.get(
                f"{self._s.base_url}/oauth/v1/generate",
                params={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}"},
            )
        )

    def _signed(self) -> dict[str, object]:
        stamp = timestamp()
        return {
            "BusinessShortCode": self._s.shortcode,
            "Password": password(self._s.shortcode, self._s.passkey, stamp),
            "Timestamp": stamp,
        }

    async def _call(self, path: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
        token = await self._bearer()
        try:
            async with self._http.post(
                f"{self._s.base_url}{path}",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
            ) as resp:
                answer = await resp.json(content_type=None)
                if resp.status == 401:
                    self._token.forget()
                if not isinstance(answer, dict):
                    raise ProviderError(f"mpesa {path}: not an object")
                return resp.status, answer
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ProviderError(f"mpesa {path}: {exc!r}") from exc

    def check(self, request: Initiation) -> None:
        self._checked(request)

    @staticmethod
    def _checked(request: Initiation) -> tuple[str, int]:
        """The payer's MSISDN and the whole shillings, or ProviderRefused."""
        if request.currency != "KES":
            raise ProviderRefused("M-Pesa takes KES only")
        if not request.payer:
            raise ProviderRefused("an M-Pesa number is required")
        phone = msisdn(request.payer)
        money = Money(request.amount, request.currency)
        shillings, cents = divmod(request.amount, 100)
        if cents or shillings < 1:
            raise ProviderRefused(
                f"{money.format()} is not a whole number of KES: M-Pesa takes whole shillings"
            )
        return phone, shillings

    async def initiate(self, request: Initiation) -> Initiated:
        phone, amount = self._checked(request)
        status, answer = await self._call(
            "/mpesa/stkpush/v1/processrequest",
            self._signed()
            | {
                "TransactionType": "CustomerPayBillOnline",
                "Amount": amount,
                "PartyA": phone,
                "PartyB": self._s.shortcode,
                "PhoneNumber": phone,
                "CallBackURL": request.callback_url,
                "AccountReference": request.payment_id.hex[:12],
                "TransactionDesc": "Consultation",
            },
        )
        if status == 200 and answer.get("ResponseCode") == "0":
            return Initiated(str(answer["CheckoutRequestID"]))
        if 400 <= status < 500 and status != 401:
            raise ProviderRefused(str(answer.get("errorMessage") or answer)[:200])
        raise ProviderError(f"mpesa processrequest: {status} {answer}")

    async def query(self, reference: str) -> ProviderStatus:
        status, answer = await self._call(
            "/mpesa/stkpushquery/v1/query", self._signed() | {"CheckoutRequestID": reference}
        )
        if answer.get("errorCode") == STILL_PROCESSING:
            return ProviderStatus("pending")
        if status == 400 and "CheckoutRequestID" in str(answer.get("errorMessage", "")):
            return ProviderStatus(  # until expiry
                "pending", reason="reference_not_found", raw_reason=str(answer.get("errorCode"))
            )
        if status != 200 or "ResultCode" not in answer:
            raise ProviderError(f"mpesa query: {status} {answer}")
        try:
            code = int(str(answer["ResultCode"]))
        except ValueError:
            raise ProviderError(f"mpesa query: ResultCode {answer['ResultCode']!r}") from None
        state, reason = state_of(code)
        return ProviderStatus(state, reason=reason, raw_reason=raw_of(code))

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> Callback:
        try:
            document = json.loads(body)
            cb = document["Body"]["stkCallback"]
            reference = cb["CheckoutRequestID"]
            code = int(cb["ResultCode"])
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            raise BadCallback("not an stkCallback") from None
        if not isinstance(reference, str) or not reference:
            raise BadCallback("no CheckoutRequestID")
        state, reason = state_of(code)
        amount = receipt = None
        metadata = cb.get("CallbackMetadata")
        items = metadata.get("Item") if isinstance(metadata, dict) else None
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            if item.get("Name") == "Amount":
                try:
                    amount = int(Decimal(str(item.get("Value"))).scaleb(2))
                except InvalidOperation:
                    raise BadCallback("bad Amount") from None
            elif item.get("Name") == "MpesaReceiptNumber":
                receipt = str(item.get("Value"))[:200]
        return Callback(
            reference=reference,
            event=str(code),
            state=state,
            verified=False,
            amount=amount,
            currency="KES" if amount is not None else None,
            reason=reason,
            transaction_id=receipt,
            raw_reason=raw_of(code),
        )

    # --- refunds (Reversal, Transaction Status) ------------------------------------------

    def payout_reference_for(self, payout_id: UUID) -> None:
        return None  # Daraja names the ConversationID

    def result_token(self, payout_id: UUID) -> str:
        key = self._s.consumer_secret.encode()
        return hmac.new(key, f"reversal-result:{payout_id}".encode(), hashlib.sha256).hexdigest()

    def _initiator(self) -> dict[str, object]:
        return {"Initiator": self._s.initiator, "SecurityCredential": self._s.security_credential}

    def check_payout(self, request: PayoutRequest) -> None:
        if not self._s.initiator or not self._s.security_credential:
            raise ProviderRefused(
                "M-Pesa reversals need PAYMENTS_MPESA_INITIATOR and its credential"
            )
        if not request.payment_transaction_id:
            raise ProviderRefused("the payment has no M-Pesa receipt to reverse")
        if request.currency != "KES" or request.amount % 100 or request.amount <= 0:
            raise ProviderRefused("M-Pesa reverses whole shillings (KES) only")

    async def refund(self, request: PayoutRequest) -> PayoutStarted:
        self.check_payout(request)
        status, answer = await self._call(
            "/mpesa/reversal/v1/request",
            self._initiator()
            | {
                "CommandID": "TransactionReversal",
                "TransactionID": request.payment_transaction_id,
                "Amount": request.amount // 100,
                "ReceiverParty": self._s.shortcode,
                "RecieverIdentifierType": "11",  # sic: Daraja's spelling
                "ResultURL": request.result_url,
                "QueueTimeOutURL": request.result_url,
                "Remarks": (request.reason[:100] or "Refund").ljust(2, "."),
                "Occasion": request.payout_id.hex,
            },
        )
        if status == 200 and str(answer.get("ResponseCode")) == "0":
            return PayoutStarted(
                str(answer["ConversationID"]), str(answer.get("OriginatorConversationID") or "")
            )
        if 400 <= status < 500 and status != 401:
            raise ProviderRefused(str(answer.get("errorMessage") or answer)[:200])
        raise ProviderError(f"mpesa reversal: {status} {answer}")

    async def query_refund(self, lookup: PayoutLookup) -> ProviderStatus:
        """Ask Daraja to send the reversal's status to the payout's ResultURL: pending
        here, final when that result arrives."""
        if not lookup.originator_reference or not lookup.payment_transaction_id:
            return ProviderStatus("pending", reason="reference_not_found")
        status, answer = await self._call(
            "/mpesa/transactionstatus/v1/query",
            self._initiator()
            | {
                "CommandID": "TransactionStatusQuery",
                "TransactionID": lookup.payment_transaction_id,
                "OriginalConversationID": lookup.originator_reference,
                "PartyA": self._s.shortcode,
                "IdentifierType": "4",
                "ResultURL": lookup.result_url,
                "QueueTimeOutURL": lookup.result_url,
                "Remarks": "Refund status",
                "Occasion": lookup.payout_id.hex,
            },
        )
        if status == 200 and str(answer.get("ResponseCode")) == "0":
            return ProviderStatus("pending")
        raise ProviderError(f"mpesa transaction status: {status} {answer}")

    def parse_refund_callback(self, headers: Mapping[str, str], body: bytes) -> PayoutCallback:
        """A reversal's result, or a Transaction Status result about it. Trusted: the
        caller checked the secret token of its URL."""
        try:
            result = json.loads(body)["Result"]
            code = str(result["ResultCode"])
            conversation = str(result["ConversationID"])
            originator = str(result.get("OriginatorConversationID") or "") or None
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            raise BadCallback("not a Daraja Result") from None
        params = result.get("ResultParameters")
        items = params.get("ResultParameter") if isinstance(params, dict) else None
        values = {
            str(i.get("Key")): i.get("Value")
            for i in (items if isinstance(items, list) else [])
            if isinstance(i, dict)
        }
        raw = None if code == "0" else f"ResultCode {code}: {str(result.get('ResultDesc'))[:120]}"
        if "TransactionStatus" in values:  # a Transaction Status result about the reversal
            if code != "0":
                return PayoutCallback(conversation, "pending", trusted=True, raw_reason=raw)
            word = str(values["TransactionStatus"]).lower()
            if word not in ("completed", "failed", "declined", "cancelled"):
                return PayoutCallback(conversation, "pending", trusted=True)
            done = word == "completed"
            return PayoutCallback(
                conversation,
                "succeeded" if done else "failed",
                trusted=True,
                reason=None if done else "declined",
                transaction_id=str(values.get("ReceiptNo") or "")[:200] or None,
                raw_reason=None if done else f"TransactionStatus {values['TransactionStatus']}",
            )
        if code == "0":
            return PayoutCallback(
                conversation, "succeeded", trusted=True,
                transaction_id=str(result.get("TransactionID") or "")[:200] or None,
                originator_reference=originator,
            )  # fmt: skip
        reason = RESULT_REASONS.get(int(code), "declined") if code.isdigit() else "declined"
        return PayoutCallback(
            conversation, "failed", trusted=True, reason=reason, raw_reason=raw,
            originator_reference=originator,
        )  # fmt: skip
