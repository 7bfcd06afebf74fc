"""Checking a fault run against the stored history: what was lost, doubled, foreign or reordered.

Pure functions over values (no I/O), so the check itself is tested on crafted
histories. A message is known by its key, ``(sender, k)``: the sending user's
index and its own running number, read from the decrypted plaintext.

Each sender sends one message at a time, the next only once the last was
acknowledged, so its stored messages must carry increasing ``k``; each thread's
stored seqs must run 1, 2, 3 ...; each recipient must get every acknowledged
message of the others in its thread once, in seq order, with the seq it was
stored under.

What counts:

* **lost**: an acknowledged message missing from the history, or one some
  recipient never got (``lost_deliveries`` counts the missing pairs);
* **duplicated**: a message stored twice, or delivered twice to a recipient;
* **unexpected**: a stored or delivered message nobody sent (unreadable, or of
  another run), or stored or delivered under another seq than its ack said;
* **out of order**: a stored message whose ``k`` is below one of its sender's
  stored before it, a gap or repeat in the thread's seqs, or a delivery whose
  seq is not above the recipient's last.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

Key = tuple[int, int]  # (sender index, message number)
EXAMPLES = 5


@dataclass(frozen=True)
class Seen:
    """One stored or delivered message: its seq, and its key when it was ours."""

    seq: int
    key: Key | None


@dataclass(frozen=True)
class Thread:
    """What one thread should hold and what it did hold and hand out."""

    members: Sequence[int]  # user indexes
    sent: Set[Key]  # every message its members tried to send, acknowledged or not
    acked: Mapping[Key, int]  # acknowledged message -> the seq its ack named
    history: Sequence[Seen]  # as stored, in the order the API returned it
    received: Mapping[int, Sequence[Seen]]  # recipient -> deliveries in arrival order


@dataclass
class Reconciliation:
    lost: int = 0  # acknowledged messages missing from the history or from a recipient
    lost_stored: int = 0
    lost_deliveries: int = 0  # (message, recipient) pairs
    duplicated: int = 0
    duplicated_stored: int = 0
    duplicated_deliveries: int = 0
    unexpected: int = 0
    out_of_order: int = 0
    stored: int = 0
    delivered: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected or self.out_of_order)

    def note(self, text: str) -> None:
        if len(self.examples) < EXAMPLES * 4:
            self.examples.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {
            "lost": self.lost,
            "lost_stored": self.lost_stored,
            "lost_deliveries": self.lost_deliveries,
            "duplicated": self.duplicated,
            "duplicated_stored": self.duplicated_stored,
            "duplicated_deliveries": self.duplicated_deliveries,
            "unexpected": self.unexpected,
            "out_of_order": self.out_of_order,
            "stored": self.stored,
            "delivered": self.delivered,
            "examples": list(self.examples),
        }


def reconcile(threads: Sequence[Thread]) -> Reconciliation:
    out = Reconciliation()
    for n, thread in enumerate(threads):
        stored_at = _check_history(out, n, thread)
        _check_deliveries(out, n, thread, stored_at)
    return out


def _check_history(out: Reconciliation, n: int, thread: Thread) -> dict[Key, int]:
    """Counts the history's faults; returns each key's (first) stored seq."""
    stored_at: dict[Key, int] = {}
    highest: dict[int, int] = {}  # sender -> highest k stored so far
    for expected_seq, seen in enumerate(thread.history, start=1):
        out.stored += 1
        if seen.seq != expected_seq:
            out.out_of_order += 1
            out.note(f"thread {n}: stored seq {seen.seq} where {expected_seq} was due")
        key = seen.key
        if key is None or key not in thread.sent:
            out.unexpected += 1
            out.note(f"thread {n}: seq {seen.seq} holds a message nobody sent ({key})")
            continue
        if key in stored_at:
            out.duplicated_stored += 1
            out.duplicated += 1
            out.note(f"thread {n}: message {key} stored twice (seqs {stored_at[key]}, {seen.seq})")
            continue
        stored_at[key] = seen.seq
        acked = thread.acked.get(key)
        if acked is not None and acked != seen.seq:
            out.unexpected += 1
            out.note(f"thread {n}: message {key} acked as seq {acked}, stored as {seen.seq}")
        sender, k = key
        if k < highest.get(sender, -1):
            out.out_of_order += 1
            out.note(f"thread {n}: message {key} stored after {sender}'s #{highest[sender]}")
        highest[sender] = max(k, highest.get(sender, -1))
    missing = [key for key in thread.acked if key not in stored_at]
    out.lost_stored += len(missing)
    out.lost += len(missing)
    for key in missing[:EXAMPLES]:
        out.note(f"thread {n}: acknowledged message {key} is not in the history")
    return stored_at


def _check_deliveries(
    out: Reconciliation, n: int, thread: Thread, stored_at: dict[Key, int]
) -> None:
    lost_here: set[Key] = set()  # stored but missing somewhere (unstored ones are counted)
    for recipient in thread.members:
        got = thread.received.get(recipient, ())
        counts: Counter[Key] = Counter()
        last_seq = 0
        for seen in got:
            out.delivered += 1
            if seen.seq < last_seq:
                out.out_of_order += 1
                out.note(f"thread {n}: user {recipient} got seq {seen.seq} after {last_seq}")
            last_seq = max(last_seq, seen.seq)
            key = seen.key
            if key is None or key not in stored_at or stored_at[key] != seen.seq:
                out.unexpected += 1
                out.note(f"thread {n}: user {recipient} got seq {seen.seq} ({key}), not so stored")
                continue
            counts[key] += 1
        for key, times in counts.items():
            if times > 1:
                out.duplicated_deliveries += times - 1
                out.duplicated += times - 1
                out.note(f"thread {n}: user {recipient} got message {key} {times} times")
        for key in thread.acked:
            if key[0] != recipient and key not in counts:
                out.lost_deliveries += 1
                if key in stored_at:
                    lost_here.add(key)
                    out.note(f"thread {n}: user {recipient} never got message {key}")
    out.lost += len(lost_here)
