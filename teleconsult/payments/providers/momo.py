"""MTN MoMo Collection: requesttopay, its status, and its (unsigned) callback.

* ``POST /collection/token/`` with Basic ``user_id:api_key`` and
  ``Ocp-Apim-Subscription-Key`` gives a bearer token (``expires_in`` seconds).
* ``POST /collection/v1_0/requesttopay`` with ``X-Reference-Id`` (a UUID we choose:
  the provider's idempotency key, and what we query by), ``X-Target-Environment``,
  ``X-Callback-Url``; body ``amount`` (string, major units), ``currency``,
  ``externalId``, ``payer {partyIdType: MSISDN, partyId}``, ``payerMessage``,
  ``payeeNote``. Answered 202 with no body; 409 for a reference used before.
* ``GET /collection/v1_0/requesttopay/{referenceId}``: ``status`` PENDING,
  SUCCESSFUL or FAILED (with ``reason``), ``financialTransactionId``.
* The callback is a PUT (or POST) to the callback URL with the status body. It is
  not signed, so it is only a hint to query.

Refunds go through the Disbursement product (its own API user and subscription key,
``POST /disbursement/token/``): ``POST /disbursement/v1_0/refund`` with
``X-Reference-Id`` (the payout id, chosen before calling), ``X-Callback-Url``; body
``amount``, ``currency``, ``externalId``, ``payerMessage``, ``payeeNote``,
``referenceIdToRefund`` (the requesttopay's X-Reference-Id). Answered 202; then
``GET /disbursement/v1_0/refund/{referenceId}`` gives ``status`` as above.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from uuid import UUID

import aiohttp

from teleconsult.core.payment_settings import MomoSettings
from teleconsult.payments.money import Money, parse_major
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

_STATES: dict[str, ProviderState] = {
    "PENDING": "pending",
    "SUCCESSFUL": "succeeded",
    "FAILED": "failed",
    "REJECTED": "failed",
    "TIMEOUT": "failed",
}


# MTN's failure reasons (the ``reason`` of a FAILED requesttopay) onto ours.
REASONS: dict[str, str] = {
    "APPROVAL_REJECTED": "cancelled_by_user",
    "TRANSACTION_CANCELED": "cancelled_by_user",
    "EXPIRED": "timeout",
    "NOT_ENOUGH_FUNDS": "insufficient_funds",
    "PAYER_LIMIT_REACHED": "declined",
    "PAYEE_NOT_ALLOWED_TO_RECEIVE": "declined",
    "NOT_ALLOWED": "declined",
    "NOT_ALLOWED_TARGET_ENVIRONMENT": "declined",
    "COULD_NOT_PERFORM_TRANSACTION": "declined",
    "PAYER_NOT_FOUND": "payer_not_found",
    "PAYEE_NOT_FOUND": "declined",
    "INVALID_CALLBACK_URL_HOST": "declined",
    "INVALID_CURRENCY": "declined",
    "INTERNAL_PROCESSING_ERROR": "provider_error",
    "SERVICE_UNAVAILABLE": "provider_error",
    "RESOURCE_NOT_FOUND": "reference_not_found",
    # A status of TIMEOUT or REJECTED without a reason.
    "TIMEOUT": "timeout",
    "REJECTED": "declined",
}
_PARTY = re.compile(r"^\+?[0-9]{8,15}$")


def _reason(value: object) -> str | None:
    if isinstance(value, dict):  # older API versions: {"code": ..., "message": ...}
        value = value.get("code") or value.get("message")
    return None if value is None else str(value)[:200]


def normalise(state: ProviderState, raw: str | None) -> str | None:
    """Our reason (base.REASONS) for MTN's ``raw`` one; None unless failed."""
    if state != "failed":
        return None
    return REASONS.get((raw or "").strip().upper(), "declined")


def _status_of(body: object) -> tuple[str, ProviderState, Mapping[str, object]]:
    if not isinstance(body, dict) or not isinstance(body.get("status"), str):
        raise BadCallback("not a requesttopay status")
    state = _STATES.get(body["status"].upper())
    if state is None:
        raise BadCallback(f"unknown status {body['status']!r}")
    return body["status"].upper(), state, body


def _amount(body: Mapping[str, object]) -> tuple[int | None, str | None]:
    currency = body.get("currency")
    amount = body.get("amount")
    if not isinstance(currency, str) or not isinstance(amount, str | int):
        return None, None
    try:
        return parse_major(str(amount), currency).minor, currency
    except Exception:
        return None, None


class MomoProvider:
    name = "momo"

    def __init__(self, settings: MomoSettings, session: aiohttp.ClientSession) -> None:
        self._s = settings
        self._http = session
        self._token = AccessToken("momo token", default_expiry=3600)
        self._disbursement_token = AccessToken("momo disbursement token", default_expiry=3600)

    def reference_for(self, payment_id: UUID) -> str:
        return str(payment_id)

    def _headers(self, token: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token}",
            "X-Target-Environment": self._s.target_environment,
            "Ocp-Apim-Subscription-Key": self._s.subscription_key,
        }

    async def _bearer(self) -> str:
        basic = base64.b64encode(f"{self._s.user_id}:{self._s.api_key}".encode()).decode()
        return await self._token.get(
            lambda: self._http.post(
                f"{self._s.base_url}/collection/token/",
                headers={
                    "Authorization": f"Basic {basic}",
                    "Ocp-Apim-Subscription-Key": self._s.subscription_key,
                },
            )
        )

    def check(self, request: Initiation) -> None:
        if not request.payer or not _PARTY.match(request.payer):
            raise ProviderRefused("a mobile money number (8 to 15 digits) is required")
        if request.amount <= 0:
            raise ProviderRefused("the amount must be positive")

    async def initiate(self, request: Initiation) -> Initiated:
        reference = self.reference_for(request.payment_id)
        self.check(request)
        assert request.payer is not None
        body = {
            "amount": Money(request.amount, request.currency).major_string(),
            "currency": request.currency,
            "externalId": str(request.payment_id),
            "payer": {"partyIdType": "MSISDN", "partyId": request.payer.lstrip("+")},
            "payerMessage": request.description[:160],
            "payeeNote": request.description[:160],
        }
        token = await self._bearer()
        headers = self._headers(token) | {
            "X-Reference-Id": reference,
            "X-Callback-Url": request.callback_url,
        }
        try:
            async with self._http.post(
                f"{self._s.base_url}/collection/v1_0/requesttopay", json=body, headers=headers
            ) as resp:
                text = await resp.text()
                # 409: this reference exists, so an earlier attempt got through.
                if resp.status in (202, 409):
                    return Initiated(reference)
                if resp.status == 401:
                    self._token.forget()
                if 400 <= resp.status < 500 and resp.status != 401:
                    raise ProviderRefused(f"momo {resp.status}: {text[:160]}")
                raise ProviderError(f"momo requesttopay: {resp.status} {text[:160]}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderError(f"momo requesttopay: {exc!r}") from exc

    async def query(self, reference: str) -> ProviderStatus:
        token = await self._bearer()
        return await self._status(
            f"{self._s.base_url}/collection/v1_0/requesttopay/{reference}",
            self._headers(token),
            self._token,
        )

    async def _status(self, url: str, headers: dict[str, str], kept: AccessToken) -> ProviderStatus:
        """A requesttopay's or a refund's status (the same shape)."""
        try:
            async with self._http.get(url, headers=headers) as resp:
                body = await resp.json(content_type=None)
                if resp.status == 404:
                    # Not (yet) known: a request we gave up on may still land. Pending
                    # until it expires (the service decides then).
                    return ProviderStatus(
                        "pending", reason="reference_not_found", raw_reason="RESOURCE_NOT_FOUND"
                    )
                if resp.status == 401:
                    kept.forget()
                if resp.status != 200:
                    raise ProviderError(f"momo status: {resp.status}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ProviderError(f"momo status: {exc!r}") from exc
        try:
            status, state, fields = _status_of(body)
        except BadCallback as exc:
            raise ProviderError(exc.reason) from None
        amount, currency = _amount(fields)
        raw = _reason(fields.get("reason")) or (status if state == "failed" else None)
        return ProviderStatus(
            state,
            amount=amount,
            currency=currency,
            reason=normalise(state, raw),
            transaction_id=_reason(fields.get("financialTransactionId")),
            raw_reason=raw,
        )

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> Callback:
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise BadCallback("not JSON") from None
        status, state, fields = _status_of(document)
        reference = fields.get("referenceId") or headers.get("X-Reference-Id")
        if not isinstance(reference, str):
            # MoMo's callback body carries externalId: ours is the payment id, which is
            # also the reference we chose.
            reference = fields.get("externalId")
        if not isinstance(reference, str) or not reference:
            raise BadCallback("no reference")
        amount, currency = _amount(fields)
        raw = _reason(fields.get("reason")) or (status if state == "failed" else None)
        return Callback(
            reference=reference,
            event=status,
            state=state,
            verified=False,
            amount=amount,
            currency=currency,
            reason=normalise(state, raw),
            transaction_id=_reason(fields.get("financialTransactionId")),
            raw_reason=raw,
        )

    # --- refunds (Disbursement) ---------------------------------------------------------

    def _disbursement(self) -> tuple[str, str, str]:
        s = self._s
        return (
            s.disbursement_user_id or s.user_id,
            s.disbursement_api_key or s.api_key,
            s.disbursement_subscription_key or s.subscription_key,
        )

    async def _disbursement_headers(self) -> dict[str, str]:
        user, api_key, subscription = self._disbursement()
        basic = base64.b64encode(f"{user}:{api_key}".encode()).decode()
        token = await self._disbursement_token.get(
            lambda: self._http.post(
                f"{self._s.base_url}/disbursement/token/",
                headers={
                    "Authorization": f"Basic {basic}",
                    "Ocp-Apim-Subscription-Key": subscription,
                },
            )
        )
        return {
            "Authorization": f"Bearer {token}",
            "X-Target-Environment": self._s.target_environment,
            "Ocp-Apim-Subscription-Key": subscription,
        }

    def payout_reference_for(self, payout_id: UUID) -> str:
        return str(payout_id)

    def result_token(self, payout_id: UUID) -> str:
        key = self._disbursement()[1].encode()
        return hmac.new(key, f"refund-result:{payout_id}".encode(), hashlib.sha256).hexdigest()

    def check_payout(self, request: PayoutRequest) -> None:
        if request.amount <= 0:
            raise ProviderRefused("the amount must be positive")

    async def refund(self, request: PayoutRequest) -> PayoutStarted:
        self.check_payout(request)
        reference = self.payout_reference_for(request.payout_id)
        body = {
            "amount": Money(request.amount, request.currency).major_string(),
            "currency": request.currency,
            "externalId": str(request.payout_id),
            "payerMessage": request.reason[:160],
            "payeeNote": request.reason[:160],
            "referenceIdToRefund": request.payment_reference,
        }
        headers = await self._disbursement_headers() | {
            "X-Reference-Id": reference,
            "X-Callback-Url": request.result_url,
        }
        try:
            async with self._http.post(
                f"{self._s.base_url}/disbursement/v1_0/refund", json=body, headers=headers
            ) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ProviderError(f"momo refund: {exc!r}") from exc
        if resp.status in (202, 409):  # 409: an earlier attempt with this reference got through
            return PayoutStarted(reference)
        if resp.status == 401:
            self._disbursement_token.forget()
        elif 400 <= resp.status < 500:
            raise ProviderRefused(f"momo {resp.status}: {text[:160]}")
        raise ProviderError(f"momo refund: {resp.status} {text[:160]}")

    async def query_refund(self, lookup: PayoutLookup) -> ProviderStatus:
        reference = lookup.reference or self.payout_reference_for(lookup.payout_id)
        return await self._status(
            f"{self._s.base_url}/disbursement/v1_0/refund/{reference}",
            await self._disbursement_headers(),
            self._disbursement_token,
        )

    def parse_refund_callback(self, headers: Mapping[str, str], body: bytes) -> PayoutCallback:
        cb = self.parse_callback(headers, body)
        return PayoutCallback(reference=cb.reference, state=cb.state, trusted=False)
