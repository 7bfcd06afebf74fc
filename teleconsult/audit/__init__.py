"""Append-only, tamper-evident audit trail.

Every login, failed login, role change and patient-data access is recorded
with :class:`AuditTrail`: one insert into the intake, in the caller's own
transaction (see :mod:`teleconsult.audit.store` for the CTE helpers). One
:class:`AuditSequencer` per cluster chains the intake in batches and signs each
batch's head (:mod:`teleconsult.audit.checkpoints`). ``teleconsult audit
verify`` runs :func:`verify_database` and prints :func:`format_report`.
"""

from teleconsult.audit.chain import (
    ZERO_HASH,
    AuditRecord,
    ChainHead,
    ChainVerifier,
    CheckpointSummary,
    DetailValue,
    Problem,
    ProblemKind,
    VerifyReport,
    canonical_form,
    compute_hash,
    format_timestamp,
    verify_rows,
)
from teleconsult.audit.checkpoints import (
    Checkpoint,
    CheckpointFile,
    CheckpointSigner,
    checkpoint_message,
    key_id_of,
    parse_public_key,
)
from teleconsult.audit.sequencer import SEQUENCER_LOCK_KEY, AuditSequencer, chain_batch
from teleconsult.audit.store import (
    INTAKE_COLUMNS,
    AuditError,
    AuditEvent,
    AuditTrail,
    InvalidAuditEvent,
    Outcome,
    intake_params,
    intake_placeholders,
    iter_records,
    read_head,
    validate_event,
)
from teleconsult.audit.verify import format_report, verify_connection, verify_database

__all__ = [
    "INTAKE_COLUMNS",
    "SEQUENCER_LOCK_KEY",
    "ZERO_HASH",
    "AuditError",
    "AuditEvent",
    "AuditRecord",
    "AuditSequencer",
    "AuditTrail",
    "ChainHead",
    "ChainVerifier",
    "Checkpoint",
    "CheckpointFile",
    "CheckpointSigner",
    "CheckpointSummary",
    "DetailValue",
    "InvalidAuditEvent",
    "Outcome",
    "Problem",
    "ProblemKind",
    "VerifyReport",
    "canonical_form",
    "chain_batch",
    "checkpoint_message",
    "compute_hash",
    "format_report",
    "format_timestamp",
    "intake_params",
    "intake_placeholders",
    "iter_records",
    "key_id_of",
    "parse_public_key",
    "read_head",
    "validate_event",
    "verify_connection",
    "verify_database",
    "verify_rows",
]
