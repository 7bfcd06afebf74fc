"""The one way e-mail addresses are compared: the key the database and the limiter share.

PostgreSQL's ``lower()`` follows the database's locale (in ``C.UTF-8`` it maps
``İ`` to ``i``; Python maps it to ``i̇``), so a key computed in SQL and one
computed here could differ, and an attacker could get a fresh rate-limit bucket
for the same account by spelling the address another way. The key is therefore
computed only here, stored in ``users.email_key`` (unique), and used for the
limiter's bucket.

Unicode's NFKC_Casefold, approximated as NFKC, full case folding, NFKC again:
``İ`` and ``i̇`` (i with a combining dot), ``ß`` and ``ss``, ``ﬁ`` and ``fi``,
upper and lower case all give the same key. The address as typed is kept for
display.
"""

from __future__ import annotations

import hashlib
import unicodedata


def email_key(email: str) -> str:
    """The comparison key of an e-mail address (pure, no I/O)."""
    folded = unicodedata.normalize("NFKC", email.strip()).casefold()
    return unicodedata.normalize("NFKC", folded)


def email_digest(email: str) -> str:
    """A digest of the key, for places that must not hold the address (Redis key names)."""
    return hashlib.sha256(email_key(email).encode("utf-8")).hexdigest()[:32]
