"""The payment pages in Chromium against a real server whose providers are the payment
simulators (the demo clinic's set-up, ``PAYMENTS_DEMO``, mounted at ``/_simulators/``):
the patient pays by MTN MoMo and by card through the gateway's redirect, a pay tap
retried after the connection dropped pays once, the front desk takes cash, refunds part
of a payment and prints the receipt; axe-core on each page."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest
from playwright.async_api import Page, Request, Route

from teleconsult.payments.money import EXPONENTS
from tests.browser.conftest import CLINIC_TZ, Axe, Clinic, NewPage, Shot, summarise_axe
from tests.world import PASSWORD

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

# The server's providers are the simulators it mounts itself; the payer answers within
# about a second and the reconciler asks every half second.
SERVER_ENV = {
    "PAYMENTS_DEMO": "on",
    "PAYMENTS_POLL_INTERVAL": "0.5",
    "PAYMENTS_POLL_MAX_INTERVAL": "1",
}
PAID_TIMEOUT = 30_000
_hours = itertools.count(7)


async def _set_fee(database_url: str, clinic: Clinic, doctor: str, fee: int, currency: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        done = await conn.execute(
            "UPDATE doctor_profiles SET fee_cents = $2, currency = $3 WHERE user_id = $1",
            clinic[doctor].user_id,
            fee,
            currency,
        )
        assert done == "UPDATE 1"
    finally:
        await conn.close()


async def _book(clinic: Clinic, patient: str, doctor: str) -> UUID:
    """An appointment booked by the patient through the API: its invoice comes with it."""
    hour = next(_hours)
    day = datetime.now(ZoneInfo(CLINIC_TZ)).date() + timedelta(days=1 + (hour - 7) // 14)
    start = datetime(day.year, day.month, day.day, 7 + (hour - 7) % 14, tzinfo=ZoneInfo(CLINIC_TZ))
    body = {
        "doctor_id": str(clinic[doctor].user_id),
        "service": "video",
        "starts_at": start.astimezone(UTC).isoformat(),
    }
    async with aiohttp.ClientSession(clinic.base_url) as http:
        login = {"email": clinic[patient].email, "password": PASSWORD}
        async with http.post("/api/v1/auth/login", json=login) as resp:
            assert resp.status == 200
            auth = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
        async with http.post("/api/v1/appointments", json=body, headers=auth) as resp:
            assert resp.status == 201, await resp.text()
            return UUID((await resp.json())["id"])


async def _invoice(database_url: str, appointment_id: UUID) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT id, number, status FROM invoices WHERE appointment_id = $1", appointment_id
        )
        assert row is not None, "booking raised no invoice"
        payments = await conn.fetch(
            "SELECT id, provider, status, amount, refunded FROM payments WHERE invoice_id = $1",
            row["id"],
        )
        return dict(row) | {"payments": [dict(p) for p in payments]}
    finally:
        await conn.close()


def _serious(violations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [v for v in violations if v["impact"] in ("serious", "critical")]


async def _check_axe(axe: Axe, page: Page, name: str) -> None:
    violations = await axe(page)
    print(summarise_axe(name, violations))
    assert _serious(violations) == [], name


@pytest.fixture(autouse=True)
async def _fees(clinic: Clinic, database_url: str) -> None:
    """Dr Diallo charges 5,000 XOF (no minor unit), Dr Okafor 1,500.00 KES."""
    await _set_fee(database_url, clinic, "doctor", 5_000, "XOF")
    await _set_fee(database_url, clinic, "doctor2", 150_000, "KES")


async def _open_pay_page(page: Page, appointment_id: UUID) -> None:
    """From the patient's appointments to the appointment's pay page."""
    await page.goto("/patient.html")
    link = page.locator(f'li[data-appointment="{appointment_id}"] a[href*="pay.html"]')
    assert (await link.inner_text()).startswith("Pay ")  # "Pay F CFA 5,000": what is owed
    await link.click()
    await page.wait_for_url("**/pay.html?appointment=*")
    await page.wait_for_selector("#pay-form:not([hidden])")


async def _pay_page_keeping_keys(clinic: Clinic, new_page: NewPage) -> tuple[UUID, Page, list[str]]:
    """The patient's pay page for a new appointment with Dr Diallo (XOF), and the
    Idempotency-Key of every payment request it sends, in order."""
    appointment = await _book(clinic, "patient", "doctor")
    page = await new_page("patient")
    await _open_pay_page(page, appointment)
    keys: list[str] = []

    async def record(route: Route, request: Request) -> None:
        keys.append(request.headers.get("idempotency-key", ""))
        await route.continue_()

    await page.route("**/api/v1/invoices/*/payments", record)
    return appointment, page, keys


async def test_patient_pays_by_momo_and_sees_paid(
    clinic: Clinic, database_url: str, new_page: NewPage, shot: Shot, axe: Axe
) -> None:
    appointment = await _book(clinic, "patient", "doctor")
    page = await new_page("patient")
    await _open_pay_page(page, appointment)
    invoice = await _invoice(database_url, appointment)
    table = page.locator("#invoice table.money")
    # XOF has no minor unit: 5000 is five thousand francs, shown without decimals.
    total = await table.locator("tr.total td").inner_text()
    assert "5,000" in total and "." not in total.replace("F CFA", ""), total
    assert invoice["number"] in await page.locator("#invoice").inner_text()
    await shot(page, "pay-form")
    await _check_axe(axe, page, "pay.html (form)")
    assert await page.locator("#pay-phone").input_value() == "254711000001"  # from the profile
    await page.get_by_role("button", name="Pay").click()
    await page.wait_for_selector(".pay-pending")
    await _check_axe(axe, page, "pay.html (pending)")
    await page.wait_for_selector(".pay-ok", timeout=PAID_TIMEOUT)
    assert await page.locator("#pay-outcome").inner_text() == "Paid. Thank you."
    assert "paid" in await page.locator("#invoice-status").inner_text()
    assert "/pay.html?payment=" in page.url  # a reload shows this payment, not a new form
    await shot(page, "pay-paid")
    await _check_axe(axe, page, "pay.html (paid)")
    after = await _invoice(database_url, appointment)
    assert after["status"] == "paid"
    assert [(p["provider"], p["status"], p["amount"]) for p in after["payments"]] == [
        ("momo", "succeeded", 5_000)
    ]
    # Back on the appointments, the paid one offers its receipt instead of "Pay".
    await page.goto("/patient.html")
    item = page.locator(f'li[data-appointment="{appointment}"]')
    await item.get_by_role("link", name="Receipt").click()
    await page.wait_for_selector("body.receipt-ready")
    assert "Grace Mwangi" in await page.locator("#receipt-patient").inner_text()
    assert "MTN Mobile Money" in await page.locator("#receipt-payments").inner_text()


async def test_card_payment_through_the_gateways_redirect(
    clinic: Clinic, database_url: str, new_page: NewPage, shot: Shot
) -> None:
    appointment = await _book(clinic, "patient", "doctor2")
    page = await new_page("patient")
    await _open_pay_page(page, appointment)
    total = await page.locator("#invoice tr.total td").inner_text()
    assert "1,500.00" in total, total  # KES has cents
    await page.get_by_label("Card").check()
    assert await page.locator("#pay-phone-field").is_hidden()
    await page.get_by_role("button", name="Pay").click()
    # The gateway's checkout page (the simulator's, on /_simulators/card/checkout/…).
    await page.wait_for_url("**/_simulators/card/checkout/*")
    assert "Simulated card checkout" in await page.content()
    await shot(page, "card-checkout")
    # --- payments follow-ups (issue 15): the gateway's own return ---
    # "Pay" on the gateway's page sends the browser to the callback_url the server gave
    # (/pay.html?payment=<id>) with the gateway's trxref and reference added, as Paystack
    # does; the page shows what the server verified and drops the gateway's parameters.
    async with page.expect_navigation(url="**/pay.html?payment=*&trxref=*&reference=*"):
        await page.get_by_role("button", name="Pay").click()
    await page.wait_for_selector(".pay-ok", timeout=PAID_TIMEOUT)
    assert await page.locator("#pay-outcome").inner_text() == "Paid. Thank you."
    assert "trxref" not in page.url and "reference=" not in page.url
    payment_id = page.url.split("payment=")[1]
    # The browser's Back button from the gateway's page lands on the payment too.
    await page.go_back()
    await page.wait_for_url("**/_simulators/card/checkout/*")
    await page.go_back()
    await page.wait_for_url("**/pay.html?payment=*")
    await page.wait_for_selector(".pay-ok", timeout=PAID_TIMEOUT)
    # --- end payments follow-ups ---
    after = await _invoice(database_url, appointment)
    assert after["status"] == "paid"
    assert [(str(p["id"]), p["provider"], p["status"]) for p in after["payments"]] == [
        (payment_id, "card", "succeeded")
    ]
    # The same return page opened afresh (as the gateway's redirect would) says the same.
    await page.goto(f"/pay.html?payment={payment_id}")
    await page.wait_for_selector(".pay-ok")
    await shot(page, "card-returned")


# --- payments follow-ups (issue 15): signing in keeps the page's query ---
async def test_signing_in_returns_to_the_pay_page_with_its_query(
    clinic: Clinic, new_context: Any
) -> None:
    appointment = await _book(clinic, "patient", "doctor")
    page = await (await new_context(phone=True)).new_page()
    await page.goto(f"/pay.html?appointment={appointment}")
    await page.wait_for_url("**/?next=*")
    await page.locator("#signin-email").fill(clinic["patient"].email)
    await page.locator("#signin-password").fill(PASSWORD)
    await page.locator("#signin-form button[type=submit]").click()
    await page.wait_for_url(f"**/pay.html?appointment={appointment}")
    await page.wait_for_selector("#pay-form:not([hidden])")


@pytest.mark.parametrize(
    "next_",
    ["//evil.example/pay.html", "/pay.html?x=//evil.example", "/pay.html?a=1#x",
     "https://evil.example/", "/pay.html\\evil", "/../pay.html?appointment=1"],
)  # fmt: skip
async def test_signing_in_never_follows_another_origin_or_odd_path(
    clinic: Clinic, new_context: Any, next_: str
) -> None:
    page = await (await new_context()).new_page()
    await page.goto(f"/?next={quote(next_, safe='')}")
    await page.locator("#signin-email").fill(clinic["patient"].email)
    await page.locator("#signin-password").fill(PASSWORD)
    await page.locator("#signin-form button[type=submit]").click()
    await page.wait_for_url("**/patient.html")
    assert page.url.startswith(clinic.base_url)


# --- end payments follow-ups ---


async def test_a_pay_tap_retried_offline_then_online_pays_once(
    clinic: Clinic, database_url: str, new_page: NewPage
) -> None:
    appointment = await _book(clinic, "patient", "doctor")
    page = await new_page("patient")
    await _open_pay_page(page, appointment)
    keys: list[str] = []
    replayed: list[str | None] = []
    lost = {"done": False, "offline": False}

    async def lose_the_answer(route: Route, request: Request) -> None:
        keys.append(request.headers.get("idempotency-key", ""))
        if lost["offline"]:  # the page's own retries while offline (route.fetch would not be)
            await route.abort("internetdisconnected")
            return
        if lost["done"]:
            response = await route.fetch()
            replayed.append(response.headers.get("idempotent-replayed"))
            await route.fulfill(response=response)
            return
        # The server gets the tap and starts the payment; the answer never arrives and
        # the phone goes offline (2G dropped).
        await route.fetch()
        lost["done"] = lost["offline"] = True
        await page.context.set_offline(True)
        await route.abort("internetdisconnected")

    await page.route("**/api/v1/invoices/*/payments", lose_the_answer)
    await page.get_by_role("button", name="Pay").click()
    error = page.locator("#pay-form .form-error")
    await error.wait_for(state="visible")
    assert "Not sent" in await error.inner_text()
    assert await page.locator("#pay-phone").input_value() == "254711000001"  # kept
    assert await page.locator("#pay-form").get_attribute("class") == "stack pay-form unsent"
    await page.context.set_offline(False)
    lost["offline"] = False
    await page.get_by_role("button", name="Pay").click()
    await page.wait_for_selector(".pay-ok", timeout=PAID_TIMEOUT)
    assert len(set(keys)) == 1 and len(keys) >= 3, keys  # one intent, one key, every try
    assert replayed == ["true"]  # the server answered the retry with the first answer
    after = await _invoice(database_url, appointment)
    assert after["status"] == "paid"
    assert len(after["payments"]) == 1, after["payments"]


async def _desk_card(page: Page, invoice_id: UUID, status: str) -> Any:
    await page.select_option("#owed-status", status)
    card = page.locator(f'li[data-invoice="{invoice_id}"]')
    await card.wait_for()
    return card


async def _owed_card(
    database_url: str, new_page: NewPage, appointment: UUID
) -> tuple[dict[str, Any], Page, Any]:
    """The appointment's invoice, and its open card on the receptionist's owed.html."""
    invoice = await _invoice(database_url, appointment)
    page = await new_page("receptionist")
    await page.goto("/owed.html")
    await page.wait_for_selector("body.ready")
    return invoice, page, await _desk_card(page, invoice["id"], "open")


async def test_front_desk_takes_cash_and_prints_a_receipt(
    clinic: Clinic, database_url: str, new_page: NewPage, shot: Shot, axe: Axe
) -> None:
    appointment = await _book(clinic, "patient2", "doctor")
    invoice = await _invoice(database_url, appointment)
    page = await new_page("receptionist")
    await page.locator("#owed-link").click()
    await page.wait_for_url("**/owed.html")
    await page.wait_for_selector("body.ready")
    card = await _desk_card(page, invoice["id"], "open")
    assert "Moussa Traoré" in await card.inner_text()
    assert "5,000" in await card.locator(".owed-amount").inner_text()
    await _check_axe(axe, page, "owed.html")
    await card.get_by_role("button", name="Take cash").click()
    confirm = card.locator("form[data-panel=cash]")
    assert "Take F CFA" in await confirm.inner_text() or "5,000" in await confirm.inner_text()
    await _check_axe(axe, page, "owed.html (cash confirm)")
    await shot(page, "desk-cash-confirm")
    await confirm.locator("button[type=submit]").click()
    await page.locator(".toast-ok").wait_for()
    await page.locator(f'li[data-invoice="{invoice["id"]}"]').wait_for(state="detached")
    after = await _invoice(database_url, appointment)
    assert after["status"] == "paid"
    assert [(p["provider"], p["status"]) for p in after["payments"]] == [("cash", "succeeded")]

    card = await _desk_card(page, invoice["id"], "paid")
    async with page.context.expect_page() as opened:
        await card.get_by_role("link", name="Receipt").click()
    receipt = await opened.value
    await receipt.wait_for_selector("body.receipt-ready")
    assert receipt.url.endswith(f"/receipt.html?invoice={invoice['id']}")  # the opaque id only
    text = await receipt.locator("#receipt").inner_text()
    for expected in ("Clinique du Lac", invoice["number"], "Moussa Traoré", "Cash", "received"):
        assert expected in text, expected
    balance = await receipt.locator("#receipt-balance").inner_text()
    assert balance.startswith("Balance due:") and balance.endswith("0") and "5,000" not in balance
    await _check_axe(axe, receipt, "receipt.html")
    await receipt.emulate_media(media="print")
    assert await receipt.locator("header.top").is_hidden()
    assert await receipt.locator("#receipt-print").is_hidden()
    assert await receipt.locator("#receipt table.money").first.is_visible()
    await shot(receipt, "receipt-print")
    pdf = await receipt.pdf(format="A4")
    assert pdf.startswith(b"%PDF") and len(pdf) > 1_000
    await receipt.emulate_media(media="screen")
    assert await receipt.locator("#receipt-print").is_visible()


async def test_a_partial_refund_shows_on_the_receipt(
    clinic: Clinic, database_url: str, new_page: NewPage, shot: Shot, axe: Axe
) -> None:
    appointment = await _book(clinic, "patient2", "doctor2")
    invoice, page, card = await _owed_card(database_url, new_page, appointment)
    await card.get_by_role("button", name="Take cash").click()
    await card.locator("form[data-panel=cash] button[type=submit]").click()
    await page.locator(f'li[data-invoice="{invoice["id"]}"]').wait_for(state="detached")

    card = await _desk_card(page, invoice["id"], "paid")
    await card.get_by_role("button", name="Refund").click()
    form = card.locator("form[data-panel=refund]")
    await form.wait_for()
    await form.get_by_label("Amount to refund").fill("2000")  # more than was paid: refused
    await form.get_by_label("Reason").fill("Call cut short")
    await form.locator("button[type=submit]").click()
    assert "at most" in await form.locator(".form-error").inner_text()
    await form.get_by_label("Amount to refund").fill("500.50")
    await _check_axe(axe, page, "owed.html (refund)")
    await form.locator("button[type=submit]").click()
    await page.locator(".toast-ok", has_text="refunded").wait_for()
    after = await _invoice(database_url, appointment)
    assert after["status"] == "partially_refunded"
    assert [(p["amount"], p["refunded"]) for p in after["payments"]] == [(150_000, 50_050)]

    receipt = await page.context.new_page()
    await receipt.goto(f"/receipt.html?invoice={invoice['id']}")
    await receipt.wait_for_selector("body.receipt-ready")
    refund = await receipt.locator("tr.refund").inner_text()
    assert "Refund (Cash)" in refund and "500.50" in refund, refund
    assert "Call cut short" in refund, refund  # payments follow-ups (issue 15): the reason
    assert "partly refunded" in await receipt.locator("#receipt-status").inner_text()
    await receipt.emulate_media(media="print")
    await shot(receipt, "receipt-refund-print")


async def test_a_declined_payment_says_so_and_trying_again_is_a_new_payment(
    clinic: Clinic, database_url: str, new_page: NewPage, shot: Shot
) -> None:
    appointment, page, keys = await _pay_page_keeping_keys(clinic, new_page)
    control = clinic.url("/_simulators/_control/momo/behaviour")
    async with aiohttp.ClientSession() as http:
        async with http.post(control, json={"fail_rate": 1}) as resp:
            assert resp.status == 200
        try:
            await page.get_by_role("button", name="Pay").click()
            await page.wait_for_selector(".pay-error", timeout=PAID_TIMEOUT)
        finally:
            async with http.post(control, json={"fail_rate": 0}) as resp:
                assert resp.status == 200
    outcome = await page.locator("#pay-outcome").inner_text()
    assert outcome == "The payment was cancelled on the phone.", outcome
    assert await page.locator("#pay-form").is_visible()  # try again, number kept
    assert await page.locator("#pay-phone").input_value() == "254711000001"
    await shot(page, "pay-declined")
    await page.get_by_role("button", name="Pay").click()
    await page.wait_for_selector(".pay-ok", timeout=PAID_TIMEOUT)
    assert len(keys) == 2 and keys[0] != keys[1], keys  # a new intent, a new key
    after = await _invoice(database_url, appointment)
    assert after["status"] == "paid"
    assert sorted(p["status"] for p in after["payments"]) == ["failed", "succeeded"]


async def test_the_front_desk_waives_a_fee_with_a_reason(
    clinic: Clinic, database_url: str, new_page: NewPage
) -> None:
    appointment = await _book(clinic, "patient2", "doctor")
    invoice, page, card = await _owed_card(database_url, new_page, appointment)
    await card.get_by_role("button", name="Waive").click()
    form = card.locator("form[data-panel=waive]")
    await form.locator("button[type=submit]").click()  # no reason: nothing sent
    assert await form.get_by_label("Reason").evaluate("e => e === document.activeElement")
    await form.get_by_label("Reason").fill("Community health programme")
    await form.locator("button[type=submit]").click()
    await page.locator(".toast-ok", has_text="waived").wait_for()
    after = await _invoice(database_url, appointment)
    assert after["status"] == "paid" and after["payments"] == []


async def test_the_pay_page_in_french_shows_francs_without_decimals(
    clinic: Clinic, new_page: NewPage
) -> None:
    appointment = await _book(clinic, "patient", "doctor")
    page = await new_page("patient", lang="fr")
    await page.goto(f"/pay.html?appointment={appointment}")
    await page.wait_for_selector("#pay-form:not([hidden])")
    total = await page.locator("#invoice tr.total td").inner_text()
    assert total.replace("\u202f", " ").replace("\u00a0", " ") == "5 000 F CFA", repr(total)
    assert await page.locator("#pay-submit").inner_text() == f"Payer {total}"
    assert await page.locator("legend").inner_text() == "Comment voulez-vous payer ?"


async def test_the_pages_minor_units_are_the_servers(clinic: Clinic, new_page: NewPage) -> None:
    page = await new_page("patient")
    digits = await page.evaluate(
        """async (codes) => {
            const money = await import("/static/js/pay/money.js");
            return Object.fromEntries(codes.map((c) => [c, money.minorDigits(c)]));
        }""",
        sorted(EXPONENTS),
    )
    assert digits == EXPONENTS
    shown = await page.evaluate(
        """async () => {
            const money = await import("/static/js/pay/money.js");
            return [money.formatMoney(150050, "KES"), money.formatMoney(5000, "XOF"),
                    money.formatMoney(1234, "TND"), money.parseMoney("500.50", "KES"),
                    money.parseMoney("1,500", "KES"), money.parseMoney("1.5", "XOF"),
                    money.parseMoney("12abc", "KES")];
        }"""
    )
    shown = [
        x.replace("\xa0", " ").replace("\u202f", " ") if isinstance(x, str) else x for x in shown
    ]
    assert shown == ["KES 1,500.50", "F CFA 5,000", "TND 1.234", 50050, 150000, None, None]


async def test_a_refused_payment_keeps_the_form_and_the_next_try_has_a_new_key(
    clinic: Clinic, database_url: str, new_page: NewPage
) -> None:
    appointment, page, keys = await _pay_page_keeping_keys(clinic, new_page)
    await page.get_by_label("M-Pesa").check()
    await page.locator("#pay-phone").fill("254711000001")
    error = page.locator("#pay-form .form-error")
    for _ in range(2):  # M-Pesa takes KES only: refused by the provider, twice
        await page.get_by_role("button", name="Pay").click()
        await error.wait_for(state="visible")
        assert "KES only" in await error.inner_text()
        assert await page.locator("#pay-phone").input_value() == "254711000001"
        await page.evaluate("document.querySelector('#pay-form .form-error').hidden = true")
    assert len(keys) == 2 and keys[0] != keys[1], keys  # a stored refusal is not replayed
    await page.get_by_label("Card").check()
    await page.get_by_role("button", name="Pay").click()
    await page.wait_for_url("**/_simulators/card/checkout/*")
    after = await _invoice(database_url, appointment)
    assert [p["provider"] for p in after["payments"] if p["status"] != "failed"] == ["card"]


# --- refund payouts (0023): failed payouts on the desk, retried or paid from the till ---


async def _paid_by_momo(clinic: Clinic, database_url: str, appointment: UUID) -> UUID:
    """The appointment's invoice paid by MTN MoMo through the API (the pay page is
    tested above); the payment's id once the simulator's payer approved it."""
    invoice = await _invoice(database_url, appointment)
    async with aiohttp.ClientSession(clinic.base_url) as http:
        login = {"email": clinic["patient"].email, "password": PASSWORD}
        async with http.post("/api/v1/auth/login", json=login) as resp:
            auth = {"Authorization": f"Bearer {(await resp.json())['access_token']}"}
        async with http.post(
            f"/api/v1/invoices/{invoice['id']}/payments",
            json={"provider": "momo", "payer": "254711000001"},
            headers=auth | {"Idempotency-Key": str(uuid4())},
        ) as resp:
            assert resp.status == 201, await resp.text()
            payment_id = UUID((await resp.json())["id"])
    async with asyncio.timeout(PAID_TIMEOUT / 1000):
        while True:
            if (await _invoice(database_url, appointment))["status"] == "paid":
                return payment_id
            await asyncio.sleep(0.2)


async def _momo_refunds_fail(clinic: Clinic, rate: float) -> None:
    async with aiohttp.ClientSession() as http:
        control = clinic.url("/_simulators/_control/momo/behaviour")
        async with http.post(control, json={"refund_fail_rate": rate}) as resp:
            assert resp.status == 200, await resp.text()


async def _payouts(database_url: str, payment_id: UUID) -> list[tuple[str, str, int]]:
    """(method, status, amount) of each payout of the payment's refunds, oldest first."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT method, status, amount FROM refund_payouts WHERE payment_id = $1 "
            "ORDER BY created_at",
            payment_id,
        )
        return [(r["method"], r["status"], r["amount"]) for r in rows]
    finally:
        await conn.close()


async def _provider_reference(database_url: str, payment_id: UUID) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        reference: str = await conn.fetchval(
            "SELECT provider_reference FROM payments WHERE id = $1", payment_id
        )
        return reference
    finally:
        await conn.close()


async def _until_payouts(
    database_url: str, payment_id: UUID, expected: list[tuple[str, str, int]]
) -> None:
    async with asyncio.timeout(PAID_TIMEOUT / 1000):
        while (found := await _payouts(database_url, payment_id)) != expected:
            assert all(s in ("pending", "succeeded", "failed") for _, s, _ in found), found
            await asyncio.sleep(0.2)


async def _refund_on_desk(page: Page, invoice_id: UUID, amount: str, reason: str) -> None:
    card = await _desk_card(page, invoice_id, "")  # all invoices: paid or partly refunded
    await card.get_by_role("button", name="Refund").click()
    form = card.locator("form[data-panel=refund]")
    await form.get_by_label("Amount to refund").fill(amount)
    await form.get_by_label("Reason").fill(reason)
    await form.locator("button[type=submit]").click()
    await page.locator(".toast-ok", has_text="refunded").wait_for()
    await form.wait_for(state="detached")  # the list is drawn afresh


async def _owed_payout(page: Page, refund_reason: str) -> Any:
    """The card of "Refunds still to pay back" for the refund of that reason, listed
    afresh (the list is read when the page loads or the filter changes)."""
    await page.reload()
    await page.wait_for_selector("body.ready")
    section = page.locator("#owed-payouts")
    await section.wait_for()
    return section.locator("li", has_text=refund_reason)


async def test_failed_refund_payouts_are_retried_or_paid_from_the_till(
    clinic: Clinic, database_url: str, new_page: NewPage, shot: Shot, axe: Axe
) -> None:
    appointment = await _book(clinic, "patient", "doctor")  # 5,000 F CFA
    payment_id = await _paid_by_momo(clinic, database_url, appointment)
    invoice = await _invoice(database_url, appointment)
    page = await new_page("receptionist")
    await page.goto("/owed.html")
    await page.wait_for_selector("body.ready")
    # MTN refuses both refunds (the Disbursement account's answer is FAILED).
    await _momo_refunds_fail(clinic, 1)
    try:
        await _refund_on_desk(page, invoice["id"], "2000", "Late doctor")
        await _refund_on_desk(page, invoice["id"], "1000", "Short call")
    finally:
        await _momo_refunds_fail(clinic, 0)
    await _until_payouts(
        database_url, payment_id, [("momo", "failed", 2000), ("momo", "failed", 1000)]
    )
    late = await _owed_payout(page, "Late doctor")
    assert "not paid back by MTN Mobile Money: still owed" in await late.inner_text()
    assert "2,000" in await late.inner_text()
    await shot(page, "desk-payouts-failed")
    # Each failed refund's buttons name its amount, so a screen reader tells them apart.
    retry = page.locator("#owed-payouts").get_by_role("button", name="Try MTN Mobile Money again")
    names = [await b.inner_text() for b in await retry.all()]
    assert len(names) == 2 and len(set(names)) == 2, names
    await _check_axe(axe, page, "owed.html (refunds still to pay back)")

    # The French desk names the same section and buttons in French.
    french = await new_page("receptionist", lang="fr")
    await french.goto("/owed.html")
    await french.wait_for_selector("body.ready")
    assert await french.locator("#owed-payouts-title").inner_text() == (
        "Remboursements encore à verser"
    )
    short_fr = french.locator("#owed-payouts li", has_text="Short call")
    assert "non versé par MTN Mobile Money : toujours dû" in await short_fr.inner_text()
    assert await short_fr.get_by_role("button", name="Réessayer MTN Mobile Money").is_visible()
    await french.context.close()

    # Try again, MTN now willing: the new payout succeeds and the refund leaves the list.
    await late.get_by_role("button", name="Try MTN Mobile Money again").click()
    await page.locator(".toast-ok", has_text="MTN Mobile Money").wait_for()
    await _until_payouts(
        database_url,
        payment_id,
        [("momo", "failed", 2000), ("momo", "failed", 1000), ("momo", "succeeded", 2000)],
    )
    short = await _owed_payout(page, "Short call")
    assert await page.locator("#owed-payouts li", has_text="Late doctor").count() == 0
    # The other one is paid from the till, at once.
    await short.get_by_role("button", name="Paid F CFA 1,000 from the till").click()
    await page.locator(".toast-ok", has_text="paid back by Cash").wait_for()
    await _until_payouts(
        database_url,
        payment_id,
        [("momo", "failed", 2000), ("momo", "failed", 1000), ("momo", "succeeded", 2000),
         ("cash", "succeeded", 1000)],
    )  # fmt: skip
    await page.reload()
    await page.wait_for_selector("body.ready")
    assert await page.locator("#owed-payouts").is_hidden()
    # MTN's own record of this payment's refunds: the two it refused, the one it paid.
    async with aiohttp.ClientSession() as http:
        async with http.get(clinic.url("/_simulators/_control/truth")) as resp:
            truth = (await resp.json())["momo_refunds"]
    reference = await _provider_reference(database_url, payment_id)
    assert sorted((r["state"], r["amount"]) for r in truth.values() if r["of"] == reference) == [
        ("failed", 1000), ("failed", 2000), ("succeeded", 2000)
    ]  # fmt: skip

    # The patient's receipt shows each refund with its payout.
    receipt = await new_page("patient")
    await receipt.goto(f"/receipt.html?invoice={invoice['id']}")
    await receipt.wait_for_selector("body.receipt-ready")
    rows = {
        (await row.locator("td.payout").inner_text())
        for row in await receipt.locator("tr.refund").all()
    }
    assert rows == {"refunded (MTN Mobile Money)", "refunded (Cash)"}, rows
    await shot(receipt, "receipt-payouts")


# --- end refund payouts ---
