"""The audit hash chain on in-memory rows: canonical form, hashing, verification."""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from teleconsult.audit import (
    ZERO_HASH,
    AuditRecord,
    ChainHead,
    ChainVerifier,
    Checkpoint,
    CheckpointSigner,
    CheckpointSummary,
    Problem,
    ProblemKind,
    VerifyReport,
    canonical_form,
    checkpoint_message,
    compute_hash,
    format_report,
    format_timestamp,
    key_id_of,
    parse_public_key,
    verify_rows,
)
from teleconsult.audit.checkpoints import DOMAIN, CheckpointChecker, TrustedKeys

ACTOR = UUID("11111111-2222-3333-4444-555555555555")
CLINIC = UUID("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")
START = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def unhashed(seq: int, **changes: Any) -> AuditRecord:
    fields: dict[str, Any] = {
        "seq": seq,
        "occurred_at": START + timedelta(seconds=seq),
        "action": "patient.read" if seq % 2 else "auth.login",
        "outcome": "success",
        "actor_id": ACTOR,
        "actor_role": "doctor",
        "clinic_id": CLINIC,
        "object_type": "patient",
        "object_id": f"patient-{seq}",
        "ip": "192.0.2.7",
        "detail": {"via": "web", "attempt": seq},
        "prev_hash": b"",
        "hash": b"",
    }
    fields.update(changes)
    return AuditRecord(**fields)


def chain(length: int) -> list[AuditRecord]:
    rows: list[AuditRecord] = []
    prev = ZERO_HASH
    for seq in range(1, length + 1):
        row = dataclasses.replace(unhashed(seq), prev_hash=prev)
        row = dataclasses.replace(row, hash=compute_hash(prev, row))
        rows.append(row)
        prev = row.hash
    return rows


def head_of(rows: list[AuditRecord]) -> ChainHead:
    return ChainHead(seq=rows[-1].seq, hash=rows[-1].hash) if rows else ChainHead(0, ZERO_HASH)


def kinds_at(report: VerifyReport) -> set[tuple[int, ProblemKind]]:
    return {(p.seq, p.kind) for p in report.problems}


def test_canonical_form_is_sorted_compact_json_with_utc_microseconds() -> None:
    row = unhashed(1, occurred_at=datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), detail={"b": 1})

    assert canonical_form(ZERO_HASH, row) == (
        b'{"action":"patient.read","actor_id":"11111111-2222-3333-4444-555555555555",'
        b'"actor_role":"doctor","clinic_id":"aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",'
        b'"detail":{"b":1},"ip":"192.0.2.7","object_id":"patient-1",'
        b'"object_type":"patient","occurred_at":"2024-05-06T07:08:09.000000Z",'
        b'"outcome":"success","prev_hash":"' + b"00" * 32 + b'","seq":1,"v":1}'
    )


def test_canonical_form_writes_missing_values_as_null() -> None:
    row = unhashed(
        1, actor_id=None, actor_role=None, clinic_id=None, object_type=None, object_id=None, ip=None
    )

    text = canonical_form(ZERO_HASH, row)

    for name in (b"actor_id", b"actor_role", b"clinic_id", b"object_type", b"object_id", b"ip"):
        assert b'"' + name + b'":null' in text


def test_canonical_form_ignores_detail_insertion_order() -> None:
    first = unhashed(1, detail={"a": 1, "b": "x", "c": None})
    second = unhashed(1, detail={"c": None, "b": "x", "a": 1})

    assert canonical_form(ZERO_HASH, first) == canonical_form(ZERO_HASH, second)


def test_canonical_form_is_ascii_for_non_ascii_text() -> None:
    row = unhashed(1, detail={"name": "Zoë ✓"})

    assert b'"name":"Zo\\u00eb \\u2713"' in canonical_form(ZERO_HASH, row)


def test_canonical_form_ignores_the_stored_hashes() -> None:
    row = unhashed(1)

    assert canonical_form(ZERO_HASH, row) == canonical_form(
        ZERO_HASH, dataclasses.replace(row, prev_hash=b"x" * 32, hash=b"y" * 32)
    )


def test_format_timestamp_converts_to_utc() -> None:
    east = timezone(timedelta(hours=3))

    assert format_timestamp(datetime(2024, 1, 1, 3, 0, 0, 5, tzinfo=east)) == (
        "2024-01-01T00:00:00.000005Z"
    )


def test_format_timestamp_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_timestamp(datetime(2024, 1, 1))


def test_compute_hash_is_reproducible() -> None:
    row = unhashed(1)

    assert compute_hash(ZERO_HASH, row) == compute_hash(ZERO_HASH, dataclasses.replace(row))
    assert compute_hash(ZERO_HASH, row) == (
        hashlib.sha256(ZERO_HASH + canonical_form(ZERO_HASH, row)).digest()
    )


def test_compute_hash_of_a_known_row_is_unchanged() -> None:
    # Stored chains must keep verifying: a change here breaks every database.
    assert compute_hash(ZERO_HASH, unhashed(1)).hex() == (
        "a60772897702dd3dfffd9f1ba4f89abb039f3efe43f790d97e39cafd5e935150"
    )


def test_compute_hash_depends_on_the_previous_hash() -> None:
    row = unhashed(1)

    assert compute_hash(ZERO_HASH, row) != compute_hash(b"\x01" * 32, row)


def test_valid_chain_verifies() -> None:
    rows = chain(5)

    report = verify_rows(rows, head_of(rows))

    assert report.ok
    assert (report.rows, report.last_seq, report.head_seq) == (5, 5, 5)


def test_empty_chain_with_initial_head_verifies() -> None:
    report = verify_rows([], ChainHead(0, ZERO_HASH))

    assert report.ok
    assert report.rows == 0


def test_verify_accepts_a_generator() -> None:
    rows = chain(3)

    assert verify_rows((row for row in rows), head_of(rows)).ok


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("occurred_at", START + timedelta(microseconds=1)),
        ("action", "patient.write"),
        ("outcome", "denied"),
        ("actor_id", None),
        ("actor_role", "admin"),
        ("clinic_id", UUID(int=7)),
        ("object_type", "note"),
        ("object_id", "patient-99"),
        ("ip", "198.51.100.1"),
        ("detail", {"via": "api", "attempt": 3}),
    ],
)
def test_edited_field_is_reported_as_hash_mismatch_at_its_seq(name: str, value: Any) -> None:
    rows = chain(5)
    rows[2] = dataclasses.replace(rows[2], **{name: value})

    report = verify_rows(rows, head_of(rows))

    assert report.problems == (
        Problem(3, ProblemKind.HASH_MISMATCH, "row content does not match its hash (edited?)"),
    )


@settings(max_examples=200, database=None, deadline=None)
@given(
    length=st.integers(min_value=1, max_value=6),
    data=st.data(),
)
def test_any_single_edited_field_of_any_row_is_detected(length: int, data: st.DataObject) -> None:
    rows = chain(length)
    index = data.draw(st.integers(min_value=0, max_value=length - 1), label="index")
    text = st.text(max_size=20)
    edits: dict[str, st.SearchStrategy[Any]] = {
        "occurred_at": st.datetimes(timezones=st.just(UTC)),
        "action": text,
        "outcome": text,
        "actor_id": st.none() | st.uuids(),
        "actor_role": st.none() | text,
        "clinic_id": st.none() | st.uuids(),
        "object_type": st.none() | text,
        "object_id": st.none() | text,
        "ip": st.none() | text,
        "detail": st.dictionaries(
            text, st.none() | st.booleans() | st.integers() | text, max_size=4
        ),
    }
    name = data.draw(st.sampled_from(sorted(edits)), label="field")
    value = data.draw(edits[name], label="value")
    original = rows[index]
    edited = dataclasses.replace(original, **{name: value})
    if canonical_form(original.prev_hash, edited) == canonical_form(original.prev_hash, original):
        return  # The drawn value equals the original one: nothing was edited.
    rows[index] = edited

    report = verify_rows(rows, head_of(chain(length)))

    assert (original.seq, ProblemKind.HASH_MISMATCH) in kinds_at(report)


def test_edited_and_rehashed_row_breaks_the_next_link() -> None:
    rows = chain(5)
    edited = dataclasses.replace(rows[1], action="auth.logout")
    rows[1] = dataclasses.replace(edited, hash=compute_hash(edited.prev_hash, edited))

    report = verify_rows(rows, head_of(chain(5)))

    assert kinds_at(report) == {(3, ProblemKind.BROKEN_LINK)}


def test_edited_and_rehashed_last_row_mismatches_the_head() -> None:
    original = chain(3)
    rows = list(original)
    edited = dataclasses.replace(rows[2], action="auth.logout")
    rows[2] = dataclasses.replace(edited, hash=compute_hash(edited.prev_hash, edited))

    report = verify_rows(rows, head_of(original))

    assert kinds_at(report) == {(3, ProblemKind.HEAD_MISMATCH)}


def test_deleted_middle_row_is_reported_as_gap_naming_the_missing_seq() -> None:
    rows = chain(5)
    head = head_of(rows)
    del rows[2]

    report = verify_rows(rows, head)

    assert kinds_at(report) == {(3, ProblemKind.GAP)}
    assert "row 3 missing" in report.problems[0].message


def test_several_deleted_rows_are_one_gap() -> None:
    rows = chain(6)
    head = head_of(rows)
    del rows[1:4]

    report = verify_rows(rows, head)

    assert kinds_at(report) == {(2, ProblemKind.GAP)}
    assert "rows 2-4 missing" in report.problems[0].message


def test_deleted_last_row_is_reported_as_head_mismatch() -> None:
    rows = chain(5)
    head = head_of(rows)
    del rows[-1]

    report = verify_rows(rows, head)

    assert kinds_at(report) == {(5, ProblemKind.HEAD_MISMATCH)}


def test_all_rows_deleted_is_reported_as_head_mismatch() -> None:
    head = head_of(chain(2))

    report = verify_rows([], head)

    assert kinds_at(report) == {(1, ProblemKind.HEAD_MISMATCH)}


def test_missing_head_is_reported() -> None:
    rows = chain(2)

    report = verify_rows(rows, None)

    assert kinds_at(report) == {(2, ProblemKind.HEAD_MISMATCH)}


def test_edited_head_hash_is_reported() -> None:
    rows = chain(2)

    report = verify_rows(rows, ChainHead(2, b"\x07" * 32))

    assert kinds_at(report) == {(2, ProblemKind.HEAD_MISMATCH)}


def test_rows_past_the_head_are_reported() -> None:
    rows = chain(4)

    report = verify_rows(rows, head_of(rows[:2]))

    assert kinds_at(report) == {(3, ProblemKind.HEAD_MISMATCH)}


def test_deleted_first_row_is_reported_as_first_row() -> None:
    rows = chain(3)
    head = head_of(rows)

    report = verify_rows(rows[1:], head)

    assert kinds_at(report) == {(2, ProblemKind.FIRST_ROW)}


def test_first_row_not_chained_from_zero_is_reported() -> None:
    row = dataclasses.replace(unhashed(1), prev_hash=b"\x01" * 32)
    row = dataclasses.replace(row, hash=compute_hash(row.prev_hash, row))

    report = verify_rows([row], ChainHead(1, row.hash))

    assert kinds_at(report) == {(1, ProblemKind.FIRST_ROW)}


def swap_contents(rows: list[AuditRecord], i: int, j: int, *, with_hashes: bool) -> None:
    """Exchange every column but seq (and the hashes unless ``with_hashes``)."""
    kept = {"seq"} if with_hashes else {"seq", "prev_hash", "hash"}

    def moved(source: AuditRecord, target: AuditRecord) -> AuditRecord:
        changes = {
            f.name: getattr(source, f.name)
            for f in dataclasses.fields(AuditRecord)
            if f.name not in kept
        }
        return dataclasses.replace(target, **changes)

    rows[i], rows[j] = moved(rows[j], rows[i]), moved(rows[i], rows[j])


def test_rows_swapped_with_their_hashes_are_detected_at_both_seqs() -> None:
    rows = chain(5)
    head = head_of(rows)
    swap_contents(rows, 1, 3, with_hashes=True)

    report = verify_rows(rows, head)

    assert {(2, ProblemKind.HASH_MISMATCH), (4, ProblemKind.HASH_MISMATCH)} <= kinds_at(report)


def test_adjacent_rows_swapped_with_their_hashes_are_detected_at_both_seqs() -> None:
    rows = chain(4)
    head = head_of(rows)
    swap_contents(rows, 1, 2, with_hashes=True)

    report = verify_rows(rows, head)

    assert {(2, ProblemKind.HASH_MISMATCH), (3, ProblemKind.HASH_MISMATCH)} <= kinds_at(report)


def test_rows_swapped_without_their_hashes_are_detected_at_both_seqs() -> None:
    rows = chain(5)
    head = head_of(rows)
    swap_contents(rows, 1, 3, with_hashes=False)

    report = verify_rows(rows, head)

    assert kinds_at(report) == {(2, ProblemKind.HASH_MISMATCH), (4, ProblemKind.HASH_MISMATCH)}


def test_out_of_order_rows_are_reported_as_broken_link() -> None:
    rows = chain(3)

    report = verify_rows([rows[0], rows[2], rows[1]], head_of(rows))

    assert (2, ProblemKind.BROKEN_LINK) in kinds_at(report)


def test_verifier_caps_stored_problems_but_counts_all() -> None:
    rows = [dataclasses.replace(row, action="x.y") for row in chain(10)]
    verifier = ChainVerifier(max_problems=3)
    for row in rows:
        verifier.feed(row)

    report = verifier.finish(head_of(rows))

    assert len(report.problems) == 3
    assert report.problem_count == 10


def test_format_report_for_a_valid_chain() -> None:
    rows = chain(4)

    assert format_report(verify_rows(rows, head_of(rows))) == "audit chain OK: 4 rows, head seq 4"


def test_format_report_lists_each_problem_then_the_summary() -> None:
    rows = chain(4)
    head = head_of(rows)
    rows[1] = dataclasses.replace(rows[1], action="auth.logout")
    del rows[3]

    assert format_report(verify_rows(rows, head)).splitlines() == [
        "seq 2: hash_mismatch: row content does not match its hash (edited?)",
        "seq 4: head_mismatch: row 4 missing: the chain ends at seq 3 but the head is at "
        "seq 4 (newest rows deleted?)",
        "audit chain BROKEN: 2 problems in 3 rows",
    ]


def test_format_report_says_how_many_problems_were_left_out() -> None:
    rows = [dataclasses.replace(row, action="x.y") for row in chain(5)]
    verifier = ChainVerifier(max_problems=2)
    for row in rows:
        verifier.feed(row)

    lines = format_report(verifier.finish(head_of(rows))).splitlines()

    assert lines[-2:] == ["... and 3 more problems", "audit chain BROKEN: 5 problems in 5 rows"]


# --- signed checkpoints (pure) ---------------------------------------------------------

SEED = bytes(range(32))


def test_checkpoint_message_is_the_domain_prefix_then_seq_then_hash() -> None:
    message = checkpoint_message(258, b"\xab" * 32)

    assert message == DOMAIN + bytes([0, 0, 0, 0, 0, 0, 1, 2]) + b"\xab" * 32
    assert DOMAIN.startswith(b"teleconsult/audit-checkpoint/")


@pytest.mark.parametrize(("seq", "digest"), [(0, b"\x00" * 32), (1, b"\x00" * 31), (-1, ZERO_HASH)])
def test_checkpoint_message_refuses_a_bad_seq_or_hash(seq: int, digest: bytes) -> None:
    with pytest.raises(ValueError, match="positive seq and a 32-byte hash"):
        checkpoint_message(seq, digest)


def test_key_id_is_the_first_16_hex_characters_of_the_public_keys_sha256() -> None:
    signer = CheckpointSigner(SEED)

    assert signer.key_id == hashlib.sha256(signer.public_key).hexdigest()[:16]
    assert key_id_of(signer.public_key) == signer.key_id


@settings(max_examples=50, database=None, deadline=None)
@given(
    seq=st.integers(min_value=1, max_value=(1 << 63) - 1),
    digest=st.binary(min_size=32, max_size=32),
)
def test_a_signed_checkpoint_verifies_only_as_signed(seq: int, digest: bytes) -> None:
    signer = CheckpointSigner(SEED)
    keys = TrustedKeys([signer.public_key])
    checkpoint = signer.sign(seq, digest)

    assert keys.refusal(checkpoint) is None
    other_hash = bytes([digest[0] ^ 1]) + digest[1:]
    assert keys.refusal(dataclasses.replace(checkpoint, hash=other_hash)) is not None
    other_seq = seq + 1 if seq < (1 << 63) - 1 else seq - 1
    assert keys.refusal(dataclasses.replace(checkpoint, seq=other_seq)) is not None


def test_a_checkpoint_signed_by_another_key_is_refused() -> None:
    trusted = CheckpointSigner(SEED)
    forger = CheckpointSigner(bytes(range(1, 33)))
    forged = forger.sign(1, ZERO_HASH)

    refusal = TrustedKeys([trusted.public_key]).refusal(forged)
    relabelled = TrustedKeys([trusted.public_key]).refusal(
        dataclasses.replace(forged, key_id=trusted.key_id)
    )

    assert refusal is not None and "not trusted" in refusal
    assert relabelled is not None and "does not verify" in relabelled


def test_a_checkpoint_line_round_trips() -> None:
    checkpoint = CheckpointSigner(SEED).sign(7, b"\x11" * 32, at=START)

    line = checkpoint.to_line()

    assert line.endswith("\n") and line.count("\n") == 1
    assert Checkpoint.from_line(line) == checkpoint
    assert '"signed_at":"2024-05-06T07:08:09.123456Z"' in line


@pytest.mark.parametrize(
    "line",
    [
        "",
        "not json",
        "[]",
        '{"seq": 1}',
        '{"seq": true, "hash": "00", "key_id": "k", "signature": "00", "signed_at": "x"}',
    ],
)
def test_a_malformed_checkpoint_line_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match="not a checkpoint line"):
        Checkpoint.from_line(line)


def test_a_public_key_is_64_hex_characters() -> None:
    signer = CheckpointSigner(SEED)

    assert parse_public_key(signer.public_key.hex() + "\n") == signer.public_key
    for bad in ("", "zz" * 32, "00" * 31):
        with pytest.raises(ValueError, match="64 hex characters"):
            parse_public_key(bad)


def test_checkpoint_checker_reports_a_rewritten_chain_and_a_missing_row() -> None:
    signer = CheckpointSigner(SEED)
    checker = CheckpointChecker(TrustedKeys([signer.public_key]))

    checker.stored(signer.sign(3, b"\x03" * 32), b"\x03" * 32)
    checker.stored(signer.sign(6, b"\x06" * 32), b"\x07" * 32)
    checker.stored(signer.sign(9, b"\x09" * 32), None)

    assert [(p.seq, p.kind) for p in checker.problems] == [
        (6, ProblemKind.CHECKPOINT_MISMATCH),
        (9, ProblemKind.CHECKPOINT_MISMATCH),
    ]
    assert checker.in_database == 3


def test_checkpoint_checker_reports_a_filed_checkpoint_missing_from_the_database() -> None:
    signer = CheckpointSigner(SEED)
    checker = CheckpointChecker(TrustedKeys([signer.public_key]))
    filed = signer.sign(4, b"\x04" * 32)

    checker.filed(filed, "f line 1", stored=filed, chain_hash=b"\x04" * 32, head_seq=9)
    checker.filed(
        signer.sign(5, b"\x05" * 32), "f line 2", stored=None, chain_hash=b"\x05" * 32, head_seq=9
    )

    assert [(p.seq, p.kind) for p in checker.problems] == [(5, ProblemKind.CHECKPOINT_MISSING)]
    assert checker.problems[0].message.startswith("f line 2: not in the database")
    assert checker.in_files == 2


def test_format_report_with_checkpoints_and_waiting_events() -> None:
    rows = chain(2)
    report = dataclasses.replace(
        verify_rows(rows, head_of(rows)),
        checkpoints=CheckpointSummary(in_database=2, in_files=2, files=1, trusted_keys=1),
        pending=1,
    )

    assert format_report(report).splitlines() == [
        "checkpoints: 2 in the database, 2 in 1 file (signatures checked against 1 trusted key)",
        "intake: 1 event waiting to be chained (not a problem)",
        "audit chain OK: 2 rows, head seq 2",
    ]
