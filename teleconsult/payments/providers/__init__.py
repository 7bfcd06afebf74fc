"""Payment providers behind :class:`~teleconsult.payments.providers.base.PaymentProvider`."""

from __future__ import annotations

import aiohttp

from teleconsult.core.payment_settings import PaymentSettings
from teleconsult.payments.providers.base import PaymentProvider
from teleconsult.payments.providers.card import CardProvider
from teleconsult.payments.providers.cash import CashProvider
from teleconsult.payments.providers.momo import MomoProvider
from teleconsult.payments.providers.mpesa import MpesaProvider


def build_providers(
    settings: PaymentSettings, session: aiohttp.ClientSession
) -> dict[str, PaymentProvider]:
    """Cash, and every provider whose base URL is configured."""
    found: dict[str, PaymentProvider] = {"cash": CashProvider()}
    if settings.momo is not None:
        found["momo"] = MomoProvider(settings.momo, session)
    if settings.mpesa is not None:
        found["mpesa"] = MpesaProvider(settings.mpesa, session)
    if settings.card is not None:
        found["card"] = CardProvider(settings.card, session)
    return found
