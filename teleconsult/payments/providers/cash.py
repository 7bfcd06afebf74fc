"""Cash at the front desk: no provider to ask, the receptionist is the confirmation.

It still goes through the service's one path (a payment row, a ledger posting
``cash`` against ``receivables``, the audit event), but succeeds at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID

from teleconsult.payments.providers.base import (
    BadCallback,
    Callback,
    Initiated,
    Initiation,
    ProviderStatus,
)


class CashProvider:
    name = "cash"

    def reference_for(self, payment_id: UUID) -> str:
        return f"cash_{payment_id.hex}"

    def check(self, request: Initiation) -> None:
        return None

    async def initiate(self, request: Initiation) -> Initiated:
        return Initiated(self.reference_for(request.payment_id))

    async def query(self, reference: str) -> ProviderStatus:
        return ProviderStatus("succeeded")

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> Callback:
        raise BadCallback("cash has no callbacks")
