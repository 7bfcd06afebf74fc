"""Which contents a document may have: the allow-list, checked against magic bytes
(pure). Never HTML, never anything a browser would render as a page."""

from __future__ import annotations

from typing import Final

EXTENSIONS: Final = {
    "application/pdf": "pdf",
    "image/png": "png",
    "image/jpeg": "jpg",
    "application/dicom": "dcm",
}


def matches(content_type: str, head: bytes) -> bool:
    """Whether the first bytes of a content are what ``content_type`` says."""
    match content_type:
        case "application/pdf":
            return head.startswith(b"%PDF-")
        case "image/png":
            return head.startswith(b"\x89PNG\r\n\x1a\n")
        case "image/jpeg":
            return head.startswith(b"\xff\xd8\xff")
        case "application/dicom":  # a 128-byte preamble, then the DICOM prefix
            return head[128:132] == b"DICM"
    return False
