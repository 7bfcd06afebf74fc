"""Device tokens: OWASP's device cookies, which keep a known device signing in under attack.

A successful sign-in gets a device token: a random nonce and the time it was
issued, with an HMAC-SHA256 over both and the digest of the account's e-mail
key, under a key derived from ``JWT_SECRET``. The token proves "this client
signed in to this account before" and nothing more: it grants no access.

At the next sign-in a valid token for the same account puts the attempt on
the *trusted* path: its failures count against that token alone (the nonce is
the rate-limit key), so an attacker elsewhere cannot lock the owner out. A
token that is forged, expired, another account's, or has itself run out of
attempts counts as no token (the account's untrusted bucket).

Pure functions over values; no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass

_NONCE = 16
_STAMP = struct.Struct(">Q")
_MAC = 32
_RAW = _NONCE + _STAMP.size + _MAC
# The base64url text of one token, unpadded.
TOKEN_LENGTH = (_RAW * 4 + 2) // 3
# How many accounts' tokens a browser keeps in its one cookie (a shared computer).
MAX_PER_COOKIE = 5
_LABEL = b"teleconsult device token v1\x00"


def device_key(jwt_secret: str) -> bytes:
    """The MAC key, separated from the JWT signing key by its label."""
    return hmac.new(jwt_secret.encode("utf-8"), _LABEL, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class DeviceToken:
    nonce: bytes
    issued_at: int
    text: str

    @property
    def key(self) -> str:
        """The token's own rate-limit bucket name."""
        return self.nonce.hex()


def _mac(key: bytes, account: str, nonce: bytes, issued_at: int) -> bytes:
    message = _LABEL + account.encode("ascii") + b"\x00" + nonce + _STAMP.pack(issued_at)
    return hmac.new(key, message, hashlib.sha256).digest()


def mint(key: bytes, account: str, *, now: int) -> DeviceToken:
    """A new token for ``account`` (its e-mail digest), issued at ``now`` (Unix seconds)."""
    nonce = secrets.token_bytes(_NONCE)
    raw = nonce + _STAMP.pack(now) + _mac(key, account, nonce, now)
    return DeviceToken(nonce, now, base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii"))


def verify(key: bytes, account: str, text: str, *, now: int, ttl: int) -> DeviceToken | None:
    """The token if ``text`` is one of ours, for ``account``, and younger than ``ttl``."""
    if len(text) != TOKEN_LENGTH:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != _RAW:
        return None
    nonce, stamp, mac = raw[:_NONCE], raw[_NONCE : _NONCE + _STAMP.size], raw[-_MAC:]
    (issued_at,) = _STAMP.unpack(stamp)
    if not hmac.compare_digest(mac, _mac(key, account, nonce, issued_at)):
        return None
    if not now - ttl < issued_at <= now + 60:
        return None
    return DeviceToken(nonce, issued_at, text)


def first_valid(
    key: bytes, account: str, candidates: Iterable[str], *, now: int, ttl: int
) -> DeviceToken | None:
    """The first candidate that is a valid token for ``account``."""
    for text in candidates:
        token = verify(key, account, text, now=now, ttl=ttl)
        if token is not None:
            return token
    return None


def split_cookie(value: str | None) -> list[str]:
    """The tokens a browser's cookie holds (several accounts may share one browser)."""
    if not value:
        return []
    return [part for part in value.split(".")[: MAX_PER_COOKIE * 2] if part]


def join_cookie(new: str, previous: Iterable[str], *, drop: str | None = None) -> str:
    """The cookie after a sign-in: the new token first, then the others it held,
    minus ``drop`` (the account's old token) and any that are not even well formed."""
    kept = [new]
    for text in previous:
        if text not in (new, drop) and len(text) == TOKEN_LENGTH and text not in kept:
            kept.append(text)
    return ".".join(kept[:MAX_PER_COOKIE])
