"""Short-lived playback tickets: a ``<video src>`` cannot send ``Authorization``.

A ticket is issued over the normal bearer-authenticated API
(``POST /api/v1/recordings/{id}/playback-ticket``, after the same checks as the
media route) and redeemed at ``GET /api/v1/recordings/{id}/playback?ticket=…``,
which streams the same bytes as ``/media`` (Range included) and audits every use
as ``recording.play``. It is bound to one recording, one user (with their clinic,
role and login session) and one purpose, and expires after ``TICKET_TTL_SECONDS``.

Format: ``v1.<key version>.<base64url payload>.<base64url tag>``; the payload is
``recording_id|user_id|clinic_id|role|session_id|expires_at``, the tag an
HMAC-SHA256 over the purpose and the payload, keyed by a key derived (BLAKE2b,
keyed, personalised) from the recording master key of that version. Servers that
share ``RECORDING_KEYS`` accept each other's tickets; a forged or altered ticket,
one for another recording, or an expired one is refused with ``not_found`` (it
reveals nothing about the recording). So is a ticket whose login session has
ended since (logout, a password change from another session, a disabled account)
or whose user's role or clinic changed: at each use the ticket's principal is
re-checked by :class:`Sessions` (the accounts domain's ``recheck``, the same check
that ends live connections) and must be the same principal now. Redemption still
runs the media route's scope checks against the appointment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from teleconsult.core.errors import ClientError, NotFound
from teleconsult.core.identity import Principal, Role
from teleconsult.recording.keys import KeyRing

TICKET_TTL_SECONDS = 300
PURPOSE = b"teleconsult recording playback v1"
_PERSON = b"tc-rec-ticket"  # BLAKE2b personalisation (<= 16 bytes)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions(Protocol):
    """What the accounts domain tells about login sessions (``AccountService``)."""

    async def recheck(
        self, principals: Collection[Principal]
    ) -> Mapping[UUID, Principal | ClientError]:
        """For each login session, its principal as of now or why it may no longer act."""
        ...


async def still_current(sessions: Sessions | None, principal: Principal) -> bool:
    """Whether ``principal``'s login session is live and it is still the same user,
    clinic and role. Without ``sessions`` nothing is (tickets are refused)."""
    if sessions is None:
        return False
    now = (await sessions.recheck([principal])).get(principal.session_id)
    return now == principal


@dataclass(frozen=True)
class Ticket:
    ticket: str
    expires_at: float


class PlaybackTickets:
    def __init__(self, keys: KeyRing, *, ttl_seconds: int = TICKET_TTL_SECONDS) -> None:
        self._keys = keys
        self._ttl = ttl_seconds

    def _mac_key(self, version: int) -> bytes | None:
        master = self._keys.get(version)
        if master is None:
            return None
        return hashlib.blake2b(PURPOSE, key=master.key, digest_size=32, person=_PERSON).digest()

    def issue(
        self, principal: Principal, recording_id: UUID, *, now: float | None = None
    ) -> Ticket:
        expires = int((time.time() if now is None else now) + self._ttl)
        version = self._keys.current.version
        key = self._mac_key(version)
        assert key is not None
        payload = "|".join(
            (
                str(recording_id),
                str(principal.user_id),
                str(principal.clinic_id),
                principal.role.value,
                str(principal.session_id),
                str(expires),
            )
        ).encode("ascii")
        tag = hmac.new(key, PURPOSE + b"\0" + payload, hashlib.sha256).digest()
        return Ticket(f"v1.{version}.{_b64(payload)}.{_b64(tag)}", float(expires))

    def redeem(self, ticket: str, recording_id: UUID, *, now: float | None = None) -> Principal:
        """The principal the ticket was issued to, or ``NotFound`` for any bad ticket."""
        refused = NotFound("recording not found")
        parts = ticket.split(".")
        if len(parts) != 4 or parts[0] != "v1" or len(ticket) > 600:
            raise refused
        try:
            version = int(parts[1])
            payload = _unb64(parts[2])
            tag = _unb64(parts[3])
        except (ValueError, binascii.Error):
            raise refused from None
        key = self._mac_key(version)
        if key is None:
            raise refused
        want = hmac.new(key, PURPOSE + b"\0" + payload, hashlib.sha256).digest()
        if not hmac.compare_digest(want, tag):
            raise refused
        try:
            rid, uid, cid, role, sid, expires = payload.decode("ascii").split("|")
            principal = Principal(UUID(uid), UUID(cid), Role(role), UUID(sid))
            still = int(expires) > (time.time() if now is None else now)
            same = UUID(rid) == recording_id
        except ValueError:
            raise refused from None
        if not (still and same):
            raise refused
        return principal
