"""The one small interface every payment provider implements.

A provider initiates a payment, answers a status query, and parses its own
callbacks. Only what the provider *signs* (``Callback.verified``) may move money
on its own; an unsigned callback is a hint that makes us ask ``query`` before
anything changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol
from uuid import UUID

ProviderState = Literal["pending", "succeeded", "failed"]

# The reasons a failed payment may carry, the same for every provider (docs/payments.md).
# Each adapter maps its provider's own codes onto these and keeps the raw code beside
# them (``raw_reason``) for the accountant.
REASONS = frozenset(
    {
        "cancelled_by_user",  # the payer said no (MoMo APPROVAL_REJECTED, M-Pesa 1032)
        "timeout",  # the payer never answered (MoMo EXPIRED, M-Pesa 1037)
        "insufficient_funds",
        "wrong_pin",
        "declined",  # refused by the provider or the bank for another reason
        "payer_not_found",  # no such account or number
        "reversed",  # collected, then reversed by the provider
        "provider_error",  # the provider failed on its side
        "reference_not_found",  # the provider does not know the payment (yet)
        # Set by this server, not by a provider:
        "expired",  # still pending at PAYMENTS_PENDING_TIMEOUT
        "no_reference",  # the provider never named its reference
        "amount_mismatch",  # the provider collected another amount than we asked for
        "provider_unreachable",  # the first call never got an answer
        "initiation_error",  # starting the payment failed before the provider had it
    }
)


def reason_or_declined(reason: str) -> str:
    """``reason`` if it is one of REASONS, else ``declined``."""
    return reason if reason in REASONS else "declined"


class ProviderError(Exception):
    """The provider could not be reached or answered something unusable. Retryable:
    the payment stays pending and the reconciler asks again."""


class ProviderRefused(Exception):
    """The provider refused the request (bad number, amount, credentials): final."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadCallback(Exception):
    """A callback that cannot be trusted or read (bad signature, malformed body)."""

    def __init__(self, reason: str, *, signature: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.signature = signature


@dataclass(frozen=True)
class Initiation:
    payment_id: UUID
    amount: int  # minor units
    currency: str
    payer: str | None  # MSISDN for mobile money, e-mail for cards
    description: str
    callback_url: str  # where the provider's server sends its callbacks
    # Where the payer's browser goes after a hosted checkout page (card: Paystack's
    # ``callback_url``); None for providers without a browser step.
    return_url: str | None = None


@dataclass(frozen=True)
class Initiated:
    reference: str
    redirect_url: str | None = None


@dataclass(frozen=True)
class ProviderStatus:
    state: ProviderState
    amount: int | None = None  # minor units, when the provider says
    currency: str | None = None
    reason: str | None = None  # one of REASONS
    transaction_id: str | None = None
    raw_reason: str | None = None  # the provider's own code or text, as it came


@dataclass(frozen=True)
class Callback:
    reference: str
    event: str  # the dedupe key's last part (the status the callback claims)
    state: ProviderState
    verified: bool  # signed by the provider: may be applied without a status query
    amount: int | None = None
    currency: str | None = None
    reason: str | None = None  # one of REASONS
    transaction_id: str | None = None
    raw_reason: str | None = None


class PaymentProvider(Protocol):
    name: str

    def reference_for(self, payment_id: UUID) -> str | None:
        """The reference we choose before calling (so a lost answer can be queried),
        or None when the provider picks it."""
        ...

    def check(self, request: Initiation) -> None:
        """Raise ProviderRefused for what the provider would refuse (currency, amount,
        payer): called before the pending payment is saved, so a request that cannot
        go through never blocks its invoice."""
        ...

    async def initiate(self, request: Initiation) -> Initiated: ...

    async def query(self, reference: str) -> ProviderStatus: ...

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> Callback: ...


# --- refund payouts (0023) --------------------------------------------------------------


@dataclass(frozen=True)
class PayoutRequest:
    """Send ``amount`` of a succeeded payment back to its payer through the provider."""

    payout_id: UUID
    amount: int  # minor units
    currency: str
    payment_reference: str  # the payment's provider_reference (MoMo X-Reference-Id, card ref)
    payment_transaction_id: str | None  # M-Pesa receipt, card transaction id
    reason: str
    # Where the provider sends the payout's result: <base>/<payout id>/<result token>.
    result_url: str


@dataclass(frozen=True)
class PayoutStarted:
    reference: str | None  # the provider's id of the payout, when it named one
    originator_reference: str | None = None  # M-Pesa OriginatorConversationID


@dataclass(frozen=True)
class PayoutLookup:
    """What the reconciler knows of a pending payout when it asks the provider."""

    payout_id: UUID
    reference: str | None
    originator_reference: str | None
    payment_reference: str
    payment_transaction_id: str | None
    result_url: str


@dataclass(frozen=True)
class PayoutCallback:
    reference: str  # the provider's id of the payout (or ours, MoMo)
    state: ProviderState
    # True when the result itself is to be trusted (M-Pesa: its URL carried our secret
    # token and Daraja has no synchronous status query); False: a hint to query.
    trusted: bool
    amount: int | None = None
    reason: str | None = None
    transaction_id: str | None = None
    raw_reason: str | None = None
    originator_reference: str | None = None


class RefundPayer(Protocol):
    """A provider that can pay a refund back out (MoMo, M-Pesa, card)."""

    name: str

    def payout_reference_for(self, payout_id: UUID) -> str | None:
        """The payout's reference chosen before calling, or None when the provider names it."""
        ...

    def result_token(self, payout_id: UUID) -> str:
        """The secret in the result URL's path: only the provider, which got the URL
        from us over TLS, can call it (callbacks of MoMo and M-Pesa are not signed)."""
        ...

    def check_payout(self, request: PayoutRequest) -> None:
        """Raise ProviderRefused for what the provider would refuse, before anything is saved."""
        ...

    async def refund(self, request: PayoutRequest) -> PayoutStarted: ...

    async def query_refund(self, lookup: PayoutLookup) -> ProviderStatus:
        """The payout's state; ``pending`` also when the answer comes later as a result
        callback (M-Pesa's Transaction Status query)."""
        ...

    def parse_refund_callback(self, headers: Mapping[str, str], body: bytes) -> PayoutCallback: ...
