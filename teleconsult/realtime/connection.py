"""One live Socket.IO connection of a signed-in user, as the hub and the guard see it.

Kept small on purpose: an idle connection costs this object, python-socketio's
own state and nothing else (no task, no queue, no bus subscription of its own).
"""

from __future__ import annotations

import time
from uuid import UUID

from teleconsult.core.identity import Grant
from teleconsult.realtime.limits import TokenBucket
from teleconsult.realtime.server import Encoding


class Connection:
    """``sid`` in ``namespace``, carried by the engine.io session ``eio``.

    ``queued_bytes`` counts the bytes handed to engine.io since its queue for this
    client was last seen empty (see Hub): a client that keeps up empties it often.
    """

    __slots__ = (
        "bucket",
        "closing",
        "encoding",
        "eio",
        "expires_at",
        "namespace",
        "principal",
        "queued_bytes",
        "sid",
    )

    def __init__(
        self,
        *,
        sid: str,
        eio: str,
        namespace: str,
        grant: Grant,
        encoding: Encoding,
        bucket: TokenBucket,
    ) -> None:
        self.sid = sid
        self.eio = eio
        self.namespace = namespace
        self.principal = grant.principal
        self.expires_at = grant.expires_at
        self.encoding: Encoding = encoding
        self.bucket = bucket
        self.queued_bytes = 0
        self.closing = False

    @property
    def user_id(self) -> UUID:
        return self.principal.user_id

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at <= (time.time() if now is None else now)

    def renew(self, grant: Grant) -> None:
        self.principal = grant.principal
        self.expires_at = grant.expires_at
