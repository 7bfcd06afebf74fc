"""SQL readers of the encrypted clinical records and of invoices for the FHIR views.

The SELECTs return ciphertexts; the views (``record_views.py``) decrypt them in
Python with the clinic's keys, after the caller's basis was checked. A row may give
several resources (a profile's conditions, a prescription's items): paging is by row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from teleconsult.fhir import record_views as rv
from teleconsult.fhir.store import Resource, Table
from teleconsult.records.fieldcrypt import ClinicKeys

_RX_STATUS = (
    "CASE WHEN r.cancelled_at IS NOT NULL THEN 'cancelled' "
    "WHEN r.expires_at <= now() THEN 'completed' ELSE 'active' END"
)
# Our invoice statuses as FHIR's invoice-status (payments/fhir.py).
_INVOICE_STATUS = (
    "CASE i.status WHEN 'open' THEN 'issued' WHEN 'paid' THEN 'balanced' "
    "WHEN 'partially_refunded' THEN 'balanced' ELSE 'cancelled' END"
)


def _unkeyed(row: Mapping[str, Any]) -> Resource:
    raise AssertionError("a keyed table is rendered with the clinic's keys")


def _profile_table(
    resource_type: str, column: str, view: Callable[[ClinicKeys, Mapping[str, Any]], list[Resource]]
) -> Table:
    """A type read from one encrypted list of the patient's profile (one row a patient)."""
    return Table(
        resource_type,
        f"SELECT p.patient_id AS id, p.clinic_id, p.patient_id, p.{column}, "
        "p.updated_at FROM patient_profiles p",
        id_column="p.patient_id",
        clinic_column="p.clinic_id",
        updated_column="p.updated_at",
        to_resource=_unkeyed,
        patient_column="p.patient_id",
        base_where=(f"p.{column} IS NOT NULL",),
        keyed_view=view,
        composite_ids=True,
    )


def record_tables(public_url: str) -> dict[str, Table]:
    def documents(keys: ClinicKeys, row: Mapping[str, Any]) -> list[Resource]:
        return rv.document_reference_resources(keys, row, public_url=public_url)

    return {
        "Condition": _profile_table("Condition", "conditions_ct", rv.condition_resources),
        "AllergyIntolerance": _profile_table(
            "AllergyIntolerance", "allergies_ct", rv.allergy_resources
        ),
        "MedicationRequest": Table(
            "MedicationRequest",
            "SELECT r.id, r.clinic_id, r.patient_id, r.doctor_id, r.number, r.document_ct, "
            "r.signature, r.device_id, r.signer_public_key, r.issued_at, r.expires_at, "
            "r.cancelled_at, r.created_at FROM prescriptions r",
            id_column="r.id",
            clinic_column="r.clinic_id",
            updated_column="COALESCE(r.cancelled_at, r.created_at)",
            to_resource=_unkeyed,
            patient_column="r.patient_id",
            date_column="r.issued_at",
            status_column=_RX_STATUS,
            keyed_view=rv.medication_request_resources,
            composite_ids=True,
        ),
        "MedicationStatement": Table(
            "MedicationStatement",
            "SELECT m.id, m.clinic_id, m.patient_id, m.details_ct, m.status, m.recorded_by, "
            # A stop's columns (issue 14, part RG; migration 0022).
            "m.ended_on, m.stop_reason_ct, m.stopped_by, m.stopped_at, "
            "m.created_at, u.role::text AS recorder_role FROM medication_statements m "
            "JOIN users u ON u.id = m.recorded_by",
            id_column="m.id",
            clinic_column="m.clinic_id",
            updated_column="m.created_at",
            to_resource=_unkeyed,
            patient_column="m.patient_id",
            date_column="m.created_at",
            status_column="m.status",
            keyed_view=rv.medication_statement_resources,
        ),
        "DocumentReference": Table(
            "DocumentReference",
            "SELECT d.id, d.clinic_id, d.patient_id, d.title_ct, d.category, d.created_by, "
            "d.created_at, u.role::text AS author_role, "
            "(SELECT json_agg(json_build_object('version', v.version, 'content_type', "
            "v.content_type, 'size', v.size, 'created_at', v.created_at)) "
            "FROM document_versions v WHERE v.document_id = d.id) AS versions "
            "FROM documents d JOIN users u ON u.id = d.created_by",
            id_column="d.id",
            clinic_column="d.clinic_id",
            updated_column=(
                "GREATEST(d.created_at, (SELECT max(v.created_at) FROM document_versions v "
                "WHERE v.document_id = d.id))"
            ),
            to_resource=_unkeyed,
            patient_column="d.patient_id",
            date_column="d.created_at",
            code_column="d.category",
            base_where=("EXISTS (SELECT 1 FROM document_versions v WHERE v.document_id = d.id)",),
            keyed_view=documents,
        ),
        "Invoice": Table(
            "Invoice",
            "SELECT i.id, i.clinic_id, i.appointment_id, i.patient_id, i.number, i.currency, "
            "i.subtotal, i.tax, i.total, i.paid, i.refunded, i.waived, i.status, "
            "i.void_reason, i.created_at, i.updated_at, "
            "(SELECT json_agg(json_build_object('position', l.position, 'kind', l.kind, "
            "'description', l.description, 'amount', l.amount) ORDER BY l.position) "
            "FROM invoice_lines l WHERE l.invoice_id = i.id) AS lines, "
            "(SELECT json_agg(row_to_json(p) ORDER BY p.created_at) FROM "
            "(SELECT id, clinic_id, invoice_id, patient_id, provider, amount, currency, "
            "status, provider_reference, redirect_url, failure_reason, "
            "provider_transaction_id, refunded, created_at, finalized_at, expires_at, polls "
            "FROM payments WHERE invoice_id = i.id) p) AS payments FROM invoices i",
            id_column="i.id",
            clinic_column="i.clinic_id",
            updated_column="i.updated_at",
            to_resource=rv.invoice_row_resource,
            patient_column="i.patient_id",
            date_column="i.created_at",
            status_column=_INVOICE_STATUS,
        ),
    }
