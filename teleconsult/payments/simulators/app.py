"""All three simulators in one application, with a control API (for tests and demos).

``/momo/...``, ``/mpesa/...``, ``/card/...`` are the providers' APIs;
``GET /_control/truth`` lists every payment each simulator knows with its state;
``POST /_control/{provider}/behaviour`` changes how one misbehaves (Behaviour's
fields as JSON).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, replace

from aiohttp import web

from teleconsult.core.payment_settings import (
    CardSettings,
    MomoSettings,
    MpesaSettings,
    PaymentSettings,
)
from teleconsult.payments.simulators.card import CardSimulator
from teleconsult.payments.simulators.common import Behaviour, Simulator
from teleconsult.payments.simulators.momo import MomoSimulator
from teleconsult.payments.simulators.mpesa import MpesaSimulator


@dataclass
class Simulators:
    momo: MomoSimulator
    mpesa: MpesaSimulator
    card: CardSimulator

    def all(self) -> dict[str, Simulator]:
        return {"momo": self.momo, "mpesa": self.mpesa, "card": self.card}

    async def close(self) -> None:
        for sim in self.all().values():
            await sim.close()

    def env(self, base_url: str) -> dict[str, str]:
        """Server settings that point its providers at these simulators at ``base_url``."""
        return {
            "PAYMENTS_MOMO_URL": f"{base_url}/momo",
            "PAYMENTS_MOMO_USER_ID": self.momo.user_id,
            "PAYMENTS_MOMO_API_KEY": self.momo.api_key,
            "PAYMENTS_MOMO_SUBSCRIPTION_KEY": self.momo.subscription_key,
            "PAYMENTS_MOMO_TARGET_ENVIRONMENT": self.momo.target_environment,
            "PAYMENTS_MOMO_DISBURSEMENT_USER_ID": self.momo.disbursement_user_id,
            "PAYMENTS_MOMO_DISBURSEMENT_API_KEY": self.momo.disbursement_api_key,
            "PAYMENTS_MOMO_DISBURSEMENT_SUBSCRIPTION_KEY": self.momo.disbursement_subscription_key,
            "PAYMENTS_MPESA_URL": f"{base_url}/mpesa",
            "PAYMENTS_MPESA_CONSUMER_KEY": self.mpesa.consumer_key,
            "PAYMENTS_MPESA_CONSUMER_SECRET": self.mpesa.consumer_secret,
            "PAYMENTS_MPESA_SHORTCODE": self.mpesa.shortcode,
            "PAYMENTS_MPESA_PASSKEY": self.mpesa.passkey,
            "PAYMENTS_MPESA_INITIATOR": self.mpesa.initiator,
            "PAYMENTS_MPESA_SECURITY_CREDENTIAL": self.mpesa.security_credential,
            "PAYMENTS_CARD_URL": f"{base_url}/card",
            "PAYMENTS_CARD_SECRET_KEY": self.card.secret_key,
        }


def build_simulators(
    *, webhook_base: str, behaviour: Behaviour | None = None
) -> tuple[web.Application, Simulators]:
    """The simulators with fresh random credentials; card webhooks go to
    ``<webhook_base>/api/v1/webhooks/payments/card`` (MoMo and M-Pesa call the URL
    each request names)."""

    def copy() -> Behaviour:
        return Behaviour(**vars(behaviour)) if behaviour else Behaviour()

    sims = Simulators(
        momo=MomoSimulator(
            user_id=str(uuid.uuid4()),
            api_key=secrets.token_hex(16),
            subscription_key=secrets.token_hex(16),
            behaviour=copy(),
        ),
        mpesa=MpesaSimulator(
            consumer_key=secrets.token_urlsafe(24),
            consumer_secret=secrets.token_urlsafe(12),
            shortcode="174379",
            passkey=secrets.token_hex(32),
            behaviour=copy(),
        ),
        card=CardSimulator(
            secret_key=f"sk_test_{secrets.token_hex(20)}",
            webhook_url=f"{webhook_base.rstrip('/')}/api/v1/webhooks/payments/card",
            behaviour=copy(),
        ),
    )
    app = web.Application()
    for name, sim in sims.all().items():
        app.add_subapp(f"/{name}", sim.app())

    async def truth(request: web.Request) -> web.Response:
        return web.json_response(
            {
                name: {
                    ref: {"state": t.state(), "amount": t.amount, "currency": t.currency}
                    for ref, t in sim.truth.items()
                }
                for name, sim in sims.all().items()
            }
            | {
                f"{name}_refunds": {
                    ref: {"state": t.state(), "amount": t.amount, "of": t.payer}
                    for ref, t in sim.refunds.items()
                }
                for name, sim in sims.all().items()
            }
        )

    async def behave(request: web.Request) -> web.Response:
        sim = sims.all().get(request.match_info["provider"])
        if sim is None:
            raise web.HTTPNotFound()
        try:
            sim.behaviour.update(await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(vars(sim.behaviour))

    app.router.add_get("/_control/truth", truth)
    app.router.add_post("/_control/{provider}/behaviour", behave)

    async def close(_app: web.Application) -> None:
        await sims.close()

    app.on_cleanup.append(close)
    return app, sims


def demo_settings(settings: PaymentSettings, sims: Simulators, base_url: str) -> PaymentSettings:
    """``settings`` with every provider pointed at ``sims`` served under ``base_url``."""
    return replace(
        settings,
        momo=MomoSettings(
            base_url=f"{base_url}/momo",
            user_id=sims.momo.user_id,
            api_key=sims.momo.api_key,
            subscription_key=sims.momo.subscription_key,
            target_environment=sims.momo.target_environment,
            disbursement_user_id=sims.momo.disbursement_user_id,
            disbursement_api_key=sims.momo.disbursement_api_key,
            disbursement_subscription_key=sims.momo.disbursement_subscription_key,
        ),
        mpesa=MpesaSettings(
            base_url=f"{base_url}/mpesa",
            consumer_key=sims.mpesa.consumer_key,
            consumer_secret=sims.mpesa.consumer_secret,
            shortcode=sims.mpesa.shortcode,
            passkey=sims.mpesa.passkey,
            initiator=sims.mpesa.initiator,
            security_credential=sims.mpesa.security_credential,
        ),
        card=CardSettings(base_url=f"{base_url}/card", secret_key=sims.card.secret_key),
    )
