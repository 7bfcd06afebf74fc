"""Field-level encryption of sensitive columns, and blind indexes (docs/records.md).

Each clinic has a data key (encrypts fields) and an index key (blind indexes), both
random 32-byte keys stored in ``record_keys`` only wrapped by a master key from the
settings (``RECORDS_KEYS``), which the database never holds.

A field ciphertext is ``0x01 || key id (4 bytes, big-endian) || nonce (24) ||
XChaCha20-Poly1305(plaintext)`` where the associated data is
``teleconsult/field/v1\\0 || table \\0 column \\0 || row id (16 bytes)``: a ciphertext
moved to another row, column or table does not open. The key id names the
``record_keys`` row, so rotation can tell old ciphertexts from new ones.

A blind index is HMAC-SHA256 of ``purpose \\0 normalised value`` under the index
key: equal values (after normalisation) give equal indexes, which is what a
search by national id needs, and nothing else can be read from them.

This module holds no transport; the SQL for keys is at the bottom (small enough to
stay here). :class:`FieldCrypt` is safe to share: unwrapped keys are cached by key
id, and which key is current is read from the database on every :meth:`for_clinic`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias
from uuid import UUID

import asyncpg
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from teleconsult.core.errors import TeleconsultError

Conn: TypeAlias = "asyncpg.Connection | asyncpg.Pool"

FORMAT: Final = 1
NONCE_BYTES: Final = 24
HEADER_BYTES: Final = 1 + 4 + NONCE_BYTES
_FIELD_AD: Final = b"teleconsult/field/v1\0"
_WRAP_AD: Final = b"teleconsult/record-key/v1\0"


class FieldCryptError(TeleconsultError):
    """A ciphertext does not open: wrong row, tampered, or its key is unknown."""


def _ad(table: str, column: str, row_id: UUID) -> bytes:
    return _FIELD_AD + f"{table}\0{column}\0".encode() + row_id.bytes


def _seal(key: bytes, plaintext: bytes, ad: bytes) -> tuple[bytes, bytes]:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce, crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key)


def _open(key: bytes, nonce: bytes, sealed: bytes, ad: bytes) -> bytes:
    try:
        return bytes(crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, ad, nonce, key))
    except CryptoError:
        raise FieldCryptError("ciphertext does not open") from None


def key_id_of(ciphertext: bytes) -> int:
    if len(ciphertext) < HEADER_BYTES or ciphertext[0] != FORMAT:
        raise FieldCryptError("not a field ciphertext")
    return int.from_bytes(ciphertext[1:5], "big")


_NOT_ALNUM = re.compile(r"[^0-9a-z]")


def normalise(value: str) -> str:
    """The form blind indexes are taken of: NFKC, case-folded, letters and digits only
    (so ``AB 12-34`` and ``ab1234`` match)."""
    return _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", value).casefold())


@dataclass(frozen=True)
class ClinicKeys:
    """A clinic's current data key, its index key, and a way to open older ciphertexts."""

    clinic_id: UUID
    key_id: int
    data_key: bytes
    index_key: bytes
    older: Mapping[int, bytes]

    def encrypt(self, table: str, column: str, row_id: UUID, plaintext: str) -> bytes:
        return self.encrypt_bytes(table, column, row_id, plaintext.encode())

    def encrypt_bytes(self, table: str, column: str, row_id: UUID, plaintext: bytes) -> bytes:
        nonce, sealed = _seal(self.data_key, plaintext, _ad(table, column, row_id))
        return bytes([FORMAT]) + self.key_id.to_bytes(4, "big") + nonce + sealed

    def encrypt_json(self, table: str, column: str, row_id: UUID, value: Any) -> bytes:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
        return self.encrypt(table, column, row_id, text)

    def decrypt(self, table: str, column: str, row_id: UUID, ciphertext: bytes) -> str:
        return self.decrypt_bytes(table, column, row_id, ciphertext).decode()

    def decrypt_bytes(self, table: str, column: str, row_id: UUID, ciphertext: bytes) -> bytes:
        key_id = key_id_of(ciphertext)
        key = self.data_key if key_id == self.key_id else self.older.get(key_id)
        if key is None:
            raise FieldCryptError(f"data key {key_id} is not loaded")
        nonce = ciphertext[5:HEADER_BYTES]
        return _open(key, nonce, ciphertext[HEADER_BYTES:], _ad(table, column, row_id))

    def decrypt_json(self, table: str, column: str, row_id: UUID, ciphertext: bytes) -> Any:
        return json.loads(self.decrypt(table, column, row_id, ciphertext))

    def blind_index(self, purpose: str, value: str) -> bytes:
        message = purpose.encode() + b"\0" + normalise(value).encode()
        return hmac.new(self.index_key, message, hashlib.sha256).digest()


class FieldCrypt:
    """Loads (and on first use creates) each clinic's keys, unwrapping them with the
    master keys given as ``{version: key}``."""

    def __init__(self, master_keys: Mapping[int, bytes]) -> None:
        if not master_keys:
            raise ValueError("at least one master key is needed")
        self._masters = dict(master_keys)
        self._current = max(self._masters)
        self._unwrapped: dict[int, tuple[bytes, bytes]] = {}

    @property
    def master_version(self) -> int:
        return self._current

    def wrap(self, key: bytes, clinic_id: UUID, kind: str) -> bytes:
        nonce, sealed = _seal(
            self._masters[self._current], key, _WRAP_AD + _wrap_ad(clinic_id, kind)
        )
        return nonce + sealed

    def unwrap(self, wrapped: bytes, clinic_id: UUID, kind: str, master_version: int) -> bytes:
        master = self._masters.get(master_version)
        if master is None:
            raise FieldCryptError(f"master key version {master_version} is not configured")
        ad = _WRAP_AD + _wrap_ad(clinic_id, kind)
        return _open(master, wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], ad)

    def _keys_of(self, row: asyncpg.Record) -> tuple[bytes, bytes]:
        cached = self._unwrapped.get(row["id"])
        if cached is None:
            clinic, version = row["clinic_id"], row["master_version"]
            cached = (
                self.unwrap(row["wrapped_data_key"], clinic, "data", version),
                self.unwrap(row["wrapped_index_key"], clinic, "index", version),
            )
            self._unwrapped[row["id"]] = cached
        return cached

    async def for_clinic(self, conn: Conn, clinic_id: UUID) -> ClinicKeys:
        """The clinic's keys, every data key it ever had included (one query)."""
        rows = await _clinic_keys(conn, clinic_id)
        if not any(row["retired_at"] is None for row in rows):
            await self._create(conn, clinic_id, index_key=None)
            rows = await _clinic_keys(conn, clinic_id)
        current = next(row for row in rows if row["retired_at"] is None)
        data_key, index_key = self._keys_of(current)
        older = {row["id"]: self._keys_of(row)[0] for row in rows if row["id"] != current["id"]}
        return ClinicKeys(clinic_id, current["id"], data_key, index_key, older)

    async def _create(self, conn: Conn, clinic_id: UUID, *, index_key: bytes | None) -> None:
        """A new current data key for the clinic (a concurrent twin makes this a no-op)."""
        data_key = secrets.token_bytes(32)
        index_key = index_key or secrets.token_bytes(32)
        await conn.execute(
            "INSERT INTO record_keys (clinic_id, master_version, wrapped_data_key, "
            "wrapped_index_key) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (clinic_id) WHERE retired_at IS NULL DO NOTHING",
            clinic_id,
            self._current,
            self.wrap(data_key, clinic_id, "data"),
            self.wrap(index_key, clinic_id, "index"),
        )

    async def start_rotation(self, conn: asyncpg.Connection, clinic_id: UUID) -> ClinicKeys:
        """Retire the clinic's current data key and make a new one under the newest master
        key; the index key is kept (re-wrapped), so blind indexes stay valid. Older keys
        are re-wrapped under the newest master key too. Returns the new keys."""
        keys = await self.for_clinic(conn, clinic_id)
        async with conn.transaction():
            await conn.execute(
                "UPDATE record_keys SET retired_at = now() "
                "WHERE clinic_id = $1 AND retired_at IS NULL",
                clinic_id,
            )
            await self._create(conn, clinic_id, index_key=keys.index_key)
            for key_id, data_key in {keys.key_id: keys.data_key, **keys.older}.items():
                await conn.execute(
                    "UPDATE record_keys SET master_version = $2, wrapped_data_key = $3, "
                    "wrapped_index_key = $4 WHERE id = $1",
                    key_id,
                    self._current,
                    self.wrap(data_key, clinic_id, "data"),
                    self.wrap(keys.index_key, clinic_id, "index"),
                )
        self._unwrapped.clear()
        return await self.for_clinic(conn, clinic_id)


def _wrap_ad(clinic_id: UUID, kind: str) -> bytes:
    return clinic_id.bytes + kind.encode()


async def _clinic_keys(conn: Conn, clinic_id: UUID) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT id, clinic_id, master_version, wrapped_data_key, wrapped_index_key, retired_at "
        "FROM record_keys WHERE clinic_id = $1 ORDER BY id",
        clinic_id,
    )
    return rows
