"""The double-entry ledger: immutable postings that balance per transaction (0019)."""

from teleconsult.payments.ledger.accounts import (
    CASH,
    FEES_WAIVED,
    RECEIVABLES,
    REFUNDS,
    REFUNDS_PAYABLE,
    REVENUE,
    TAX_PAYABLE,
    clearing,
)
from teleconsult.payments.ledger.store import Posting, post, trial_balance

__all__ = [
    "CASH",
    "FEES_WAIVED",
    "RECEIVABLES",
    "REFUNDS",
    "REFUNDS_PAYABLE",
    "REVENUE",
    "TAX_PAYABLE",
    "Posting",
    "clearing",
    "post",
    "trial_balance",
]
