"""Plain values of the payments domain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol, TypeVar
from uuid import UUID

from teleconsult.core.identity import Principal
from teleconsult.core.policy import Scope, ensure_in_scope

InvoiceStatus = Literal["open", "paid", "partially_refunded", "refunded", "void"]
PaymentStatus = Literal["pending", "succeeded", "failed"]
Gate = Literal["pay_before", "pay_after", "none"]
PROVIDERS = ("momo", "mpesa", "card", "cash")


class _Owned(Protocol):
    @property
    def clinic_id(self) -> UUID: ...
    @property
    def patient_id(self) -> UUID: ...


_T = TypeVar("_T", bound=_Owned)


def scoped(principal: Principal, found: _T | None, kind: str) -> _T:
    """``found`` if ``principal`` may see it (its clinic and patient), else NotFound or
    Forbidden as the policy says (``ensure_in_scope``); None is not found."""
    ensure_in_scope(principal, Scope(found.clinic_id, found.patient_id) if found else None, kind)
    assert found is not None
    return found


@dataclass(frozen=True)
class InvoiceLine:
    position: int
    kind: str
    description: str
    amount: int


@dataclass(frozen=True)
class Invoice:
    id: UUID
    clinic_id: UUID
    appointment_id: UUID | None
    patient_id: UUID
    number: str
    currency: str
    subtotal: int
    tax: int
    total: int
    paid: int
    refunded: int
    waived: int
    status: InvoiceStatus
    void_reason: str | None
    created_at: datetime
    updated_at: datetime
    lines: tuple[InvoiceLine, ...] = ()
    appointment_starts_at: datetime | None = None  # None when it has no appointment

    @property
    def outstanding(self) -> int:
        return 0 if self.status == "void" else self.total - self.paid - self.waived


@dataclass(frozen=True)
class Payment:
    id: UUID
    clinic_id: UUID
    invoice_id: UUID
    patient_id: UUID
    provider: str
    amount: int
    currency: str
    status: PaymentStatus
    provider_reference: str | None
    redirect_url: str | None
    failure_reason: str | None
    provider_transaction_id: str | None
    refunded: int
    created_at: datetime
    finalized_at: datetime | None
    expires_at: datetime
    polls: int


@dataclass(frozen=True)
class Refund:
    """One refund of an invoice's payment, as the ledger has it."""

    id: UUID  # its ledger transaction
    payment_id: UUID
    amount: int
    currency: str
    reason: str
    by: UUID | None
    by_name: str | None
    created_at: datetime
    # Its latest payout (0023): how the money goes back, and where that stands.
    payout_id: UUID | None = None
    payout_method: str | None = None
    payout_status: PaymentStatus | None = None
    payout_failure_reason: str | None = None
    payout_reference: str | None = None
    invoice_id: UUID | None = None


@dataclass(frozen=True)
class Payout:
    """One attempt to pay a refund back out: through the provider or from the till."""

    id: UUID
    clinic_id: UUID
    refund_id: UUID
    payment_id: UUID
    invoice_id: UUID
    patient_id: UUID
    method: str
    amount: int
    currency: str
    status: PaymentStatus
    provider_reference: str | None
    originator_reference: str | None
    provider_transaction_id: str | None
    failure_reason: str | None
    created_at: datetime
    finalized_at: datetime | None
    expires_at: datetime
    polls: int


@dataclass(frozen=True)
class ClinicPaymentSettings:
    clinic_id: UUID
    gate: Gate
    tax_label: str | None
    tax_rate_bp: int


@dataclass(frozen=True)
class PaymentDue:
    """What a gated join answers with: what to pay before joining."""

    invoice_id: UUID
    amount: int
    currency: str
