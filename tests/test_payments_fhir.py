"""The FHIR R4 Invoice view of an invoice (payments/fhir.py), checked by fhir.resources.

fhir.resources' models are R4B (4.3.0), not R4: Invoice has the same elements in both,
and the R4 proof is Medplum's validator (tests/test_fhir_validate.py, issue 14).
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

from fhir.resources.R4B.invoice import Invoice as FhirInvoice

from teleconsult.payments.fhir import invoice_resource
from teleconsult.payments.records import Invoice, InvoiceLine, Payment


def _invoice(status: str = "open", currency: str = "KES") -> Invoice:
    now = datetime.now(UTC)
    return Invoice(
        id=uuid4(), clinic_id=uuid4(), appointment_id=uuid4(), patient_id=uuid4(),
        number="INV-2026-000042", currency=currency, subtotal=150_000, tax=24_000,
        total=174_000, paid=0, refunded=0, waived=0, status=status,  # type: ignore[arg-type]
        void_reason="appointment cancelled" if status == "void" else None,
        created_at=now, updated_at=now,
        lines=(InvoiceLine(1, "fee", "Consultation (video)", 150_000),
               InvoiceLine(2, "tax", "VAT 16.00 %", 24_000)),
    )  # fmt: skip


def test_an_open_invoice_is_a_valid_issued_fhir_invoice() -> None:
    invoice = _invoice()
    resource = invoice_resource(invoice)
    parsed = FhirInvoice.model_validate(resource)
    assert parsed.status == "issued"
    assert parsed.totalGross is not None and float(parsed.totalGross.value or 0) == 1740.0
    assert resource["identifier"][0]["value"] == "INV-2026-000042"
    assert resource["subject"]["reference"] == f"Patient/{invoice.patient_id}"
    kinds = [li["priceComponent"][0]["type"] for li in resource["lineItem"]]
    assert kinds == ["base", "tax"]


def test_status_and_payments_are_in_the_view() -> None:
    invoice = _invoice("partially_refunded", "XOF")
    now = datetime.now(UTC)
    payment = Payment(
        id=uuid4(), clinic_id=invoice.clinic_id, invoice_id=invoice.id,
        patient_id=invoice.patient_id, provider="momo", amount=174_000, currency="XOF",
        status="succeeded", provider_reference="r", redirect_url=None, failure_reason=None,
        provider_transaction_id="1", refunded=1000, created_at=now, finalized_at=now,
        expires_at=now, polls=1,
    )  # fmt: skip
    resource = invoice_resource(invoice, [payment])
    FhirInvoice.model_validate(resource)
    assert resource["status"] == "balanced"
    assert resource["totalNet"] == {"value": 150000.0, "currency": "XOF"}
    assert "refunded 1000 XOF" in resource["note"][0]["text"]
    void = invoice_resource(_invoice("void"))
    FhirInvoice.model_validate(void)
    assert (void["status"], void["cancelledReason"]) == ("cancelled", "appointment cancelled")
