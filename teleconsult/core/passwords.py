"""Password hashing with argon2id (libsodium through pynacl).

Hashing is CPU- and memory-heavy by design, so it runs in a worker thread and a
semaphore bounds how many run at once (each takes ``memlimit`` bytes).
"""

from __future__ import annotations

import asyncio
import re

import nacl.exceptions
import nacl.pwhash

_PARAMS = re.compile(r"^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$")


class PasswordHasher:
    """argon2id hashes in the standard PHC string format.

    ``memlimit_kib`` and ``opslimit`` must be at least OWASP's minimum (19 MiB,
    t=2); settings validation enforces that.
    """

    def __init__(self, *, memlimit_kib: int, opslimit: int, concurrency: int = 4) -> None:
        self._memlimit = memlimit_kib * 1024
        self._opslimit = opslimit
        self._slots = asyncio.Semaphore(concurrency)
        self._dummy: str | None = None

    def hash_sync(self, password: str) -> str:
        raw = nacl.pwhash.argon2id.str(
            password.encode("utf-8"), opslimit=self._opslimit, memlimit=self._memlimit
        )
        return raw.decode("ascii")

    @staticmethod
    def verify_sync(stored: str, password: str) -> bool:
        try:
            return bool(nacl.pwhash.verify(stored.encode("ascii"), password.encode("utf-8")))
        except (nacl.exceptions.InvalidkeyError, nacl.exceptions.CryptoError, ValueError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        match = _PARAMS.match(stored)
        if not match:
            return True
        memory_kib, time_cost = int(match[1]), int(match[2])
        return memory_kib * 1024 < self._memlimit or time_cost < self._opslimit

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self.hash_sync, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Check a password; with ``stored`` None, spend the same time and return False.

        Equal timing for unknown accounts keeps login from revealing which
        e-mail addresses exist.
        """
        async with self._slots:
            if stored is None:
                if self._dummy is None:
                    self._dummy = await asyncio.to_thread(self.hash_sync, "dummy-password")
                await asyncio.to_thread(self.verify_sync, self._dummy, password)
                return False
            return await asyncio.to_thread(self.verify_sync, stored, password)
