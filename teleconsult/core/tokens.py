"""Access tokens (short-lived JWT) and opaque refresh tokens."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from uuid import UUID

import jwt

from teleconsult.core.errors import ErrorCode, Unauthenticated

_ALGORITHM = "HS256"
# A compact JWS: three base64url parts. Anything else (raw header bytes decoded as
# surrogates, a lone surrogate from JSON, a 1 MB string) is refused before PyJWT,
# which raised UnicodeEncodeError (a 500) on text it cannot encode.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
MAX_TOKEN_CHARS = 4096


@dataclass(frozen=True)
class AccessClaims:
    user_id: UUID
    session_id: UUID
    expires_at: int


class TokenService:
    """Mints and checks HS256 access tokens bound to a session (refresh family)."""

    def __init__(self, *, secret: str, issuer: str, access_ttl: int) -> None:
        self._secret = secret
        self._issuer = issuer
        self.access_ttl = access_ttl

    def mint_access(self, *, user_id: UUID, session_id: UUID, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        claims = {
            "iss": self._issuer,
            "sub": str(user_id),
            "sid": str(session_id),
            "typ": "access",
            "iat": issued,
            "exp": issued + self.access_ttl,
        }
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM)

    def verify_access(self, token: str) -> AccessClaims:
        if len(token) > MAX_TOKEN_CHARS or not _COMPACT_JWS.fullmatch(token):
            raise Unauthenticated("access token invalid", code=ErrorCode.TOKEN_INVALID)
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "sid", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("access token expired", code=ErrorCode.TOKEN_EXPIRED) from None
        except jwt.PyJWTError:
            raise Unauthenticated("access token invalid", code=ErrorCode.TOKEN_INVALID) from None
        if claims.get("typ") != "access":
            raise Unauthenticated("not an access token", code=ErrorCode.TOKEN_INVALID)
        try:
            return AccessClaims(
                user_id=UUID(str(claims["sub"])),
                session_id=UUID(str(claims["sid"])),
                expires_at=int(claims["exp"]),
            )
        except (ValueError, TypeError):
            raise Unauthenticated("access token invalid", code=ErrorCode.TOKEN_INVALID) from None


def new_refresh_token() -> str:
    """An opaque, unguessable refresh token (256 bits)."""
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> bytes:
    """Refresh tokens are stored only as their SHA-256 digest."""
    return hashlib.sha256(token.encode("utf-8")).digest()
