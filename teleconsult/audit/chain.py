"""The audit hash chain: canonical form, hashing and verification.

Pure functions over values, no I/O. A row's hash is
``SHA-256(prev_hash || canonical_form(prev_hash, row))``; the first row chains
from :data:`ZERO_HASH`. The canonical form includes ``seq`` and ``prev_hash``,
so a row's content cannot be moved to another position (even together with its
hashes) without its hash failing to match.

The canonical form is a storage format: rows already written must keep
verifying, so change it only by bumping ``CANONICAL_VERSION`` and teaching
:func:`canonical_form` to handle both versions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final
from uuid import UUID

HASH_SIZE: Final = 32
ZERO_HASH: Final = bytes(HASH_SIZE)
CANONICAL_VERSION: Final = 1
DEFAULT_MAX_PROBLEMS: Final = 1000

DetailValue = str | int | bool | None


@dataclass(frozen=True)
class AuditRecord:
    """One stored row of the audit trail."""

    seq: int
    occurred_at: datetime
    action: str
    outcome: str
    actor_id: UUID | None
    actor_role: str | None
    clinic_id: UUID | None
    object_type: str | None
    object_id: str | None
    ip: str | None
    detail: Mapping[str, DetailValue]
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True)
class ChainHead:
    """The newest seq and hash, kept beside the rows to expose deleted newest rows."""

    seq: int
    hash: bytes


GENESIS_HEAD: Final = ChainHead(seq=0, hash=ZERO_HASH)


def format_timestamp(value: datetime) -> str:
    """ISO-8601 in UTC with microseconds and a ``Z`` suffix."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("audit timestamps must be timezone-aware")
    utc = value.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def _plain(detail: Any) -> Any:
    # json.dumps only knows dict; a read-only Mapping must become one first.
    return dict(detail) if isinstance(detail, Mapping) else detail


def canonical_form(prev_hash: bytes, record: AuditRecord) -> bytes:
    """The bytes hashed for ``record`` when it follows a row whose hash is ``prev_hash``.

    Compact JSON with sorted keys, ASCII only; UUIDs as strings, the timestamp
    via :func:`format_timestamp`, ``null`` for missing values. ``record.prev_hash``
    and ``record.hash`` are ignored: the caller says what the row chains from.
    """
    document = {
        "v": CANONICAL_VERSION,
        "seq": record.seq,
        "occurred_at": format_timestamp(record.occurred_at),
        "actor_id": None if record.actor_id is None else str(record.actor_id),
        "actor_role": record.actor_role,
        "clinic_id": None if record.clinic_id is None else str(record.clinic_id),
        "action": record.action,
        "object_type": record.object_type,
        "object_id": record.object_id,
        "ip": record.ip,
        "outcome": record.outcome,
        "detail": _plain(record.detail),
        "prev_hash": prev_hash.hex(),
    }
    text = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )
    return text.encode("ascii")


def compute_hash(prev_hash: bytes, record: AuditRecord) -> bytes:
    """SHA-256 over ``prev_hash`` followed by the canonical form of ``record``."""
    return hashlib.sha256(prev_hash + canonical_form(prev_hash, record)).digest()


class ProblemKind(StrEnum):
    HASH_MISMATCH = "hash_mismatch"
    GAP = "gap"
    BROKEN_LINK = "broken_link"
    HEAD_MISMATCH = "head_mismatch"
    FIRST_ROW = "first_row"
    # Signed checkpoints (checkpoints.py): found by ``teleconsult audit verify``.
    BAD_SIGNATURE = "bad_signature"
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    CHECKPOINT_MISSING = "checkpoint_missing"


@dataclass(frozen=True)
class Problem:
    """One finding: the seq it is about (for a gap, the first missing seq)."""

    seq: int
    kind: ProblemKind
    message: str


@dataclass(frozen=True)
class CheckpointSummary:
    """How many signed checkpoints were checked, and against what."""

    in_database: int
    in_files: int
    files: int
    trusted_keys: int | None  # None: signatures were not checked


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of walking the chain.

    ``problems`` holds at most the verifier's ``max_problems`` entries;
    ``problem_count`` counts them all. ``checkpoints`` is None when no signed
    checkpoints were checked (a bare chain walk); ``pending`` is None when the
    intake was not counted. Events waiting in the intake are not a problem.
    """

    rows: int
    last_seq: int | None
    head_seq: int | None
    problems: tuple[Problem, ...] = field(default=())
    problem_count: int = 0
    checkpoints: CheckpointSummary | None = None
    pending: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


def _seq_range(first: int, last: int) -> str:
    return f"row {first}" if first == last else f"rows {first}-{last}"


class ChainVerifier:
    """Checks a chain row by row in O(1) memory (plus the capped problem list).

    Feed the rows in ascending seq order, then call :meth:`finish` with the head
    read in the same snapshot. Not safe for concurrent use.
    """

    def __init__(self, *, max_problems: int = DEFAULT_MAX_PROBLEMS) -> None:
        self._max_problems = max_problems
        self._problems: list[Problem] = []
        self._problem_count = 0
        self._rows = 0
        self._last_seq: int | None = None
        self._last_hash = ZERO_HASH

    def _add(self, seq: int, kind: ProblemKind, message: str) -> None:
        self._problem_count += 1
        if len(self._problems) < self._max_problems:
            self._problems.append(Problem(seq, kind, message))

    def feed(self, row: AuditRecord) -> None:
        """Check one row against its own hash and against the row before it."""
        self._rows += 1
        last = self._last_seq
        if last is None:
            if row.seq != 1:
                self._add(
                    row.seq,
                    ProblemKind.FIRST_ROW,
                    f"chain starts at seq {row.seq}, not 1 (oldest rows deleted?)",
                )
            elif row.prev_hash != ZERO_HASH:
                self._add(
                    row.seq,
                    ProblemKind.FIRST_ROW,
                    "first row does not chain from the zero hash (replaced?)",
                )
        elif row.seq <= last:
            self._add(
                row.seq,
                ProblemKind.BROKEN_LINK,
                f"seq {row.seq} comes after seq {last} (rows out of order or duplicated)",
            )
        elif row.seq > last + 1:
            # The link cannot hold across a gap, so it is not reported separately.
            self._add(
                last + 1,
                ProblemKind.GAP,
                f"{_seq_range(last + 1, row.seq - 1)} missing: the chain jumps from seq "
                f"{last} to {row.seq} (deleted?)",
            )
        elif row.prev_hash != self._last_hash:
            self._add(
                row.seq,
                ProblemKind.BROKEN_LINK,
                f"prev_hash does not match the hash of seq {last} "
                "(rows reordered, replaced or rehashed?)",
            )
        if row.hash != compute_hash(row.prev_hash, row):
            self._add(
                row.seq,
                ProblemKind.HASH_MISMATCH,
                "row content does not match its hash (edited?)",
            )
        self._last_seq = row.seq
        self._last_hash = row.hash

    def finish(self, head: ChainHead | None) -> VerifyReport:
        """Compare the end of the chain with the head and return the report.

        ``head`` is None when the head row itself is missing. Does not change the
        verifier's state.
        """
        end = self._head_problem(head)
        problems = list(self._problems)
        if end is not None and len(problems) < self._max_problems:
            problems.append(end)
        return VerifyReport(
            rows=self._rows,
            last_seq=self._last_seq,
            head_seq=None if head is None else head.seq,
            problems=tuple(problems),
            problem_count=self._problem_count + (end is not None),
        )

    def _head_problem(self, head: ChainHead | None) -> Problem | None:
        last = self._last_seq
        kind = ProblemKind.HEAD_MISMATCH
        if head is None:
            return Problem(last or 0, kind, "the audit_head row is missing (deleted?)")
        if last is None:
            if head.seq != 0:
                return Problem(
                    1,
                    kind,
                    f"{_seq_range(1, head.seq)} missing: the table is empty but the head is "
                    f"at seq {head.seq} (deleted?)",
                )
            if head.hash != ZERO_HASH:
                return Problem(
                    0, kind, "the chain is empty but the head hash is not zero (edited?)"
                )
            return None
        if head.seq > last:
            return Problem(
                last + 1,
                kind,
                f"{_seq_range(last + 1, head.seq)} missing: the chain ends at seq {last} but "
                f"the head is at seq {head.seq} (newest rows deleted?)",
            )
        if head.seq < last:
            return Problem(
                head.seq + 1,
                kind,
                f"the chain continues to seq {last} past the head at seq {head.seq} "
                "(rows added around the writer, or head edited?)",
            )
        if head.hash != self._last_hash:
            return Problem(
                last,
                kind,
                f"the head hash differs from the hash of seq {last} (head or last row edited?)",
            )
        return None


def verify_rows(
    rows: Iterable[AuditRecord],
    head: ChainHead | None,
    *,
    max_problems: int = DEFAULT_MAX_PROBLEMS,
) -> VerifyReport:
    """Verify rows given in ascending seq order against the head; any iterable works."""
    verifier = ChainVerifier(max_problems=max_problems)
    for row in rows:
        verifier.feed(row)
    return verifier.finish(head)
