"""Signed checkpoints: Ed25519 signatures over the head of each chained batch.

The hash chain alone catches edits, deletions and reordering, but not a
database superuser who switches the triggers off, edits a row and re-hashes
every row from there on (``compute_hash`` is public). Checkpoints close that
gap: the sequencer signs the seq and hash of every batch's last row with a key
the database never holds (``AUDIT_SIGNING_KEY`` or a file), stores the
checkpoint in ``audit_checkpoints`` and appends it as one JSON line to a file
outside the database. ``teleconsult audit verify`` checks every checkpoint
against the chain and the trusted public keys.

The signed message is :data:`DOMAIN` followed by the seq (8 bytes, big-endian)
and the 32-byte hash. A key is named by its ``key_id``: the first 16 hex
characters of SHA-256 over the raw 32-byte public key.

:class:`CheckpointChecker` is pure (no I/O); :class:`CheckpointFile` and
:func:`read_checkpoint_file` do blocking file I/O (call them in a thread from
async code).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from teleconsult.audit.chain import (
    DEFAULT_MAX_PROBLEMS,
    HASH_SIZE,
    Problem,
    ProblemKind,
    format_timestamp,
)

DOMAIN: Final = b"teleconsult/audit-checkpoint/v1\x00"
SEED_SIZE: Final = 32
PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64


def checkpoint_message(seq: int, chain_hash: bytes) -> bytes:
    """The bytes signed for the chain's row ``seq`` whose hash is ``chain_hash``."""
    if not 0 < seq < 1 << 63 or len(chain_hash) != HASH_SIZE:
        raise ValueError("a checkpoint needs a positive seq and a 32-byte hash")
    return DOMAIN + seq.to_bytes(8, "big") + chain_hash


def key_id_of(public_key: bytes) -> str:
    """First 16 hex characters of SHA-256 over the raw public key."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def parse_public_key(text: str) -> bytes:
    """A public key given as 64 hex characters; ValueError otherwise."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError("a public key is 64 hex characters") from None
    if len(raw) != PUBLIC_KEY_SIZE:
        raise ValueError("a public key is 64 hex characters")
    return raw


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement that the chain's row ``seq`` has hash ``hash``."""

    seq: int
    hash: bytes
    key_id: str
    signature: bytes
    signed_at: datetime

    def same_as(self, other: Checkpoint) -> bool:
        """Equal in everything that is signed or names the signer."""
        return (self.seq, self.hash, self.key_id, self.signature) == (
            other.seq,
            other.hash,
            other.key_id,
            other.signature,
        )

    def to_line(self) -> str:
        """One JSON line, newline included, for the checkpoint file."""
        document = {
            "seq": self.seq,
            "hash": self.hash.hex(),
            "key_id": self.key_id,
            "signature": self.signature.hex(),
            "signed_at": format_timestamp(self.signed_at),
        }
        return json.dumps(document, separators=(",", ":"), sort_keys=True) + "\n"

    @classmethod
    def from_line(cls, line: str) -> Checkpoint:
        """Parse :meth:`to_line`'s output; ValueError when the line is not one."""
        try:
            document = json.loads(line)
            seq = document["seq"]
            chain_hash = bytes.fromhex(document["hash"])
            key_id = document["key_id"]
            signature = bytes.fromhex(document["signature"])
            signed_at = datetime.fromisoformat(document["signed_at"].replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a checkpoint line: {exc}") from None
        if (
            not isinstance(seq, int)
            or isinstance(seq, bool)
            or seq <= 0
            or len(chain_hash) != HASH_SIZE
            or not isinstance(key_id, str)
            or len(signature) != SIGNATURE_SIZE
        ):
            raise ValueError("not a checkpoint line: a field has the wrong size or type")
        return cls(seq, chain_hash, key_id, signature, signed_at)


class CheckpointSigner:
    """Signs checkpoints with one Ed25519 key (from its 32-byte seed)."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise ValueError("an Ed25519 signing key seed is 32 bytes")
        self._key = SigningKey(seed)
        self.public_key: bytes = self._key.verify_key.encode()
        self.key_id = key_id_of(self.public_key)

    def sign(self, seq: int, chain_hash: bytes, *, at: datetime | None = None) -> Checkpoint:
        signature = self._key.sign(checkpoint_message(seq, chain_hash)).signature
        return Checkpoint(
            seq=seq,
            hash=chain_hash,
            key_id=self.key_id,
            signature=signature,
            signed_at=at or datetime.now(UTC),
        )


class TrustedKeys:
    """The public keys whose checkpoints are believed, by key id."""

    def __init__(self, public_keys: Iterable[bytes]) -> None:
        self._keys = {key_id_of(key): VerifyKey(key) for key in public_keys}

    def __len__(self) -> int:
        return len(self._keys)

    def refusal(self, checkpoint: Checkpoint) -> str | None:
        """None when a trusted key signed ``checkpoint``, else why it is refused."""
        key = self._keys.get(checkpoint.key_id)
        if key is None:
            return f"signed by key {checkpoint.key_id!r}, which is not trusted (forged?)"
        try:
            key.verify(checkpoint_message(checkpoint.seq, checkpoint.hash), checkpoint.signature)
        except (BadSignatureError, ValueError):
            return f"the signature does not verify under key {checkpoint.key_id} (forged?)"
        return None


class CheckpointChecker:
    """Collects checkpoint findings; pure, fed by the verifier. Not safe concurrently.

    ``keys`` None means signatures are not checked (only hashes are compared).
    """

    def __init__(
        self, keys: TrustedKeys | None, *, max_problems: int = DEFAULT_MAX_PROBLEMS
    ) -> None:
        self._keys = keys
        self._max_problems = max_problems
        self.problems: list[Problem] = []
        self.problem_count = 0
        self.in_database = 0
        self.in_files = 0

    def _add(self, seq: int, kind: ProblemKind, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < self._max_problems:
            self.problems.append(Problem(seq, kind, message))

    def _signature(self, checkpoint: Checkpoint, where: str) -> None:
        if self._keys is None:
            return
        refusal = self._keys.refusal(checkpoint)
        if refusal is not None:
            self._add(checkpoint.seq, ProblemKind.BAD_SIGNATURE, f"{where}: {refusal}")

    def stored(self, checkpoint: Checkpoint, chain_hash: bytes | None) -> None:
        """A row of ``audit_checkpoints``; ``chain_hash`` is the hash of the chain's
        row at that seq, None when there is no such row."""
        self.in_database += 1
        where = "checkpoint in the database"
        self._signature(checkpoint, where)
        if chain_hash is None:
            self._add(
                checkpoint.seq,
                ProblemKind.CHECKPOINT_MISMATCH,
                f"{where}: signed for seq {checkpoint.seq}, which is not in the chain "
                "(rows deleted?)",
            )
        elif chain_hash != checkpoint.hash:
            self._add(
                checkpoint.seq,
                ProblemKind.CHECKPOINT_MISMATCH,
                f"{where}: the chain's hash at seq {checkpoint.seq} differs from the signed "
                "one (chain rewritten and re-hashed?)",
            )

    def filed(
        self,
        checkpoint: Checkpoint,
        where: str,
        *,
        stored: Checkpoint | None,
        chain_hash: bytes | None,
        head_seq: int | None,
    ) -> None:
        """A checkpoint read from a file, with what the database holds at its seq.

        The file was read up to the size it had before the database snapshot was
        taken, so every checkpoint in it was committed before that snapshot.
        """
        self.in_files += 1
        if stored is not None and stored.same_as(checkpoint):
            return  # checked as a stored checkpoint already
        self._signature(checkpoint, where)
        seq = checkpoint.seq
        if stored is None:
            self._add(
                seq,
                ProblemKind.CHECKPOINT_MISSING,
                f"{where}: not in the database (checkpoint row deleted?)",
            )
        else:
            self._add(
                seq,
                ProblemKind.CHECKPOINT_MISMATCH,
                f"{where}: differs from the database's checkpoint at seq {seq} "
                "(checkpoint row replaced?)",
            )
        if head_seq is not None and seq > head_seq:
            self._add(
                seq,
                ProblemKind.CHECKPOINT_MISMATCH,
                f"{where}: signed for seq {seq}, past the head at seq {head_seq} "
                "(newest rows deleted?)",
            )
        elif chain_hash is None:
            self._add(
                seq,
                ProblemKind.CHECKPOINT_MISMATCH,
                f"{where}: signed for seq {seq}, which is not in the chain (rows deleted?)",
            )
        elif chain_hash != checkpoint.hash:
            self._add(
                seq,
                ProblemKind.CHECKPOINT_MISMATCH,
                f"{where}: the chain's hash at seq {seq} differs from the signed one "
                "(chain rewritten and re-hashed?)",
            )

    def unreadable(self, where: str, reason: str) -> None:
        """A line of a checkpoint file that is not a checkpoint: it cannot be trusted."""
        self._add(0, ProblemKind.BAD_SIGNATURE, f"{where}: {reason} (edited?)")


class CheckpointFile:
    """The append-only checkpoint file outside the database.

    Each checkpoint is one line written with a single ``write`` on a file opened
    with O_APPEND, then fsynced, so processes that share the file never
    interleave their lines. Blocking: call :meth:`append` in a thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, checkpoint: Checkpoint) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, checkpoint.to_line().encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)


def read_checkpoint_file(
    path: Path, limit: int
) -> Generator[tuple[int, Checkpoint | ValueError], None, None]:
    """``(line number, checkpoint or the parse error)`` for the first ``limit`` bytes.

    A last line without its newline is skipped: it was being written when the
    size was taken. Blocking.
    """
    with path.open("rb") as handle:
        remaining = limit
        number = 0
        for raw in handle:
            if remaining <= 0:
                return
            part = raw[:remaining]
            remaining -= len(raw)
            number += 1
            if not part.endswith(b"\n"):
                return
            try:
                yield number, Checkpoint.from_line(part.decode("ascii"))
            except (ValueError, UnicodeDecodeError) as exc:
                yield number, ValueError(str(exc))
