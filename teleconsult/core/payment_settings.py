"""Payment settings (issue 15): one frozen dataclass per provider, read with the others.

Every secret may come from ``NAME_FILE``. A provider is on when its base URL is
set (``PAYMENTS_MOMO_URL``, ``PAYMENTS_MPESA_URL``, ``PAYMENTS_CARD_URL``); cash is
always on. The card gateway's webhook is verified with ``PAYMENTS_CARD_SECRET_KEY``
and, during a rotation, ``PAYMENTS_CARD_PREVIOUS_SECRET_KEY``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from teleconsult.core.errors import ConfigError


class _Reader(Protocol):
    def get(self, name: str) -> str | None: ...
    def text(self, name: str, default: str) -> str: ...
    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int: ...
    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float: ...
    def flag(self, name: str, default: bool) -> bool: ...
    def url(self, name: str, schemes: tuple[str, ...]) -> str | None: ...


@dataclass(frozen=True)
class MomoSettings:
    base_url: str
    user_id: str
    api_key: str = field(repr=False)
    subscription_key: str = field(repr=False)
    target_environment: str = "sandbox"
    # The Disbursement product (refunds) has its own API user and subscription key;
    # None: the Collection ones.
    disbursement_user_id: str | None = None
    disbursement_api_key: str | None = field(repr=False, default=None)
    disbursement_subscription_key: str | None = field(repr=False, default=None)


@dataclass(frozen=True)
class MpesaSettings:
    base_url: str
    consumer_key: str = field(repr=False)
    consumer_secret: str = field(repr=False)
    shortcode: str = "174379"
    passkey: str = field(repr=False, default="")
    # The Reversal and Transaction Status APIs (refunds): the API operator's name and its
    # encrypted password; None: refunds are paid out at the desk, not reversed.
    initiator: str | None = None
    security_credential: str | None = field(repr=False, default=None)


@dataclass(frozen=True)
class CardSettings:
    base_url: str
    secret_key: str = field(repr=False)
    previous_secret_key: str | None = field(repr=False, default=None)
    checkout_email_domain: str = "patients.invalid"


@dataclass(frozen=True)
class PaymentSettings:
    momo: MomoSettings | None = None
    mpesa: MpesaSettings | None = None
    card: CardSettings | None = None
    # Where providers send callbacks: <callback_base_url>/api/v1/webhooks/payments/<name>.
    callback_base_url: str = "http://127.0.0.1:8080"
    # PUBLIC_URL: where a card payer's browser returns after the gateway's checkout
    # (<public_url>/pay.html?payment=<id>).
    public_url: str = "http://127.0.0.1:8080"
    # A payment still pending this long after it began is confirmed with the provider
    # and, unless it succeeded, marked failed.
    pending_timeout: float = 900.0
    poll_interval: float = 5.0
    poll_max_interval: float = 60.0
    lease_seconds: float = 30.0
    reconcile_in_server: bool = True
    request_timeout: float = 15.0
    idempotency_ttl_hours: int = 24
    # The demo clinic's stand-ins: the simulators mounted at /_simulators/ and the
    # providers pointed at them (on by default only with the embedded database and no
    # provider configured, i.e. `make run`).
    demo: bool = False


def _need(e: _Reader, name: str) -> str:
    value = e.get(name)
    if value is None:
        raise ConfigError(name, "required when its provider's URL is set")
    return value


def load_payment_settings(
    e: _Reader, public_url: str, *, jobs_in_server: bool = True
) -> PaymentSettings:
    momo = mpesa = card = None
    url = e.url("PAYMENTS_MOMO_URL", ("http", "https"))
    if url is not None:
        momo = MomoSettings(
            base_url=url.rstrip("/"),
            user_id=_need(e, "PAYMENTS_MOMO_USER_ID"),
            api_key=_need(e, "PAYMENTS_MOMO_API_KEY"),
            subscription_key=_need(e, "PAYMENTS_MOMO_SUBSCRIPTION_KEY"),
            target_environment=e.text("PAYMENTS_MOMO_TARGET_ENVIRONMENT", "sandbox"),
            disbursement_user_id=e.get("PAYMENTS_MOMO_DISBURSEMENT_USER_ID"),
            disbursement_api_key=e.get("PAYMENTS_MOMO_DISBURSEMENT_API_KEY"),
            disbursement_subscription_key=e.get("PAYMENTS_MOMO_DISBURSEMENT_SUBSCRIPTION_KEY"),
        )
    url = e.url("PAYMENTS_MPESA_URL", ("http", "https"))
    if url is not None:
        mpesa = MpesaSettings(
            base_url=url.rstrip("/"),
            consumer_key=_need(e, "PAYMENTS_MPESA_CONSUMER_KEY"),
            consumer_secret=_need(e, "PAYMENTS_MPESA_CONSUMER_SECRET"),
            shortcode=_need(e, "PAYMENTS_MPESA_SHORTCODE"),
            passkey=_need(e, "PAYMENTS_MPESA_PASSKEY"),
            initiator=e.get("PAYMENTS_MPESA_INITIATOR"),
            security_credential=e.get("PAYMENTS_MPESA_SECURITY_CREDENTIAL"),
        )
    url = e.url("PAYMENTS_CARD_URL", ("http", "https"))
    if url is not None:
        secret = _need(e, "PAYMENTS_CARD_SECRET_KEY")
        if len(secret) < 16:
            raise ConfigError("PAYMENTS_CARD_SECRET_KEY", "must be at least 16 characters")
        card = CardSettings(
            base_url=url.rstrip("/"),
            secret_key=secret,
            previous_secret_key=e.get("PAYMENTS_CARD_PREVIOUS_SECRET_KEY"),
        )
    poll = e.number("PAYMENTS_POLL_INTERVAL", 5.0, minimum=0.05)
    configured = momo is not None or mpesa is not None or card is not None
    demo = e.flag("PAYMENTS_DEMO", e.get("DATABASE_URL") is None and not configured)
    if demo and configured:
        raise ConfigError("PAYMENTS_DEMO", "the demo simulators replace real providers: unset one")
    return PaymentSettings(
        momo=momo,
        mpesa=mpesa,
        card=card,
        callback_base_url=(
            e.url("PAYMENTS_CALLBACK_BASE_URL", ("http", "https")) or public_url
        ).rstrip("/"),
        public_url=public_url.rstrip("/"),
        pending_timeout=e.number("PAYMENTS_PENDING_TIMEOUT", 900.0, minimum=1.0),
        poll_interval=poll,
        poll_max_interval=max(poll, e.number("PAYMENTS_POLL_MAX_INTERVAL", 60.0, minimum=0.05)),
        lease_seconds=e.number("PAYMENTS_LEASE_SECONDS", 30.0, minimum=1.0),
        # The demo simulators live in the server process: their reconciler stays there.
        reconcile_in_server=e.flag("PAYMENTS_RECONCILE_IN_SERVER", jobs_in_server or demo),
        request_timeout=e.number("PAYMENTS_REQUEST_TIMEOUT", 15.0, minimum=0.1),
        idempotency_ttl_hours=e.integer("PAYMENTS_IDEMPOTENCY_TTL_HOURS", 24, minimum=24),
        demo=demo,
    )
