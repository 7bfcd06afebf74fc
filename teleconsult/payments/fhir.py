"""FHIR R4 ``Invoice`` view of an invoice (a dict), for the FHIR package to register.

Amounts are FHIR ``Money`` (``value`` in major units as a JSON number with the
currency's decimals, ``currency``); ``status`` maps ours onto FHIR's invoice-status:
open → issued, paid and partially refunded → balanced, refunded and void →
cancelled (a refund or void is recorded in the ledger; FHIR has no better code).
"""

from __future__ import annotations

from typing import Any

from teleconsult.payments.money import Money
from teleconsult.payments.records import Invoice, Payment

_STATUS = {
    "open": "issued",
    "paid": "balanced",
    "partially_refunded": "balanced",
    "refunded": "cancelled",
    "void": "cancelled",
}


def _money(minor: int, currency: str) -> dict[str, Any]:
    return {"value": float(Money(minor, currency).decimal()), "currency": currency}


def invoice_resource(invoice: Invoice, payments: list[Payment] | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Invoice",
        "id": str(invoice.id),
        "identifier": [{"system": "urn:teleconsult:invoice-number", "value": invoice.number}],
        "status": _STATUS[invoice.status],
        "subject": {"reference": f"Patient/{invoice.patient_id}"},
        "date": invoice.created_at.isoformat(),
        "lineItem": [
            {
                "sequence": line.position,
                "chargeItemCodeableConcept": {"text": line.description},
                "priceComponent": [
                    {
                        "type": "base" if line.kind == "fee" else "tax",
                        "amount": _money(line.amount, invoice.currency),
                    }
                ],
            }
            for line in invoice.lines
        ],
        "totalNet": _money(invoice.subtotal, invoice.currency),
        "totalGross": _money(invoice.total, invoice.currency),
    }
    if invoice.status == "void" and invoice.void_reason:
        resource["cancelledReason"] = invoice.void_reason
    notes = []
    for p in payments or []:
        notes.append(
            {
                "text": f"payment {p.id} via {p.provider}: {p.status}"
                + (f", refunded {Money(p.refunded, p.currency).format()}" if p.refunded else "")
            }
        )
    if notes:
        resource["note"] = notes
    if invoice.appointment_id is not None:
        resource["extension"] = [
            {
                "url": "urn:teleconsult:appointment",
                "valueReference": {"reference": f"Appointment/{invoice.appointment_id}"},
            }
        ]
    return resource
