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
