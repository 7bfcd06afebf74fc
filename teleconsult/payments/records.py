"""Plain values of the payments domain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

InvoiceStatus = Literal["open", "paid", "partially_refunded", "refunded", "void"]
PaymentStatus = Literal["pending", "succeeded", "failed"]
Gate = Literal["pay_before", "pay_after", "none"]
PROVIDERS = ("momo", "mpesa", "card", "cash")


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
