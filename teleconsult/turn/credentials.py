"""TURN REST API credentials, as coturn's ``use-auth-secret`` checks them (pure code).

The scheme (draft-uberti-behave-turn-rest-00, coturn "TURN REST API"):

* username: ``<expiry>:<user ref>``, where ``expiry`` is a Unix time in whole
  seconds after which the TURN server refuses the username, and ``user ref`` is
  an opaque, stable reference to the user (an HMAC of the user id, so coturn's
  logs, which print usernames, hold no personal data);
* password: ``base64(HMAC-SHA1(secret, username))``, with the secret shared by
  the application and the TURN server.

The TURN server needs no call to the application: it recomputes the password
from the username with each secret it knows and compares. Rotation therefore
works with a list of secrets: the newest one signs, and the TURN server keeps
accepting older ones until they are dropped (docs/turn.md).

Nothing here does I/O; every function takes the current time as an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

# coturn's default ``rest-api-separator``.
SEPARATOR = ":"
# A domain label, so the reference key could be shared with another use without
# the two ever producing the same digest.
_REF_LABEL = b"teleconsult/turn-user-ref/v1\x00"
_REF_BYTES = 16


@dataclass(frozen=True)
class TurnCredentials:
    """One user's TURN credentials and the servers they are good for.

    ``expires_at`` is the Unix time (seconds) the username carries; ``ttl`` is
    how long they were valid for when minted.
    """

    username: str
    password: str = field(repr=False)
    ttl: int
    expires_at: int
    uris: tuple[str, ...]

    def ice_servers(self) -> list[dict[str, Any]]:
        """The ``iceServers`` entry of an ``RTCConfiguration`` (WebRTC RTCIceServer)."""
        return [{"urls": list(self.uris), "username": self.username, "credential": self.password}]

    def to_json(self, *, refresh_at: int | None = None) -> dict[str, Any]:
        """The JSON form sent to clients (REST answer and the signaling join answer).

        ``username``, ``password``, ``ttl`` and ``uris`` are the TURN REST API
        response fields; ``ice_servers`` can be passed to ``RTCPeerConnection``
        as it is.
        """
        document: dict[str, Any] = {
            "username": self.username,
            "password": self.password,
            "ttl": self.ttl,
            "expires_at": self.expires_at,
            "uris": list(self.uris),
            "ice_servers": self.ice_servers(),
        }
        if refresh_at is not None:
            document["refresh_at"] = refresh_at
        return document


def user_ref(key: str, user_id: UUID) -> str:
    """An opaque reference to ``user_id``: stable for one key, not the id itself.

    Whoever holds ``key`` can tell which user a coturn log line is about by
    recomputing the reference; the TURN server's operator without the key
    cannot. 128 bits, base64url without padding (22 characters, never ``:``).
    """
    digest = hmac.new(key.encode(), _REF_LABEL + user_id.bytes, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:_REF_BYTES]).rstrip(b"=").decode("ascii")


def password_for(secret: str, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))``: what coturn computes and compares."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def mint(secret: str, ref: str, *, now: float, ttl: int, uris: Sequence[str]) -> TurnCredentials:
    """Credentials for ``ref`` signed with ``secret``, valid for ``ttl`` seconds from ``now``."""
    if ttl < 1:
        raise ValueError(f"ttl must be positive, got {ttl}")
    if not ref or SEPARATOR in ref:
        raise ValueError("the user reference must be non-empty and hold no ':'")
    expires_at = int(now) + ttl
    username = f"{expires_at}{SEPARATOR}{ref}"
    return TurnCredentials(
        username=username,
        password=password_for(secret, username),
        ttl=ttl,
        expires_at=expires_at,
        uris=tuple(uris),
    )


def expiry_of(username: str) -> int | None:
    """The expiry a TURN REST username carries, or None if it carries none."""
    stamp, sep, ref = username.partition(SEPARATOR)
    if not sep or not ref or not stamp.isascii() or not stamp.isdigit():
        return None
    return int(stamp)


def verify(secrets: Sequence[str], username: str, password: str, *, now: float) -> bool:
    """Would a TURN server that knows ``secrets`` accept these credentials at ``now``?

    The same decision coturn makes: the username's expiry is not past, and the
    password is the HMAC of the username under one of the secrets.
    """
    expiry = expiry_of(username)
    if expiry is None or expiry < now:
        return False
    offered = password.encode()
    # Every secret is tried, so the time taken does not say which one matched.
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(password_for(secret, username).encode(), offered)
    return matched


def refresh_at(credentials: TurnCredentials, refresh_before: int) -> int:
    """When to hand out fresh credentials: ``refresh_before`` seconds before expiry."""
    return credentials.expires_at - refresh_before


def coturn_auth_config(secrets: Sequence[str], realm: str) -> str:
    """The turnserver.conf lines that make coturn accept exactly these secrets."""
    lines = ["use-auth-secret", *(f"static-auth-secret={s}" for s in secrets), f"realm={realm}"]
    return "\n".join(lines) + "\n"
