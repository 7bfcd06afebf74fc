"""Notification channels: where the outbox worker hands a notification over.

A channel implements :class:`NotificationChannel` (one ``send`` method) and
raises :class:`ChannelError` when it could not deliver, saying whether a retry
may help. Two channels exist: :class:`LogChannel` (writes a log line; the
default, for development) and :class:`WebhookChannel` (a signed HTTP POST).
SMS providers plug in the same way.

Payloads carry ids and kinds only, never personal or health data, and the
channels never log a payload or a remote answer.

Webhook contract
----------------
Each notification is POSTed as JSON. An appointment notification::

    {"id": "notif-42", "kind": "reminder_1h", "appointment_id": "<uuid>",
     "due_at": "2031-03-03T08:00:00+00:00", "payload": {...}}

Chat news (:mod:`teleconsult.messaging.offline`) -- "this thread has news for
this user", never the message, its sender or any name::

    {"id": "notif-43", "kind": "thread_news", "thread_id": "<uuid>",
     "user_id": "<uuid>", "due_at": "2031-03-03T08:00:00+00:00"}

An account notice (:mod:`teleconsult.accounts`) -- ``registration_attempt``: someone
tried to register this user's e-mail address (the registration's answer did not say
it is taken, so tell the owner, never the one who tried)::

    {"id": "notif-44", "kind": "registration_attempt", "user_id": "<uuid>",
     "due_at": "2031-03-03T08:00:00+00:00"}

All come with the headers

* ``Content-Type: application/json``
* ``Idempotency-Key: notif-42`` -- equal to ``id``, the same on every retry of
  the same outbox row;
* ``X-Teleconsult-Timestamp: 1767225600`` -- Unix seconds when this attempt was
  signed;
* ``X-Teleconsult-Signature: v1=<hex>`` -- the lowercase hex HMAC-SHA256, keyed
  with the shared secret (its UTF-8 bytes), of ``<timestamp>.<raw body>``: the
  timestamp header's value, one ``.`` and the request body bytes exactly as
  received.

A receiver must (1) recompute the signature over the raw body and compare it in
constant time, (2) reject a timestamp more than 5 minutes from its own clock
(a replayed request), and (3) remember the ``Idempotency-Key`` of requests it
has accepted and answer 2xx without acting again on a repeat: delivery is
at least once, so a notification can arrive twice (see
:mod:`teleconsult.notifications.worker`). :func:`verify_signature` does (1)
and (2).

Answers: any 2xx means delivered. 408 and 429 (with an optional
``Retry-After`` in seconds), any 5xx, a timeout or a connection error are
retried later. Any other answer (3xx -- redirects are not followed -- and the
other 4xx) is a permanent failure: the notification is not retried.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp

from teleconsult.core.errors import ConfigError, TeleconsultError
from teleconsult.core.settings import NotifySettings
from teleconsult.scheduling.records import OutboxItem

logger = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-Teleconsult-Timestamp"
SIGNATURE_HEADER = "X-Teleconsult-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE = 300
DEFAULT_TIMEOUT = 10.0

_RETRYABLE_CLIENT_STATUSES = frozenset({408, 429})


class ChannelError(TeleconsultError):
    """A notification was not delivered.

    ``retryable`` says whether trying again later may succeed; ``retry_after``
    is the wait in seconds the remote asked for, if it did. The message is
    stored in the outbox row, so it names the failure, never a payload.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class NotificationChannel(Protocol):
    async def send(self, item: OutboxItem) -> None:
        """Deliver ``item``, or raise :class:`ChannelError`."""
        ...


def idempotency_key(item: OutboxItem) -> str:
    """The key a receiver dedupes on: one per outbox row, stable across retries."""
    return f"notif-{item.id}"


def subject(item: OutboxItem) -> str:
    """What the row is about, by ids: ``appointment <id>``, ``thread <id> user <id>``
    or ``user <id>`` (an account notice)."""
    if item.appointment_id is not None:
        return f"appointment {item.appointment_id}"
    if item.thread_id is None:
        return f"user {item.user_id}"
    return f"thread {item.thread_id} user {item.user_id}"


class LogChannel:
    """Writes one INFO line per notification: its kind, subject ids and key."""

    async def send(self, item: OutboxItem) -> None:
        logger.info(
            "notification %s for %s (key %s)",
            item.kind,
            subject(item),
            idempotency_key(item),
        )


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Teleconsult-Signature`` value for ``body`` signed at ``timestamp``."""
    digest = hmac.new(
        secret.encode(), timestamp.encode("ascii") + b"." + body, hashlib.sha256
    ).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """True when ``signature`` signs ``body`` at ``timestamp`` within ``tolerance`` of ``now``.

    ``timestamp`` and ``signature`` are the header values as received and
    ``now`` the receiver's Unix time; the signatures are compared in constant
    time. A timestamp further than ``tolerance`` seconds from ``now``, in
    either direction, fails.
    """
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    if abs(now - int(timestamp)) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return hmac.compare_digest(expected.encode(), signature.strip().encode("ascii", "replace"))


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header; the HTTP-date form is ignored."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())


class WebhookChannel:
    """POSTs each notification, signed with HMAC-SHA256, to one URL.

    The session is the caller's (it closes it). ``timeout`` bounds one attempt,
    connection included.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        session: aiohttp.ClientSession,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ConfigError("NOTIFY_WEBHOOK_SECRET", "required for the webhook channel")
        self._url = url
        self._secret = secret
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock

    def body(self, item: OutboxItem) -> bytes:
        fields: dict[str, object] = {
            "id": idempotency_key(item),
            "kind": item.kind,
            "due_at": item.due_at.isoformat(),
        }
        if item.appointment_id is not None:
            fields["appointment_id"] = str(item.appointment_id)
            fields["payload"] = item.payload
        elif item.thread_id is None:
            # An account notice: the user it is for, nothing else.
            fields["user_id"] = str(item.user_id)
        else:
            # Chat news: ids only, whatever the row's payload holds.
            fields["thread_id"] = str(item.thread_id)
            fields["user_id"] = str(item.user_id)
        return json.dumps(fields, separators=(",", ":"), sort_keys=True).encode()

    async def send(self, item: OutboxItem) -> None:
        body = self.body(item)
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: idempotency_key(item),
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        try:
            async with self._session.post(
                self._url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                # Drain (and ignore) the answer so the connection can be reused.
                await resp.read()
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"))
        except TimeoutError:
            raise ChannelError("webhook timed out", retryable=True) from None
        except aiohttp.ClientError as exc:
            raise ChannelError(
                f"webhook request failed: {type(exc).__name__}", retryable=True
            ) from None
        if 200 <= status < 300:
            return
        retryable = status >= 500 or status in _RETRYABLE_CLIENT_STATUSES
        raise ChannelError(
            f"webhook answered {status}",
            retryable=retryable,
            retry_after=retry_after if retryable else None,
        )


def create_channel(
    settings: NotifySettings, session: aiohttp.ClientSession | None
) -> NotificationChannel:
    """The channel the settings name; the webhook channel needs ``session``."""
    if settings.channel == "log":
        return LogChannel()
    if settings.channel == "webhook":
        if settings.webhook_url is None:
            raise ConfigError("NOTIFY_WEBHOOK_URL", "required when NOTIFY_CHANNEL=webhook")
        if session is None:
            raise ValueError("the webhook channel needs an aiohttp ClientSession")
        # An attempt must end well inside the lease, or another worker may
        # claim the row and send it again while this one is still waiting.
        timeout = min(DEFAULT_TIMEOUT, settings.lease_seconds / 2)
        return WebhookChannel(settings.webhook_url, settings.webhook_secret, session, timeout)
    raise ConfigError("NOTIFY_CHANNEL", f"unknown channel {settings.channel!r}")
