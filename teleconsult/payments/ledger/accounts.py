"""The ledger's accounts, per clinic. A positive amount debits, a negative one credits.

* ``receivables`` (asset): what patients owe, debited by an invoice.
* ``clearing:<provider>`` (asset): what a provider collected for the clinic and
  has not paid out yet; debited by a confirmed payment.
* ``cash`` (asset): the front desk's till.
* ``revenue`` (income): credited by an invoice's fee.
* ``tax_payable`` (liability): credited by an invoice's tax.
* ``refunds`` (contra-revenue): debited by a refund.
* ``refunds_payable`` (liability): what is owed back to patients; credited by a
  refund, debited when its payout (provider or till) succeeds.
* ``fees_waived`` (contra-revenue): debited when the front desk waives a fee.
"""

from __future__ import annotations

import re

RECEIVABLES = "receivables"
CASH = "cash"
REVENUE = "revenue"
REFUNDS = "refunds"
REFUNDS_PAYABLE = "refunds_payable"
FEES_WAIVED = "fees_waived"
TAX_PAYABLE = "tax_payable"
_PROVIDER = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


def clearing(provider: str) -> str:
    """The clearing account of ``provider``; cash goes straight to ``cash``."""
    if provider == "cash":
        return CASH
    if not _PROVIDER.match(provider):
        raise ValueError(f"bad provider name {provider!r}")
    return f"clearing:{provider}"
