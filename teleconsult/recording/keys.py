"""Versioned master keys for sealed objects (``RECORDING_KEYS``, newest first).

The settings (``core/settings.py``, ``RecordingSettings``) read and validate the
variable (or ``RECORDING_KEYS_FILE``, or the development key generated at first run
into ``<data_dir>/recording-keys``); this module turns them into the
:class:`KeyRing` that sealing, opening and rotation use.

Rotation, for an operator:

1. generate a key (:func:`new_key_text`, or 32 random bytes in base64) and put
   ``N+1:<key>`` first in ``RECORDING_KEYS`` (keep the old ones after it);
2. restart the servers: new objects are sealed under N+1 at once;
3. run ``teleconsult recordings rotate-key``: every data key is re-wrapped under N+1
   (resumable; media is not re-encrypted);
4. when it reports nothing left under an old version, remove that key.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from dataclasses import dataclass

from teleconsult.recording.seal import KEY_BYTES, MasterKey


@dataclass(frozen=True)
class KeyRing:
    """Master keys by version; ``current`` (the newest) seals and re-wraps."""

    keys: tuple[MasterKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a key ring needs at least one key")
        versions = [k.version for k in self.keys]
        if len(set(versions)) != len(versions):
            raise ValueError("master key versions must be distinct")

    @classmethod
    def of(cls, pairs: Iterable[tuple[int, bytes]]) -> KeyRing:
        return cls(tuple(MasterKey(version, key) for version, key in pairs))

    @property
    def current(self) -> MasterKey:
        return max(self.keys, key=lambda k: k.version)

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted((k.version for k in self.keys), reverse=True))

    def get(self, version: int) -> MasterKey | None:
        for key in self.keys:
            if key.version == version:
                return key
        return None


def new_key_text(version: int) -> str:
    """A fresh ``version:base64key`` entry for RECORDING_KEYS."""
    return f"{version}:{base64.b64encode(os.urandom(KEY_BYTES)).decode('ascii')}"
