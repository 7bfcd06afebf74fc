"""The one exception tree.

Client-facing errors carry an HTTP status and a stable machine code; they are
rendered in one place (problem+json for HTTP). Everything else is an
infrastructure failure: logged, never shown to a client.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final


class ErrorCode(StrEnum):
    VALIDATION_FAILED = "validation_failed"
    MALFORMED_JSON = "malformed_json"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNAUTHENTICATED = "unauthenticated"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_INVALID = "token_invalid"
    INVALID_CREDENTIALS = "invalid_credentials"
    ACCOUNT_DISABLED = "account_disabled"
    ROLE_CHANGED = "role_changed"
    REFRESH_INVALID = "refresh_invalid"
    REFRESH_REUSED = "refresh_reused"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    EMAIL_TAKEN = "email_taken"
    LAST_ADMIN = "last_admin"
    SELF_LOCKOUT = "self_lockout"
    SLOT_TAKEN = "slot_taken"
    OUTSIDE_AVAILABILITY = "outside_availability"
    SERVICE_NOT_OFFERED = "service_not_offered"
    IN_THE_PAST = "in_the_past"
    INVALID_TRANSITION = "invalid_transition"
    STALE_VERSION = "stale_version"
    INVALID_ENVELOPE = "invalid_envelope"
    BAD_SIGNATURE = "bad_signature"
    UNSUPPORTED_VERSION = "unsupported_version"
    DEVICE_NOT_USABLE = "device_not_usable"
    DEVICE_KEY_IN_USE = "device_key_in_use"
    CLIENT_MSG_ID_REUSED = "client_msg_id_reused"
    NOT_A_RECIPIENT = "not_a_recipient"
    INVALID_CURSOR = "invalid_cursor"
    OUTSIDE_JOIN_WINDOW = "outside_join_window"
    SFU_REQUIRED = "sfu_required"
    NOT_IN_ROOM = "not_in_room"
    NOT_ADMITTED = "not_admitted"
    INVALID_SDP = "invalid_sdp"
    PEER_ADDRESS_REFUSED = "peer_address_refused"
    NO_CONSULTATION = "no_consultation"
    # --- recordings (issue 13, part R) ---
    RECORDING_CONSENT_REQUIRED = "recording_consent_required"
    RECORDING_NOT_READY = "recording_not_ready"
    RECORDING_DAMAGED = "recording_damaged"
    RANGE_NOT_SATISFIABLE = "range_not_satisfiable"
    # --- end recordings ---
    RATE_LIMITED = "rate_limited"
    # --- payments (issue 15) ---
    IDEMPOTENCY_KEY_REQUIRED = "idempotency_key_required"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    IDEMPOTENCY_KEY_IN_FLIGHT = "idempotency_key_in_flight"
    PAYMENT_REQUIRED = "payment_required"
    PAYMENT_IN_PROGRESS = "payment_in_progress"
    NOT_PAYABLE = "not_payable"
    PROVIDER_NOT_CONFIGURED = "provider_not_configured"
    PROVIDER_REFUSED = "provider_refused"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    BAD_WEBHOOK_SIGNATURE = "bad_webhook_signature"
    INTERNAL = "internal_error"
    UNAVAILABLE = "unavailable"


class TeleconsultError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(TeleconsultError):
    """A setting is missing or invalid; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class InfrastructureError(TeleconsultError):
    """A dependency (database, bus, broker) failed. Logged, never shown to clients."""


@dataclass(frozen=True)
class FieldError:
    """One invalid field: a JSON-pointer-like dotted location and a message."""

    field: str
    message: str


class ClientError(TeleconsultError):
    """An error the client caused and can act on."""

    status: int = 400
    default_code: ErrorCode = ErrorCode.VALIDATION_FAILED
    title: str = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        code: ErrorCode | None = None,
        fields: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code
        self.fields = fields or []
        self.headers = headers or {}


class BadRequest(ClientError):
    status = 400
    default_code = ErrorCode.VALIDATION_FAILED
    title = "Bad request"


class Unauthenticated(ClientError):
    status = 401
    default_code = ErrorCode.UNAUTHENTICATED
    title = "Unauthenticated"

    def __init__(self, detail: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(detail, code=code, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ClientError):
    status = 403
    default_code = ErrorCode.FORBIDDEN
    title = "Forbidden"


class NotFound(ClientError):
    status = 404
    default_code = ErrorCode.NOT_FOUND
    title = "Not found"


class MethodNotAllowed(ClientError):
    status = 405
    default_code = ErrorCode.METHOD_NOT_ALLOWED
    title = "Method not allowed"


class Conflict(ClientError):
    status = 409
    default_code = ErrorCode.CONFLICT
    title = "Conflict"


class Unprocessable(ClientError):
    """Well-formed, but against a domain rule (outside availability, in the past)."""

    status = 422
    default_code = ErrorCode.VALIDATION_FAILED
    title = "Unprocessable request"


class PayloadTooLarge(ClientError):
    status = 413
    default_code = ErrorCode.PAYLOAD_TOO_LARGE
    title = "Payload too large"


class UnsupportedMediaType(ClientError):
    status = 415
    default_code = ErrorCode.UNSUPPORTED_MEDIA_TYPE
    title = "Unsupported media type"


class RateLimited(ClientError):
    status = 429
    default_code = ErrorCode.RATE_LIMITED
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = retry_after


class RangeNotSatisfiable(ClientError):
    """HTTP 416: a Range outside the representation (issue 13, part R)."""

    status = 416
    default_code = ErrorCode.RANGE_NOT_SATISFIABLE
    title = "Range not satisfiable"


class PaymentRequired(ClientError):  # --- payments (issue 15) ---
    status = 402
    default_code = ErrorCode.PAYMENT_REQUIRED
    title = "Payment required"


class Unavailable(ClientError):
    status = 503
    default_code = ErrorCode.UNAVAILABLE
    title = "Service unavailable"


# -- what each code means, for the docs (docs/protocol.md, "Error codes") ---------------


@dataclass(frozen=True)
class CodeMeaning:
    """What a client learns from one code.

    ``statuses`` are the HTTP statuses it comes with, the usual one first (an ack's
    ``status`` is the same number). ``retry`` says whether sending the very same
    request again, later, can succeed. ``rest_only`` codes come from REST routes that
    no chat, MQTT or signaling request reaches (payments), so the clients of those
    transports need not know them.
    """

    statuses: tuple[int, ...]
    meaning: str
    retry: bool = False
    rest_only: bool = False


ERROR_MEANINGS: Final[Mapping[ErrorCode, CodeMeaning]] = {
    ErrorCode.VALIDATION_FAILED: CodeMeaning(
        (400,), "a field is missing, unknown, of the wrong type or out of range; the fields name it"
    ),
    ErrorCode.MALFORMED_JSON: CodeMeaning(
        (400,), "the body (or an MQTT request) is not valid JSON"
    ),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: CodeMeaning(
        (415,), "the request body is not `application/json`"
    ),
    ErrorCode.PAYLOAD_TOO_LARGE: CodeMeaning(
        (413, 400), "a body, an envelope or a signaling message (400) is over its size limit"
    ),
    ErrorCode.METHOD_NOT_ALLOWED: CodeMeaning(
        (405,), "the path exists, not with this method; `Allow` lists them"
    ),
    ErrorCode.UNAUTHENTICATED: CodeMeaning(
        (401,), "no access token was sent, or its account no longer exists"
    ),
    ErrorCode.TOKEN_EXPIRED: CodeMeaning(
        (401,), "the access token has expired: refresh, then repeat the request"
    ),
    ErrorCode.TOKEN_INVALID: CodeMeaning(
        (401,), "the access token is not valid, or its session has ended: sign in again"
    ),
    ErrorCode.INVALID_CREDENTIALS: CodeMeaning(
        (401, 400), "wrong e-mail or password (400: wrong current password when changing it)"
    ),
    ErrorCode.ACCOUNT_DISABLED: CodeMeaning((401,), "the clinic has disabled this account"),
    ErrorCode.ROLE_CHANGED: CodeMeaning(
        (401,), "a live connection's role changed: connect again to act with the new one"
    ),
    ErrorCode.REFRESH_INVALID: CodeMeaning(
        (401,), "the refresh token is unknown, expired or logged out: sign in"
    ),
    ErrorCode.REFRESH_REUSED: CodeMeaning(
        (401,), "a used refresh token came back: the session is revoked, sign in"
    ),
    ErrorCode.FORBIDDEN: CodeMeaning((403,), "the caller's role may not do this"),
    ErrorCode.NOT_FOUND: CodeMeaning(
        (404,), "no such object or path, or not one the caller may see"
    ),
    ErrorCode.CONFLICT: CodeMeaning((409,), "conflicts with the object's current state"),
    ErrorCode.EMAIL_TAKEN: CodeMeaning((409,), "that e-mail address is already registered"),
    ErrorCode.LAST_ADMIN: CodeMeaning(
        (409,), "a clinic's last active admin cannot be demoted or disabled"
    ),
    ErrorCode.SELF_LOCKOUT: CodeMeaning((409,), "an admin cannot demote or disable themselves"),
    ErrorCode.SLOT_TAKEN: CodeMeaning(
        (409,), "the doctor or the patient already has an appointment then"
    ),
    ErrorCode.OUTSIDE_AVAILABILITY: CodeMeaning((422,), "the doctor does not work at that time"),
    ErrorCode.SERVICE_NOT_OFFERED: CodeMeaning(
        (422,), "the doctor does not offer that kind of consultation"
    ),
    ErrorCode.IN_THE_PAST: CodeMeaning((422,), "that time has already passed"),
    ErrorCode.INVALID_TRANSITION: CodeMeaning(
        (409,), "the appointment's status does not allow this change"
    ),
    ErrorCode.STALE_VERSION: CodeMeaning(
        (409,), "the appointment changed meanwhile: reload it, then decide"
    ),
    ErrorCode.INVALID_ENVELOPE: CodeMeaning(
        (400,), "the envelope is malformed, breaks a field rule or names another thread"
    ),
    ErrorCode.BAD_SIGNATURE: CodeMeaning(
        (400,), "the envelope's signature does not verify with the device's key"
    ),
    ErrorCode.UNSUPPORTED_VERSION: CodeMeaning(
        (400,), "the envelope's `v` is not a version this server speaks"
    ),
    ErrorCode.DEVICE_NOT_USABLE: CodeMeaning(
        (403,), "the sending device is not a current device of the caller"
    ),
    ErrorCode.DEVICE_KEY_IN_USE: CodeMeaning(
        (409,), "that Ed25519 key is registered to another device"
    ),
    ErrorCode.CLIENT_MSG_ID_REUSED: CodeMeaning(
        (409,), "that client message id was used for another envelope"
    ),
    ErrorCode.NOT_A_RECIPIENT: CodeMeaning(
        (400,), "keys are sealed for devices that are not the thread's"
    ),
    ErrorCode.INVALID_CURSOR: CodeMeaning((400,), "the `cursor` is not one this server issued"),
    ErrorCode.OUTSIDE_JOIN_WINDOW: CodeMeaning((403,), "the consultation room is not open now"),
    ErrorCode.SFU_REQUIRED: CodeMeaning((409,), "the peer-to-peer call is full"),
    ErrorCode.NOT_IN_ROOM: CodeMeaning((409, 400), "join the consultation room first"),
    ErrorCode.NOT_ADMITTED: CodeMeaning((403,), "the doctor has not admitted this patient yet"),
    ErrorCode.INVALID_SDP: CodeMeaning((400,), "the SDP offer cannot be answered"),
    ErrorCode.PEER_ADDRESS_REFUSED: CodeMeaning(
        (422,),
        "every candidate of the offer is on a loopback, private, link-local or other "
        "address the server does not contact: offer a public (server-reflexive or relay) one",
    ),
    ErrorCode.NO_CONSULTATION: CodeMeaning(
        (422,), "the appointment has no video or audio consultation"
    ),
    # --- recordings (issue 13, part R) ---
    ErrorCode.RECORDING_CONSENT_REQUIRED: CodeMeaning(
        (409,), "the patient has not consented to recording this consultation (or withdrew)"
    ),
    ErrorCode.RECORDING_NOT_READY: CodeMeaning(
        (409,), "the recording is still being made or sealed, failed, or has expired"
    ),
    ErrorCode.RECORDING_DAMAGED: CodeMeaning(
        (409,),
        "the stored recording fails its integrity check (damaged or tampered with); "
        "the server logged and audited it",
    ),
    ErrorCode.RANGE_NOT_SATISFIABLE: CodeMeaning(
        (416,), "the `Range` asks for bytes the media does not have; `Content-Range` gives its size"
    ),
    # --- end recordings ---
    ErrorCode.RATE_LIMITED: CodeMeaning(
        (429,), "too many requests: wait `Retry-After` seconds", retry=True
    ),
    # --- payments (issue 15) ---
    ErrorCode.IDEMPOTENCY_KEY_REQUIRED: CodeMeaning(
        (400,), "a POST that creates or moves money needs an `Idempotency-Key` header"
    ),
    ErrorCode.IDEMPOTENCY_KEY_REUSED: CodeMeaning(
        (422,), "that `Idempotency-Key` was used for a different request: use a new key"
    ),
    ErrorCode.IDEMPOTENCY_KEY_IN_FLIGHT: CodeMeaning(
        (409,),
        "the first request with that `Idempotency-Key` is still running",
        retry=True,
        rest_only=True,
    ),
    ErrorCode.PAYMENT_REQUIRED: CodeMeaning(
        (402,), "pay the invoice first; the fields name `invoice_id`, `amount` and `currency`"
    ),
    ErrorCode.PAYMENT_IN_PROGRESS: CodeMeaning(
        (409,),
        "the invoice already has a payment under way or paid",
        retry=True,
        rest_only=True,
    ),
    ErrorCode.NOT_PAYABLE: CodeMeaning(
        (409, 422), "the invoice or payment is not in a state that allows this"
    ),
    ErrorCode.PROVIDER_NOT_CONFIGURED: CodeMeaning(
        (422,), "this server has no such payment provider configured"
    ),
    ErrorCode.PROVIDER_REFUSED: CodeMeaning(
        (422,), "the payment provider refused the payment (number, amount, currency)"
    ),
    ErrorCode.PROVIDER_UNAVAILABLE: CodeMeaning(
        (503,),
        "the payment provider did not answer; the payment stays pending",
        retry=True,
        rest_only=True,
    ),
    ErrorCode.BAD_WEBHOOK_SIGNATURE: CodeMeaning(
        (401,), "a provider webhook whose signature does not verify"
    ),
    ErrorCode.INTERNAL: CodeMeaning((500,), "the server failed (and logged it)", retry=True),
    ErrorCode.UNAVAILABLE: CodeMeaning(
        (503,), "a dependency is down or the server is stopping", retry=True
    ),
}

ERROR_TABLE_BEGIN = "<!-- error codes: generated by `python -m teleconsult.core.errors` -->"
ERROR_TABLE_END = "<!-- end of error codes -->"


def error_code_table() -> str:
    """The markdown table of every code, in the order of :class:`ErrorCode`."""
    rows = ["| code | HTTP status | meaning | same request again? |", "| --- | --- | --- | --- |"]
    for code in ErrorCode:
        m = ERROR_MEANINGS[code]
        status = ", ".join(str(s) for s in m.statuses)
        rows.append(f"| `{code}` | {status} | {m.meaning} | {'yes' if m.retry else 'no'} |")
    return "\n".join(rows) + "\n"


def with_error_code_table(document: str) -> str:
    """``document`` with the text between the table's markers replaced by the table."""
    head, begin, rest = document.partition(ERROR_TABLE_BEGIN + "\n")
    _, end, tail = rest.partition(ERROR_TABLE_END)
    if not begin or not end:
        raise ValueError(
            f"the document lacks the markers {ERROR_TABLE_BEGIN} ... {ERROR_TABLE_END}"
        )
    return head + begin + error_code_table() + end + tail


def _main(argv: list[str]) -> int:
    """No argument: print the table. ``--write DOC``: put it in DOC. ``--check DOC``: 1 if stale."""
    if not argv:
        print(error_code_table(), end="")
        return 0
    if len(argv) != 2 or argv[0] not in ("--write", "--check"):
        print("usage: python -m teleconsult.core.errors [--write|--check] docs/protocol.md")
        return 2
    path = Path(argv[1])
    text = path.read_text(encoding="utf-8")
    fresh = with_error_code_table(text)
    if argv[0] == "--check":
        if fresh != text:
            print(f"{path}: the error code table is stale; run with --write")
        return int(fresh != text)
    path.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
