"""Chaos: many payments across every provider, with the providers misbehaving, clients
retrying, and the server SIGKILLed mid-run. Marked slow.

``PAYMENTS_CHAOS_N`` payments (default 300; the issue's figure is 2,000:
``PAYMENTS_CHAOS_N=2000 .venv/bin/pytest tests/test_payments_chaos.py -s``), round
robin over MTN MoMo, M-Pesa and the card gateway. The simulators duplicate, reorder,
drop and delay callbacks (past the reconciler's poll), forge some (bad signature,
wrong amount, unknown reference; unsigned "successes" for failed payments), decline
or time out some payments, and answer their APIs with 500s or too slowly. Clients
retry with the same key through kills and with new keys. The server is a real process,
SIGKILLed three times while payments run.

While payments run, the front desk refunds some paid invoices (all or part) and pays
failed payouts again, through the provider or from the till; the providers fail some
payouts and lose the answer to others (refund payouts, docs/payments.md).

At the end: no double credit, no consultation open without a provider-confirmed
success, every payment final, a trial balance of exactly 0, and the reconciliation of
every payment against the simulators' ground truth matching; every payout final, none
succeeded twice, the money each provider sent back (its ``refunds``, what
``/_control/truth`` lists as ``<provider>_refunds``) exactly our succeeded payouts, and
no payment refunded beyond what was paid.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest

from teleconsult.audit import AuditTrail
from teleconsult.core.identity import Role
from teleconsult.core.payment_settings import PaymentSettings
from teleconsult.payments.service import PaymentService
from teleconsult.payments.simulators.common import Behaviour
from tests.paymentskit import start_sims
from tests.servers import ServerProcess
from tests.world import PASSWORD, Account, clinic_people

pytestmark = pytest.mark.slow

N = int(os.environ.get("PAYMENTS_CHAOS_N", "300"))
CONCURRENCY = 24
KILLS = 3
PROVIDERS = ("momo", "mpesa", "card")
CHAOS = Behaviour(
    decide_after=0.4,
    fail_rate=0.2,
    timeout_rate=0.05,
    callback_delay=0.6,  # past the 0.3 s poll
    drop_rate=0.25,
    duplicate_rate=0.3,
    reorder_rate=0.2,
    forge_rate=0.25,
    api_error_rate=0.05,
    api_slow_rate=0.03,
    api_slow_seconds=3.0,  # past the server's 1.5 s provider timeout
    refund_fail_rate=0.2,
    refund_answer_lost_rate=0.15,
    seed=15,
)
REFUNDS = max(1, N // 6)  # refunds the desk makes while payments run


async def _book_all(dsn: str, doctor: Account, patient: Account, n: int) -> list[UUID]:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        await pool.execute(
            "INSERT INTO doctor_profiles (user_id, clinic_id, consultation_minutes, fee_cents, "
            "currency, services) VALUES ($1, $2, 30, 150000, 'KES', '{video}')",
            doctor.user_id,
            doctor.clinic_id,
        )
        await pool.execute(
            "INSERT INTO clinic_payment_settings (clinic_id, gate) VALUES ($1, 'pay_before')",
            doctor.clinic_id,
        )
        base = datetime.now(UTC) + timedelta(days=30)
        rows = await pool.fetch(
            """
            INSERT INTO appointments (clinic_id, doctor_id, patient_id, service, starts_at,
                                      ends_at, status, created_by)
            SELECT $1, $2, $3, 'video', $4::timestamptz + make_interval(mins => 45 * i),
                   $4::timestamptz + make_interval(mins => 45 * i + 30), 'confirmed', $3
            FROM generate_series(1, $5) AS i RETURNING id
            """,
            doctor.clinic_id,
            doctor.user_id,
            patient.user_id,
            base,
            n,
        )
        return [r["id"] for r in rows]
    finally:
        await pool.close()


class Client:
    """A patient's app: pays each invoice, retrying through the server's deaths."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base = base_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.stats: Counter[str] = Counter()
        self.rng = random.Random(7)

    async def post(
        self, http: aiohttp.ClientSession, path: str, body: dict[str, Any], key: str
    ) -> tuple[int, dict[str, Any]]:
        """Send until the server gives a definitive answer (the same key every time)."""
        for _ in range(400):
            try:
                async with http.post(
                    self.base + path, json=body, headers=self.headers | {"Idempotency-Key": key}
                ) as resp:
                    answer = await resp.json(content_type=None)
                    code = answer.get("code") if isinstance(answer, dict) else None
                    if resp.status in (500, 503) or code == "idempotency_key_in_flight":
                        self.stats[f"retry_{resp.status}"] += 1
                    else:
                        return resp.status, answer
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
                self.stats["retry_connection"] += 1
            await asyncio.sleep(0.25)
        raise AssertionError(f"no definitive answer for {path}")

    async def get(self, http: aiohttp.ClientSession, path: str) -> dict[str, Any]:
        """Read until the server answers (through its deaths)."""
        for _ in range(400):
            try:
                async with http.get(self.base + path, headers=self.headers) as resp:
                    if resp.status == 200:
                        answer: dict[str, Any] = await resp.json()
                        return answer
                    self.stats[f"retry_{resp.status}"] += 1
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
                self.stats["retry_connection"] += 1
            await asyncio.sleep(0.25)
        raise AssertionError(f"no answer for {path}")

    async def pay(self, http: aiohttp.ClientSession, invoice_id: UUID, index: int) -> None:
        provider = PROVIDERS[index % len(PROVIDERS)]
        body: dict[str, Any] = {"provider": provider}
        if provider == "momo":
            body["payer"] = f"25677{index:07d}"
        elif provider == "mpesa":
            body["payer"] = f"2547{index:08d}"
        path = f"/api/v1/invoices/{invoice_id}/payments"
        key = str(uuid.uuid4())
        status, first = await self.post(http, path, body, key)
        self.stats[f"first_{status}"] += 1
        if self.rng.random() < 0.3:  # the app retries with the same key: the same answer
            status2, again = await self.post(http, path, body, key)
            assert (status2, again) == (status, first), (first, again)
            self.stats["replayed"] += 1
        if self.rng.random() < 0.25:  # and sometimes with a new key
            status3, other = await self.post(http, path, body, str(uuid.uuid4()))
            self.stats[f"new_key_{status3}_{other.get('code', 'created')}"] += 1


class Desk(Client):
    """The front desk: refunds paid invoices while payments run, and pays failed
    payouts again (through the provider, or from the till)."""

    async def refund(self, http: aiohttp.ClientSession, payment: asyncpg.Record) -> None:
        left = payment["amount"] - payment["refunded"]
        body: dict[str, Any] = {"reason": "chaos"}
        if self.rng.random() < 0.5:  # part of it, in whole shillings (M-Pesa's unit)
            body["amount"] = self.rng.randrange(1, max(2, left // 100)) * 100
        path = f"/api/v1/payments/{payment['id']}/refunds"
        key = str(uuid.uuid4())
        status, answer = await self.post(http, path, body, key)
        self.stats[f"refund_{status}_{answer.get('code', 'created')}"] += 1
        if self.rng.random() < 0.3:  # a double click: the same answer
            assert await self.post(http, path, body, key) == (status, answer)
        if status == 422 and answer.get("code") == "provider_refused":
            # M-Pesa without its receipt: the desk pays it from the till instead.
            status, answer = await self.post(
                http, path, body | {"payout": "cash"}, str(uuid.uuid4())
            )
            self.stats[f"refund_cash_{status}_{answer.get('code', 'created')}"] += 1

    async def retry_failed(self, http: aiohttp.ClientSession) -> None:
        owed = (await self.get(http, "/api/v1/refunds/owed?limit=100"))["items"]
        for refund in owed:
            if refund["payout_status"] != "failed" or self.rng.random() < 0.5:
                continue
            if refund["payout_failure_reason"] == "no_reference":
                # A reversal whose answer was lost may have been paid: the desk checks
                # the M-Pesa statement before paying again (docs/payments.md).
                self.stats["payout_left_for_the_statement"] += 1
                continue
            method = "cash" if self.rng.random() < 0.3 else "provider"
            status, answer = await self.post(
                http,
                f"/api/v1/refunds/{refund['id']}/payouts",
                {"method": method},
                str(uuid.uuid4()),
            )
            self.stats[f"payout_{method}_{status}_{answer.get('code', 'created')}"] += 1

    async def work(
        self, http: aiohttp.ClientSession, pool: asyncpg.Pool, payments_done: asyncio.Event
    ) -> None:
        refunds = turns = 0
        while refunds < REFUNDS or not payments_done.is_set():
            turns += 1
            candidates = await pool.fetch(
                "SELECT id, amount, refunded FROM payments WHERE status = 'succeeded' "
                "AND refunded < amount ORDER BY random() LIMIT 1"
            )
            if candidates and refunds < REFUNDS:
                await self.refund(http, candidates[0])
                refunds += 1
            elif payments_done.is_set():
                break  # nothing left to refund
            if turns % 5 == 0:
                await self.retry_failed(http)
            await asyncio.sleep(0.1)


async def _login(base_url: str, account: Account) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            base_url + "/api/v1/auth/login", json={"email": account.email, "password": PASSWORD}
        ) as resp:
            assert resp.status == 200, await resp.text()
            token: str = (await resp.json())["access_token"]
            return token


async def test_payments_survive_chaos(fresh_db: str, tmp_path: Path) -> None:
    sim_server, sims = await start_sims(CHAOS)
    # Lost answers of M-Pesa's processrequest cannot be recovered (Daraja names the
    # reference): a slow answer there would be money without a record. Its API fails
    # fast instead (docs/payments.md, "Known limits").
    sims.mpesa.behaviour.api_slow_rate = 0.0
    sim_url = str(sim_server.make_url("")).rstrip("/")
    server = ServerProcess(fresh_db, tmp_path, name="pay")
    sims.card.webhook_url = f"{server.base_url}/api/v1/webhooks/payments/card"
    server.env.update(
        sims.env(sim_url)
        | {
            "PAYMENTS_CALLBACK_BASE_URL": server.base_url,
            "PAYMENTS_RECONCILE_IN_SERVER": "true",
            "PAYMENTS_POLL_INTERVAL": "0.3",
            "PAYMENTS_POLL_MAX_INTERVAL": "1.0",
            "PAYMENTS_PENDING_TIMEOUT": "15",
            "PAYMENTS_REQUEST_TIMEOUT": "1.5",
            "PAYMENTS_LEASE_SECONDS": "5",
        }
    )
    doctor, patient, desk_person = await clinic_people(
        fresh_db, Role.DOCTOR, Role.PATIENT, Role.RECEPTIONIST, name="Chaos"
    )
    appointments = await _book_all(fresh_db, doctor, patient, N)
    pool = await asyncpg.create_pool(fresh_db, min_size=1, max_size=4)
    try:
        invoices = {
            r["appointment_id"]: r["id"]
            for r in await pool.fetch("SELECT id, appointment_id FROM invoices")
        }
        assert len(invoices) == N
        await server.start()
        client = Client(server.base_url, await _login(server.base_url, patient))
        desk = Desk(server.base_url, await _login(server.base_url, desk_person))
        gate = asyncio.Semaphore(CONCURRENCY)
        done = 0
        milestones = [asyncio.Event() for _ in range(KILLS)]

        async def one(index: int, appointment_id: UUID, http: aiohttp.ClientSession) -> None:
            nonlocal done
            async with gate:
                await client.pay(http, invoices[appointment_id], index)
                done += 1
                for k, reached in enumerate(milestones):
                    if done >= N * (k + 1) / (KILLS + 1):
                        reached.set()

        async def killer() -> None:
            for reached in milestones:
                await reached.wait()
                server.kill()
                await asyncio.sleep(0.3)
                await server.start()

        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            kills = asyncio.create_task(killer())
            payments_done = asyncio.Event()
            desk_work = asyncio.create_task(desk.work(http, pool, payments_done))
            await asyncio.gather(*(one(i, a, http) for i, a in enumerate(appointments)))
            payments_done.set()
            await kills
            await desk_work
        # Every payment and payout reaches a final state (the reconciler, through the kills).
        for _ in range(240):
            if not await pool.fetchval(
                "SELECT (SELECT count(*) FROM payments WHERE status = 'pending') "
                "+ (SELECT count(*) FROM refund_payouts WHERE status = 'pending')"
            ):
                break
            await asyncio.sleep(0.5)
        await _check(pool, sims, appointments, doctor.clinic_id, client, server)
        await _check_payouts(pool, sims, desk)
    finally:
        await server.stop()
        await pool.close()
        await sim_server.close()
        await sims.close()


async def _check(
    pool: asyncpg.Pool,
    sims: Any,
    appointments: list[UUID],
    clinic_id: UUID,
    client: Client,
    server: ServerProcess,
) -> None:
    payments = await pool.fetch("SELECT * FROM payments")
    # 0 double credits: one credit per payment (by the database), one succeeded payment
    # per invoice, and every invoice's paid total is its credited amount.
    doubles = await pool.fetchval(
        "SELECT count(*) FROM (SELECT invoice_id FROM ledger_transactions WHERE kind = 'payment' "
        "GROUP BY invoice_id HAVING count(*) > 1) d"
    )
    assert doubles == 0
    mismatched_paid = await pool.fetchval(
        """
        SELECT count(*) FROM invoices i WHERE i.paid <> coalesce((
            SELECT sum(p.amount) FROM ledger_postings p JOIN ledger_transactions t
            ON t.id = p.transaction_id WHERE t.invoice_id = i.id AND t.kind = 'payment'
            AND p.account LIKE 'clearing:%'), 0)
        """
    )
    assert mismatched_paid == 0
    # Every payment final.
    assert all(p["status"] in ("succeeded", "failed") for p in payments)
    # Trial balance exactly 0.
    totals = await pool.fetch(
        "SELECT currency, sum(amount) AS total FROM ledger_postings GROUP BY currency"
    )
    assert [(r["currency"], r["total"]) for r in totals] == [("KES", 0)]
    # Reconciliation against the ground truth, both ways.
    truth = {name: sim.truth for name, sim in sims.all().items()}
    ours_by_ref = {}
    for p in payments:
        known = truth[p["provider"]].get(p["provider_reference"] or "")
        ours_by_ref[(p["provider"], p["provider_reference"])] = p
        if known is None:
            assert p["status"] == "failed", dict(p)  # never reached the provider
        else:
            assert p["status"] == known.state(), (dict(p), known)
            assert known.amount == p["amount"]
    # Money the provider took is credited, with one known exception: Daraja names the
    # CheckoutRequestID in its answer, so a server killed between that answer and its
    # commit, or an answer that arrives after our timeout, cannot know the payment. Such
    # a payment failed (``no_reference`` or ``provider_unreachable``) and is found again
    # by its AccountReference (docs/payments.md, "Known limits").
    by_account_ref = {p["id"].hex[:12]: p for p in payments if p["provider"] == "mpesa"}
    orphans = 0
    for name, txns in truth.items():
        for ref, txn in txns.items():
            if txn.state() != "succeeded":
                continue
            ours = ours_by_ref.get((name, ref))
            if ours is None and name == "mpesa":
                cut = by_account_ref.get(txn.extra["AccountReference"])
                assert cut is not None and cut["status"] == "failed", (name, ref)
                # Cut by a kill after Daraja's answer (no_reference at expiry), or an
                # answer that came too late on a loaded machine (provider_unreachable).
                assert cut["failure_reason"] in ("no_reference", "provider_unreachable"), dict(cut)
                orphans += 1
                continue
            assert ours is not None and ours["status"] == "succeeded", (name, ref)
    # 0 consultations open without a provider-confirmed success (the pay_before gate).
    service = PaymentService(
        pool=pool, audit=AuditTrail(pool), providers={}, settings=PaymentSettings()
    )
    confirmed = {
        p["invoice_id"]
        for p in payments
        if p["status"] == "succeeded"
        and truth[p["provider"]][p["provider_reference"]].state() == "succeeded"
    }
    invoice_of = {
        r["appointment_id"]: r["id"]
        for r in await pool.fetch("SELECT id, appointment_id FROM invoices")
    }
    opened_unpaid = 0
    for appointment_id in appointments:
        open_gate = await service.payment_due(appointment_id, clinic_id) is None
        if open_gate and invoice_of[appointment_id] not in confirmed:
            opened_unpaid += 1
    assert opened_unpaid == 0
    ignored = await pool.fetch(
        "SELECT detail->>'reason' AS why, count(*) AS n FROM (SELECT action, detail FROM "
        "audit_intake UNION ALL SELECT action, detail FROM audit_log) a "
        "WHERE action IN ('payment.callback.ignored', 'payment.callback.refused') GROUP BY 1"
    )
    figures = {
        "payments_requested": N,
        "payment_rows": len(payments),
        "succeeded": sum(p["status"] == "succeeded" for p in payments),
        "failed": sum(p["status"] == "failed" for p in payments),
        "invoices_paid": len(confirmed),
        "server_starts": server.starts,
        "forged_sent": sum(s.forged_sent for s in sims.all().values()),
        "callbacks_sent": sum(s.callbacks_sent for s in sims.all().values()),
        "callbacks_dropped": sum(s.callbacks_dropped for s in sims.all().values()),
        "callbacks_refused_or_ignored": {r["why"]: r["n"] for r in ignored},
        "client": dict(client.stats),
        "double_credits": doubles,
        "mpesa_answers_lost_to_a_kill": orphans,
        "opened_without_confirmed_success": opened_unpaid,
    }
    print("payments chaos figures:", json.dumps(figures, sort_keys=True))


async def _check_payouts(pool: asyncpg.Pool, sims: Any, desk: Desk) -> None:
    payouts = await pool.fetch(
        "SELECT o.*, p.provider_reference AS payment_reference FROM refund_payouts o "
        "JOIN payments p ON p.id = o.payment_id"
    )
    # Every payout final; none succeeded twice, for a refund or in the ledger.
    assert all(o["status"] in ("succeeded", "failed") for o in payouts)
    twice = await pool.fetchval(
        "SELECT count(*) FROM (SELECT refund_id FROM refund_payouts WHERE status = 'succeeded' "
        "GROUP BY refund_id HAVING count(*) > 1) d"
    )
    assert twice == 0
    posted = await pool.fetch(
        "SELECT payout_id, count(*) AS n FROM ledger_transactions WHERE kind = 'payout' "
        "GROUP BY payout_id"
    )
    assert {r["payout_id"]: r["n"] for r in posted} == {
        o["id"]: 1 for o in payouts if o["status"] == "succeeded"
    }
    # Refunds never exceed payments: ours, and what each provider sent back.
    over = await pool.fetchval(
        """
        SELECT count(*) FROM payments p WHERE p.refunded > p.amount OR p.refunded <> coalesce((
            SELECT sum(l.amount) FROM ledger_postings l JOIN ledger_transactions t
            ON t.id = l.transaction_id WHERE t.payment_id = p.id AND t.kind = 'refund'
            AND l.account = 'refunds'), 0)
        """
    )
    assert over == 0
    # What is still owed to patients is the refunds without a succeeded payout.
    owed = await pool.fetchval(
        "SELECT coalesce(sum(l.amount), 0) FROM ledger_postings l "
        "WHERE l.account = 'refunds_payable'"
    )
    unpaid = await pool.fetchval(
        """
        SELECT coalesce(sum(r.amount), 0) FROM (SELECT DISTINCT refund_id, amount
            FROM refund_payouts) r WHERE NOT EXISTS (SELECT 1 FROM refund_payouts s
            WHERE s.refund_id = r.refund_id AND s.status = 'succeeded')
        """
    )
    assert -owed == unpaid, (owed, unpaid)
    # The money each provider sent back is exactly our succeeded payouts through it, with
    # the one known gap: an M-Pesa reversal whose answer was lost (or cut by a kill) and
    # whose result callback was dropped has no ConversationID to ask about: it failed as
    # no_reference, still owed (docs/payments.md, "Known limits").
    ours = {(o["method"], o["provider_reference"]): o for o in payouts}
    gaps = [
        o for o in payouts
        if o["method"] == "mpesa" and o["failure_reason"] == "no_reference"
    ]  # fmt: skip
    returned: dict[str, int] = {}
    paid_back: dict[str, int] = {}
    lost_reversals = 0
    for name, sim in sims.all().items():
        by_payment: Counter[str] = Counter()
        for ref, txn in sim.refunds.items():
            if txn.state() != "succeeded":
                continue
            returned[name] = returned.get(name, 0) + txn.amount
            by_payment[txn.payer] += txn.amount
            payout = ours.get((name, ref))
            if payout is None and name == "mpesa":
                gap = next(
                    (g for g in gaps
                     if g["payment_reference"] == txn.payer and g["amount"] == txn.amount),
                    None,
                )  # fmt: skip
                assert gap is not None, (name, ref)
                gaps.remove(gap)
                lost_reversals += 1
                paid_back[name] = paid_back.get(name, 0) + txn.amount
                continue
            assert payout is not None and payout["status"] == "succeeded", (name, ref)
            assert payout["amount"] == txn.amount
        for reference, amount in by_payment.items():
            assert amount <= sim.truth[reference].amount, (name, reference)
    for o in payouts:
        if o["status"] == "succeeded" and o["method"] != "cash":
            assert sims.all()[o["method"]].refunds[o["provider_reference"]].state() == (
                "succeeded"
            ), dict(o)
            paid_back[o["method"]] = paid_back.get(o["method"], 0) + o["amount"]
    assert returned == paid_back
    figures = {
        "refund_payouts": len(payouts),
        "payouts_succeeded": Counter(o["method"] for o in payouts if o["status"] == "succeeded"),
        "payouts_failed": Counter(o["failure_reason"] for o in payouts if o["status"] == "failed"),
        "provider_refunds_sent_back": returned,
        "mpesa_reversals_found_only_on_the_statement": lost_reversals,
        "desk": dict(desk.stats),
    }
    print("refund payouts chaos figures:", json.dumps(figures, sort_keys=True))
