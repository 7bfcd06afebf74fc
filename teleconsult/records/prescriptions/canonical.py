"""The canonical bytes of a prescription, which its doctor's device signs (pure).

The signed message is ``teleconsult/prescription/v1\\0`` followed by the document as
canonical JSON: UTF-8, object keys sorted, no insignificant whitespace, no escaping
of non-ASCII characters, integers only (no floats). The server accepts a document
only in exactly that form (it re-encodes and compares bytes), so anyone can verify a
signature with nothing but an Ed25519 library:

    Ed25519.verify(public_key, signature, b"teleconsult/prescription/v1\\0" + document)

The prescription number is derived from the signed message (the first 60 bits of its
SHA-256, base32, as ``RX-XXXX-XXXX-XXXX``), so a number names exactly one document.
docs/records.md, "Prescriptions", lists the document's fields.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Final

DOMAIN: Final = b"teleconsult/prescription/v1\0"


def canonical(document: dict[str, Any]) -> bytes:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def message(document_bytes: bytes) -> bytes:
    return DOMAIN + document_bytes


def number_of(document_bytes: bytes) -> str:
    digest = hashlib.sha256(message(document_bytes)).digest()
    text = base64.b32encode(digest[:8]).decode()[:12]
    return f"RX-{text[0:4]}-{text[4:8]}-{text[8:12]}"


def is_canonical(document_bytes: bytes) -> dict[str, Any] | None:
    """The document, if the bytes are one JSON object in canonical form with no float."""
    try:
        document = json.loads(document_bytes.decode(), parse_float=_no_float)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(document, dict) or canonical(document) != document_bytes:
        return None
    return document


def _no_float(text: str) -> float:
    raise ValueError("floats are not allowed in a prescription")
