"""Append-only, tamper-evident audit trail.

Every login, failed login, role change and patient-data access is recorded
with :class:`AuditTrail`; ``teleconsult audit verify`` runs
:func:`verify_database` and prints :func:`format_report`.
"""

from teleconsult.audit.chain import (
    ZERO_HASH,
    AuditRecord,
    ChainHead,
    ChainVerifier,
    DetailValue,
    Problem,
    ProblemKind,
    VerifyReport,
    canonical_form,
    compute_hash,
    format_timestamp,
    verify_rows,
)
from teleconsult.audit.store import (
    AuditError,
    AuditEvent,
    AuditTrail,
    InvalidAuditEvent,
    Outcome,
    iter_records,
    read_head,
    validate_event,
)
from teleconsult.audit.verify import format_report, verify_connection, verify_database

__all__ = [
    "ZERO_HASH",
    "AuditError",
    "AuditEvent",
    "AuditRecord",
    "AuditTrail",
    "ChainHead",
    "ChainVerifier",
    "DetailValue",
    "InvalidAuditEvent",
    "Outcome",
    "Problem",
    "ProblemKind",
    "VerifyReport",
    "canonical_form",
    "compute_hash",
    "format_report",
    "format_timestamp",
    "iter_records",
    "read_head",
    "validate_event",
    "verify_connection",
    "verify_database",
    "verify_rows",
]
