"""A card gateway in the Paystack style: initialize, redirect, verify, signed webhook.

* ``POST /transaction/initialize`` (``Authorization: Bearer <secret key>``) with
  ``email``, ``amount`` (minor units), ``currency``, ``reference`` (ours, so a lost
  answer can still be verified), ``callback_url`` (where the patient's browser
  returns: ``/pay.html?payment=<id>``, to which the gateway adds ``trxref`` and
  ``reference``): answers ``{status: true, data: {authorization_url, access_code,
  reference}}``. The patient is sent to ``authorization_url``. Webhooks go to the
  URL set in the gateway's dashboard, never to ``callback_url``.
* ``GET /transaction/verify/{reference}``: ``data.status`` success, failed,
  abandoned, ongoing, pending…, with ``amount`` and ``currency``.
* The webhook (``charge.success``) is signed: ``x-paystack-signature`` is the hex
  HMAC-SHA512 of the raw body with the secret key. Verified on the raw bytes, in
  constant time, with the current and (during a rotation) the previous key. Paystack
  sends no timestamp, so there is no tolerance window to check; replays are
  harmless (deduplicated by reference and event, and a final payment stays final).

Refunds: ``POST /refund`` (``transaction`` = the payment's reference, ``amount``,
``currency``, ``customer_note``, ``merchant_note``) queues one and answers its ``id``
and ``status`` (pending, processing, processed, failed, needs-attention); ``GET
/refund/{id}`` reads it; ``GET /refund?transaction=…`` lists a transaction's refunds.
The gateway names the refund's id, so ours goes in ``merchant_note``: a refund whose
answer was lost is found in that list. Its webhooks (``refund.processed``,
``refund.failed``, …) come signed to the same dashboard URL; they make us read the
refund.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from uuid import UUID

import aiohttp

from teleconsult.core.payment_settings import CardSettings
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

SIGNATURE_HEADER = "x-paystack-signature"
_STATES: dict[str, ProviderState] = {
    "success": "succeeded",
    "failed": "failed",
    "reversed": "failed",
    "abandoned": "pending",  # the patient may still come back to the checkout page
    "ongoing": "pending",
    "pending": "pending",
    "processing": "pending",
    "queued": "pending",
}


_REFUND_STATES: dict[str, ProviderState] = {
    "processed": "succeeded",
    "failed": "failed",
    "pending": "pending",
    "processing": "pending",
    "needs-attention": "pending",  # the gateway's staff look at it; it ends processed or failed
}


def is_refund_event(body: bytes) -> bool:
    """A ``refund.*`` webhook (read before its signature is checked, only to route it)."""
    try:
        event = json.loads(body).get("event")
    except (ValueError, UnicodeDecodeError, AttributeError):
        return False
    return isinstance(event, str) and event.startswith("refund.")


def merchant_note(payout_id: UUID) -> str:
    return f"teleconsult payout {payout_id}"


def _refund_status(data: object) -> ProviderStatus:
    if not isinstance(data, dict):
        raise ProviderError("card refund: no data")
    raw = str(data.get("status", "")).lower()
    state = _REFUND_STATES.get(raw)
    if state is None:
        raise ProviderError(f"card refund: unknown status {raw!r}")
    amount = data.get("amount")
    return ProviderStatus(
        state,
        amount=amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
        currency=data.get("currency") if isinstance(data.get("currency"), str) else None,
        reason="declined" if state == "failed" else None,
        transaction_id=str(data["id"]) if data.get("id") is not None else None,
        raw_reason=None if state != "failed" else f"refund {raw}",
    )


# Words of the gateway's free-text ``gateway_response`` onto our reasons (base.REASONS).
_RESPONSE_WORDS = (
    ("insufficient", "insufficient_funds"),
    ("pin", "wrong_pin"),
    ("timed out", "timeout"),
    ("timeout", "timeout"),
    ("cancel", "cancelled_by_user"),
)


def normalise(state: ProviderState, status: str, response: str) -> str | None:
    """Our reason for a failed charge: ``reversed`` from the status, else from the
    gateway's words, else ``declined``; None unless failed."""
    if state != "failed":
        return None
    if status == "reversed":
        return "reversed"
    words = response.lower()
    for word, reason in _RESPONSE_WORDS:
        if word in words:
            return reason
    return "declined"


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha512).hexdigest()


def signature_ok(secrets: tuple[str, ...], body: bytes, signature: str | None) -> bool:
    """Constant-time comparison against each accepted key (all are tried, always)."""
    if not signature:
        return False
    given = signature.strip().lower().encode()
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(sign(secret, body).encode(), given)
    return ok


def _status(data: Mapping[str, object]) -> ProviderStatus:
    raw = str(data.get("status", "")).lower()
    state = _STATES.get(raw)
    if state is None:
        raise ProviderError(f"card: unknown status {raw!r}")
    amount = data.get("amount")
    currency = data.get("currency")
    response = str(data.get("gateway_response") or "")[:160]
    return ProviderStatus(
        state,
        amount=amount if isinstance(amount, int) and not isinstance(amount, bool) else None,
        currency=currency if isinstance(currency, str) else None,
        reason=normalise(state, raw, response),
        transaction_id=str(data["id"]) if data.get("id") is not None else None,
        raw_reason=None if state == "succeeded" else f"{raw}: {response}"[:200],
    )


class CardProvider:
    name = "card"

    def __init__(self, settings: CardSettings, session: aiohttp.ClientSession) -> None:
        self._s = settings
        self._http = session

    @property
    def secrets(self) -> tuple[str, ...]:
        prev = self._s.previous_secret_key
        return (self._s.secret_key,) if not prev else (self._s.secret_key, prev)

    def reference_for(self, payment_id: UUID) -> str:
        return f"tc_{payment_id.hex}"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._s.secret_key}"}

    def check(self, request: Initiation) -> None:
        if request.amount <= 0:
            raise ProviderRefused("the amount must be positive")
        if request.payer is not None and "@" not in request.payer:
            raise ProviderRefused("a card payment's payer is an e-mail address")

    async def initiate(self, request: Initiation) -> Initiated:
        self.check(request)
        reference = self.reference_for(request.payment_id)
        email = request.payer or f"{request.payment_id.hex}@{self._s.checkout_email_domain}"
        body: dict[str, object] = {
            "email": email,
            "amount": request.amount,
            "currency": request.currency,
            "reference": reference,
            "metadata": {"payment_id": str(request.payment_id)},
        }
        # Paystack's callback_url is where the payer's browser returns after checkout;
        # its webhooks go to the URL set in the gateway's dashboard (docs/payments.md).
        if request.return_url is not None:
            body["callback_url"] = request.return_url
        try:
            async with self._http.post(
                f"{self._s.base_url}/transaction/initialize", json=body, headers=self._auth()
            ) as resp:
                answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ProviderError(f"card initialize: {exc!r}") from exc
        if resp.status == 200 and isinstance(answer, dict) and answer.get("status") is True:
            data = answer["data"]
            return Initiated(str(data["reference"]), str(data["authorization_url"]))
        message = str(answer.get("message") if isinstance(answer, dict) else answer)[:200]
        if resp.status == 400 and "duplicate" in message.lower():
            # The reference exists: an earlier attempt got through; verify will tell.
            return Initiated(reference)
        if 400 <= resp.status < 500 and resp.status != 401:
            raise ProviderRefused(message)
        raise ProviderError(f"card initialize: {resp.status} {message}")

    async def query(self, reference: str) -> ProviderStatus:
        try:
            async with self._http.get(
                f"{self._s.base_url}/transaction/verify/{reference}", headers=self._auth()
            ) as resp:
                answer = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ProviderError(f"card verify: {exc!r}") from exc
        if resp.status == 400 and isinstance(answer, dict) and answer.get("status") is False:
            # "Transaction reference not found": not (yet) initialized; pending until
            # the payment expires (a request we gave up on may still land).
            return ProviderStatus(
                "pending", reason="reference_not_found", raw_reason=str(answer.get("message"))
            )
        if resp.status != 200 or not isinstance(answer, dict) or "data" not in answer:
            raise ProviderError(f"card verify: {resp.status}")
        return _status(answer["data"])

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> Callback:
        if not signature_ok(self.secrets, body, headers.get(SIGNATURE_HEADER)):
            raise BadCallback("bad signature", signature=True)
        try:
            document = json.loads(body)
            event = str(document["event"])
            data = document["data"]
            reference = str(data["reference"])
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            raise BadCallback("not a webhook event") from None
        try:
            status = _status(data)
        except ProviderError as exc:
            raise BadCallback(str(exc)) from None
        if event == "charge.success" and status.state != "succeeded":
            raise BadCallback("charge.success without a successful charge")
        return Callback(
            reference=reference,
            event=event[:64],
            state=status.state,
            verified=True,
            amount=status.amount,
            currency=status.currency,
            reason=status.reason,
            transaction_id=status.transaction_id,
            raw_reason=status.raw_reason,
        )

    # --- refunds -------------------------------------------------------------------------

    def payout_reference_for(self, payout_id: UUID) -> None:
        return None  # the gateway names the refund's id; ours is in merchant_note

    def result_token(self, payout_id: UUID) -> str:
        return sign(self._s.secret_key, f"refund-result:{payout_id}".encode())[:64]

    def check_payout(self, request: PayoutRequest) -> None:
        if request.amount <= 0:
            raise ProviderRefused("the amount must be positive")

    async def _refund_call(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, object] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, object]:
        try:
            async with self._http.request(
                method, f"{self._s.base_url}{path}", headers=self._auth(), json=json_body,
                params=params,
            ) as resp:  # fmt: skip
                return resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ProviderError(f"card {path}: {exc!r}") from exc

    async def refund(self, request: PayoutRequest) -> PayoutStarted:
        self.check_payout(request)
        status, answer = await self._refund_call(
            "POST",
            "/refund",
            json_body={
                "transaction": request.payment_reference,
                "amount": request.amount,
                "currency": request.currency,
                "customer_note": request.reason[:200],
                "merchant_note": merchant_note(request.payout_id),
            },
        )
        ok = isinstance(answer, dict) and answer.get("status") is True
        if status == 200 and ok and isinstance(answer, dict):
            data = answer.get("data")
            if isinstance(data, dict) and data.get("id") is not None:
                return PayoutStarted(str(data["id"]))
        message = str(answer.get("message") if isinstance(answer, dict) else answer)[:200]
        if 400 <= status < 500 and status != 401:
            raise ProviderRefused(message)
        raise ProviderError(f"card refund: {status} {message}")

    async def query_refund(self, lookup: PayoutLookup) -> ProviderStatus:
        if lookup.reference is not None:
            status, answer = await self._refund_call("GET", f"/refund/{lookup.reference}")
            if status != 200 or not isinstance(answer, dict):
                raise ProviderError(f"card refund: {status}")
            return _refund_status(answer.get("data"))
        # The answer to our POST was lost: find ours among the transaction's refunds.
        status, answer = await self._refund_call(
            "GET", "/refund", params={"transaction": lookup.payment_reference}
        )
        if (
            status != 200
            or not isinstance(answer, dict)
            or not isinstance(answer.get("data"), list)
        ):
            raise ProviderError(f"card refund list: {status}")
        note = merchant_note(lookup.payout_id)
        for data in answer["data"]:
            if isinstance(data, dict) and data.get("merchant_note") == note:
                return _refund_status(data)
        return ProviderStatus("pending", reason="reference_not_found")

    def parse_refund_callback(self, headers: Mapping[str, str], body: bytes) -> PayoutCallback:
        if not signature_ok(self.secrets, body, headers.get(SIGNATURE_HEADER)):
            raise BadCallback("bad signature", signature=True)
        try:
            data = json.loads(body)["data"]
            reference = str(data["id"])
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            raise BadCallback("not a refund event") from None
        try:
            status = _refund_status(data)
        except ProviderError as exc:
            raise BadCallback(str(exc)) from None
        return PayoutCallback(reference, status.state, trusted=False, amount=status.amount)
