"""The one exception tree.

Client-facing errors carry an HTTP status and a stable machine code; they are
rendered in one place (problem+json for HTTP). Everything else is an
infrastructure failure: logged, never shown to a client.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


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
    NO_CONSULTATION = "no_consultation"
    RATE_LIMITED = "rate_limited"
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


class Unavailable(ClientError):
    status = 503
    default_code = ErrorCode.UNAVAILABLE
    title = "Service unavailable"
