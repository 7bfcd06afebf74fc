"""The chat envelope, version 1: its fields, canonical bytes and two wire encodings.

Pure code over values: no I/O and no plaintext. The server validates and
verifies envelopes with it; the client library (``teleconsult.client.crypto``)
builds and opens them. docs/protocol.md is the specification this module
implements; change both together, and change the bytes of
:func:`signing_bytes` or :func:`associated_data` only with a new version.

An :class:`Envelope` is valid once constructed: ``__post_init__`` checks every
field, so the decoders only convert wire types and let it decide. The size of
an envelope is the length of its msgpack encoding, whichever encoding carried
it, so one limit means the same on every transport.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, TypeGuard
from uuid import UUID

import msgpack
import nacl.exceptions
import nacl.signing

from teleconsult.core.errors import TeleconsultError

ENVELOPE_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = frozenset({ENVELOPE_VERSION})
DEFAULT_MAX_BYTES: Final = 64 * 1024
MAX_RECIPIENTS: Final = 64
MESSAGE_KEY_BYTES: Final = 32
NONCE_BYTES: Final = 24
TAG_BYTES: Final = 16
# The 32-byte message key plus SealedBox's overhead: an ephemeral X25519 public key and a MAC.
SEALED_KEY_BYTES: Final = MESSAGE_KEY_BYTES + 32 + 16
SIGNATURE_BYTES: Final = 64
PUBLIC_KEY_BYTES: Final = 32
# JavaScript's largest safe integer: the field must survive a JSON round trip in a browser.
MAX_SENT_AT_MS: Final = 2**53 - 1
SIGNING_DOMAIN: Final = b"teleconsult/envelope/v1\x00"
AD_DOMAIN: Final = b"teleconsult/body/v1\x00"

_CLIENT_MSG_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_UUID_TEXT = re.compile("-".join(f"[0-9a-fA-F]{{{n}}}" for n in (8, 4, 4, 4, 12)))
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
# In this order they are also the items of the msgpack array.
_FIELDS: Final = tuple(
    "v client_msg_id thread_id sender_device_id sent_at_ms nonce ciphertext keys signature".split()
)
_JSON_OPTIONAL: Final = frozenset({"sent_at_ms"})
_JSON_KEY_FIELDS: Final = frozenset({"device_id", "sealed_key"})


class EnvelopeErrorCode(StrEnum):
    """Stable codes of :class:`EnvelopeError`; library users branch on them, so never rename one.

    They never travel: the server answers a refused envelope with an
    :class:`~teleconsult.core.errors.ErrorCode` (``messaging.service.envelope_problem``:
    ``invalid_envelope``, ``unsupported_version``, ``bad_signature`` or
    ``payload_too_large``), as docs/protocol.md ("A refused envelope") lists.
    """

    MALFORMED = "malformed"
    UNSUPPORTED_VERSION = "unsupported_version"
    TOO_LARGE = "too_large"
    BAD_FIELD = "bad_field"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    DUPLICATE_RECIPIENT = "duplicate_recipient"
    BAD_SIGNATURE = "bad_signature"
    # Raised only on clients, by teleconsult.client.crypto.open_envelope.
    NOT_A_RECIPIENT = "not_a_recipient"
    DECRYPT_FAILED = "decrypt_failed"


class EnvelopeError(TeleconsultError):
    """An envelope that cannot be accepted or opened; ``field`` names the culprit if one does."""

    def __init__(self, code: EnvelopeErrorCode, detail: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.code = code
        self.detail = detail
        self.field = field

    @property
    def status(self) -> int:
        """The HTTP status a transport should answer with."""
        return 413 if self.code is EnvelopeErrorCode.TOO_LARGE else 400


def _bad(field: str, detail: str) -> EnvelopeError:
    return EnvelopeError(EnvelopeErrorCode.BAD_FIELD, detail, field=field)


def too_many_recipients(count: int, field: str = "keys") -> EnvelopeError:
    return EnvelopeError(
        EnvelopeErrorCode.TOO_MANY_RECIPIENTS,
        f"{count} recipient devices, at most {MAX_RECIPIENTS} allowed",
        field=field,
    )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def check_version(value: object) -> int:
    """``value`` as a supported version, or ``bad_field``/``unsupported_version``."""
    if not _is_int(value):
        raise _bad("v", "must be an integer")
    if value not in SUPPORTED_VERSIONS:
        raise EnvelopeError(
            EnvelopeErrorCode.UNSUPPORTED_VERSION,
            f"this envelope version is not supported (supported: {ENVELOPE_VERSION})",
            field="v",
        )
    return value


def check_client_msg_id(value: object) -> str:
    """``value`` if it is 16 to 64 characters of ``A-Z a-z 0-9 - _``, else ``bad_field``."""
    if not isinstance(value, str) or not _CLIENT_MSG_ID.fullmatch(value):
        raise _bad("client_msg_id", "must be 16 to 64 characters of A-Z a-z 0-9 - _")
    return value


def _check_bytes(field: str, value: object, *, size: int | None = None, least: int = 0) -> None:
    if not isinstance(value, bytes):
        raise _bad(field, "must be bytes")
    if size is not None and len(value) != size:
        raise _bad(field, f"must be exactly {size} bytes, got {len(value)}")
    if len(value) < least:
        raise _bad(field, f"must be at least {least} bytes, got {len(value)}")


def _check_keys(keys: object) -> None:
    if not isinstance(keys, tuple):
        raise _bad("keys", "must be a tuple of (device id, sealed key) pairs")
    if not keys:
        raise _bad("keys", "must name at least one recipient device")
    if len(keys) > MAX_RECIPIENTS:
        raise too_many_recipients(len(keys))
    seen: set[UUID] = set()
    for index, entry in enumerate(keys):
        where = f"keys[{index}]"
        if not isinstance(entry, tuple) or len(entry) != 2:
            raise _bad(where, "must be a (device id, sealed key) pair")
        device_id, sealed_key = entry
        if not isinstance(device_id, UUID):
            raise _bad(f"{where}.device_id", "must be a UUID")
        _check_bytes(f"{where}.sealed_key", sealed_key, size=SEALED_KEY_BYTES)
        if device_id in seen:
            raise EnvelopeError(
                EnvelopeErrorCode.DUPLICATE_RECIPIENT,
                f"device {device_id} appears more than once",
                field=f"{where}.device_id",
            )
        seen.add(device_id)


@dataclass(frozen=True, slots=True, repr=False)
class Envelope:
    """One encrypted chat message as it travels and is stored. See docs/protocol.md."""

    v: int
    client_msg_id: str
    thread_id: UUID
    sender_device_id: UUID
    sent_at_ms: int | None
    nonce: bytes
    ciphertext: bytes
    keys: tuple[tuple[UUID, bytes], ...]
    signature: bytes

    def __post_init__(self) -> None:
        check_version(self.v)
        check_client_msg_id(self.client_msg_id)
        for field in ("thread_id", "sender_device_id"):
            if not isinstance(getattr(self, field), UUID):
                raise _bad(field, "must be a UUID")
        at = self.sent_at_ms
        if at is not None and (not _is_int(at) or not 0 <= at <= MAX_SENT_AT_MS):
            raise _bad("sent_at_ms", f"must be null or an integer from 0 to {MAX_SENT_AT_MS}")
        _check_bytes("nonce", self.nonce, size=NONCE_BYTES)
        _check_bytes("ciphertext", self.ciphertext, least=TAG_BYTES)
        _check_keys(self.keys)
        _check_bytes("signature", self.signature, size=SIGNATURE_BYTES)

    def __repr__(self) -> str:
        # Never the ciphertext or keys: reprs end up in logs.
        return (
            f"Envelope(v={self.v}, client_msg_id={self.client_msg_id!r}, "
            f"thread_id={self.thread_id}, sender_device_id={self.sender_device_id}, "
            f"ciphertext=<{len(self.ciphertext)} bytes>, recipients={len(self.keys)})"
        )

    @property
    def recipient_ids(self) -> tuple[UUID, ...]:
        return tuple(device_id for device_id, _ in self.keys)

    def sealed_key_for(self, device_id: UUID) -> bytes | None:
        """The message key sealed for ``device_id``, or None if it is not a recipient."""
        return next((key for dev, key in self.keys if dev == device_id), None)


def associated_data_for(
    *, v: int, thread_id: UUID, sender_device_id: UUID, client_msg_id: str
) -> bytes:
    """The AEAD associated data binding a body to its thread, sender device and message id."""
    cmid = check_client_msg_id(client_msg_id).encode("ascii")
    ids = thread_id.bytes + sender_device_id.bytes
    return AD_DOMAIN + v.to_bytes(2, "big") + ids + len(cmid).to_bytes(1, "big") + cmid


def associated_data(env: Envelope) -> bytes:
    return associated_data_for(
        v=env.v,
        thread_id=env.thread_id,
        sender_device_id=env.sender_device_id,
        client_msg_id=env.client_msg_id,
    )


def signing_bytes(env: Envelope) -> bytes:
    """The canonical bytes the sender device signs: every field but the signature."""
    cmid = env.client_msg_id.encode("ascii")
    sent_at = b"\x00" if env.sent_at_ms is None else b"\x01" + env.sent_at_ms.to_bytes(8, "big")
    parts = [
        SIGNING_DOMAIN,
        env.v.to_bytes(2, "big"),
        len(cmid).to_bytes(1, "big"),
        cmid,
        env.thread_id.bytes,
        env.sender_device_id.bytes,
        sent_at,
        env.nonce,
        len(env.ciphertext).to_bytes(4, "big"),
        env.ciphertext,
        len(env.keys).to_bytes(2, "big"),
    ]
    for device_id, sealed_key in env.keys:
        parts += (device_id.bytes, sealed_key)
    return b"".join(parts)


def verify_signature(env: Envelope, ed25519_public_key: bytes) -> None:
    """Check the sender device's signature; ``bad_signature`` if it does not hold."""
    if not isinstance(ed25519_public_key, bytes) or len(ed25519_public_key) != PUBLIC_KEY_BYTES:
        raise EnvelopeError(
            EnvelopeErrorCode.BAD_SIGNATURE, "the sender device's signing key is malformed"
        )
    try:
        nacl.signing.VerifyKey(ed25519_public_key).verify(signing_bytes(env), env.signature)
    except nacl.exceptions.BadSignatureError:
        raise EnvelopeError(
            EnvelopeErrorCode.BAD_SIGNATURE,
            "the signature does not match the sender device's key",
            field="signature",
        ) from None


# -- msgpack: a fixed-order array, binary fields as bin, UUIDs as 16-byte bin ---------


def to_msgpack(env: Envelope) -> bytes:
    packed: bytes = msgpack.packb(
        [
            env.v,
            env.client_msg_id,
            env.thread_id.bytes,
            env.sender_device_id.bytes,
            env.sent_at_ms,
            env.nonce,
            env.ciphertext,
            [[device_id.bytes, sealed_key] for device_id, sealed_key in env.keys],
            env.signature,
        ],
        use_bin_type=True,
    )
    return packed


def encoded_size(env: Envelope) -> int:
    """The envelope's size for every limit: the length of its msgpack encoding."""
    return len(to_msgpack(env))


def _too_large(size: int, max_bytes: int, what: str) -> EnvelopeError:
    return EnvelopeError(
        EnvelopeErrorCode.TOO_LARGE, f"{what} is {size} bytes, the limit is {max_bytes}"
    )


def _uuid_bin(field: str, value: object) -> UUID:
    if not isinstance(value, bytes) or len(value) != 16:
        raise _bad(field, "must be a 16-byte UUID")
    return UUID(bytes=value)


def _key_list(value: object) -> list[object]:
    if not isinstance(value, list):
        raise _bad("keys", "must be an array")
    if len(value) > MAX_RECIPIENTS:
        raise too_many_recipients(len(value))
    return value


def from_msgpack(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope:
    """Parse and validate a msgpack envelope; every failure is an :class:`EnvelopeError`."""
    if not isinstance(data, bytes | bytearray):
        raise EnvelopeError(EnvelopeErrorCode.MALFORMED, "an envelope must be bytes")
    if len(data) > max_bytes:
        raise _too_large(len(data), max_bytes, "the envelope")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise EnvelopeError(
            EnvelopeErrorCode.MALFORMED, f"not valid msgpack ({type(exc).__name__})"
        ) from None
    # The version comes first so that a later version may change the rest.
    version = check_version(obj[0]) if isinstance(obj, list) and obj else None
    if version is None or len(obj) != len(_FIELDS):
        raise EnvelopeError(
            EnvelopeErrorCode.MALFORMED, f"an envelope is a msgpack array of {len(_FIELDS)} items"
        )
    keys: list[tuple[UUID, bytes]] = []
    for index, entry in enumerate(_key_list(obj[7])):
        if not isinstance(entry, list) or len(entry) != 2:
            raise _bad(f"keys[{index}]", "must be a [device id, sealed key] array")
        keys.append((_uuid_bin(f"keys[{index}].device_id", entry[0]), entry[1]))
    # The re-encoding is never longer than ``data`` (packb is minimal), so no size check after.
    return Envelope(
        v=version,
        client_msg_id=obj[1],
        thread_id=_uuid_bin("thread_id", obj[2]),
        sender_device_id=_uuid_bin("sender_device_id", obj[3]),
        sent_at_ms=obj[4],
        nonce=obj[5],
        ciphertext=obj[6],
        keys=tuple(keys),
        signature=obj[8],
    )


# -- JSON: an object with named fields, bytes as unpadded base64url, UUIDs as text -----


def encode_b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 4648 section 5), the only form the JSON encoding accepts."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode_b64url(value: object, *, field: str) -> bytes:
    """Strictly decode unpadded, canonical base64url; ``bad_field`` naming ``field`` otherwise."""
    if not isinstance(value, str) or not _B64URL.fullmatch(value) or len(value) % 4 == 1:
        raise _bad(field, "must be unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise _bad(field, "must be unpadded base64url") from None
    if encode_b64url(data) != value:
        raise _bad(field, "must be canonical base64url (unused bits zero)")
    return data


def _uuid_text(field: str, value: object) -> UUID:
    if not isinstance(value, str) or not _UUID_TEXT.fullmatch(value):
        raise _bad(field, "must be a UUID in 8-4-4-4-12 hex form")
    return UUID(value)


def to_json(env: Envelope) -> dict[str, object]:
    obj: dict[str, object] = {
        "v": env.v,
        "client_msg_id": env.client_msg_id,
        "thread_id": str(env.thread_id),
        "sender_device_id": str(env.sender_device_id),
    }
    if env.sent_at_ms is not None:
        obj["sent_at_ms"] = env.sent_at_ms
    obj["nonce"] = encode_b64url(env.nonce)
    obj["ciphertext"] = encode_b64url(env.ciphertext)
    obj["keys"] = [
        {"device_id": str(device_id), "sealed_key": encode_b64url(sealed_key)}
        for device_id, sealed_key in env.keys
    ]
    obj["signature"] = encode_b64url(env.signature)
    return obj


def _check_members(obj: dict[object, object], allowed: frozenset[str], where: str) -> None:
    for name in obj:
        if name not in allowed:
            raise _bad(f"{where}{str(name)[:40]}", "unknown field")


def _json_key(index: int, entry: object) -> tuple[UUID, bytes]:
    where = f"keys[{index}]"
    if not isinstance(entry, dict):
        raise _bad(where, "must be an object")
    _check_members(entry, _JSON_KEY_FIELDS, f"{where}.")
    missing = sorted(_JSON_KEY_FIELDS - entry.keys())
    if missing:
        raise _bad(f"{where}.{missing[0]}", "missing")
    return (
        _uuid_text(f"{where}.device_id", entry["device_id"]),
        decode_b64url(entry["sealed_key"], field=f"{where}.sealed_key"),
    )


def from_json(obj: object, *, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope:
    """Validate a decoded JSON envelope (a Socket.IO event's payload, a REST body).

    Parsing the text, and bounding its length before that, is the transport's job.
    """
    if not isinstance(obj, dict):
        raise EnvelopeError(EnvelopeErrorCode.MALFORMED, "an envelope must be a JSON object")
    if "v" not in obj:
        raise _bad("v", "missing")
    version = check_version(obj["v"])
    _check_members(obj, frozenset(_FIELDS), "")
    for name in _FIELDS:
        if name not in obj and name not in _JSON_OPTIONAL:
            raise _bad(name, "missing")
    text = obj["ciphertext"]
    # Before decoding anything big: base64 of max_bytes is at most this long.
    if isinstance(text, str) and len(text) > -(-max_bytes * 4 // 3):
        raise _too_large(len(text) * 3 // 4, max_bytes, "the ciphertext")
    keys = tuple(_json_key(i, entry) for i, entry in enumerate(_key_list(obj["keys"])))
    env = Envelope(
        v=version,
        client_msg_id=obj["client_msg_id"],
        thread_id=_uuid_text("thread_id", obj["thread_id"]),
        sender_device_id=_uuid_text("sender_device_id", obj["sender_device_id"]),
        sent_at_ms=obj.get("sent_at_ms"),
        nonce=decode_b64url(obj["nonce"], field="nonce"),
        ciphertext=decode_b64url(text, field="ciphertext"),
        keys=keys,
        signature=decode_b64url(obj["signature"], field="signature"),
    )
    size = encoded_size(env)
    if size > max_bytes:
        raise _too_large(size, max_bytes, "the envelope (msgpack-encoded)")
    return env
