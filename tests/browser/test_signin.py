"""Sign-in and accounts in Chromium: sign in and out, the session surviving a reload
(silent refresh from the HttpOnly cookie, no token in storage), registration from a
clinic link, change password, French."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from nacl.bindings import crypto_box_beforenm
from nacl.public import PrivateKey
from playwright.async_api import Page, Route

from tests.browser.conftest import Clinic, NewContext, NewPage, Shot, sign_in
from tests.world import PASSWORD, unique_email

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]


async def test_sign_in_reload_and_sign_out(
    clinic: Clinic, new_context: NewContext, shot: Shot
) -> None:
    context = await new_context(phone=True)
    page = await context.new_page()
    await page.goto("/")
    await page.wait_for_selector("body.ready")
    await shot(page, "1-sign-in")
    await sign_in(page, clinic["patient"])
    await page.wait_for_selector("body.ready")
    assert await page.locator("#account .who").text_content() == "Grace Mwangi"

    # The access token lives in memory only: nothing in web storage, and the refresh
    # cookie is HttpOnly (invisible to scripts).
    stored = await page.evaluate(
        "() => [localStorage.length, sessionStorage.length, document.cookie]"
    )
    assert stored == [0, 0, ""]
    cookies = {c["name"]: c for c in await context.cookies()}
    assert cookies["tc_refresh"]["httpOnly"] and cookies["tc_refresh"]["sameSite"] == "Strict"
    assert cookies["tc_refresh"]["path"] == "/api/v1/auth/"

    # A reload keeps the session through the cookie (a silent refresh).
    refreshes: list[str] = []
    page.on(
        "request", lambda r: refreshes.append(r.url) if r.url.endswith("/session/refresh") else None
    )
    await page.reload()
    await page.wait_for_selector("body.ready")
    assert await page.locator("#account .who").text_content() == "Grace Mwangi"
    assert len(refreshes) == 1

    await page.locator("#sign-out").click()
    await page.wait_for_url(f"{clinic.base_url}/")
    await page.goto("/patient.html")
    await page.wait_for_url("**/?next=*")  # no session any more: back to the sign-in


async def test_two_tabs_restoring_at_once_keep_the_session(
    clinic: Clinic, new_context: NewContext
) -> None:
    """The refresh cookie works once; tabs refreshing together take turns (Web Locks), so
    neither presents a spent cookie, which would end the session everywhere."""
    context = await new_context()
    first = await context.new_page()
    await sign_in(first, clinic["receptionist"])
    tabs = [first, await context.new_page(), await context.new_page()]
    statuses: list[int] = []
    for tab in tabs:
        tab.on(
            "response",
            lambda r: statuses.append(r.status) if r.url.endswith("/session/refresh") else None,
        )
    await asyncio.gather(*(tab.goto("/frontdesk.html") for tab in tabs))
    for tab in tabs:
        await tab.wait_for_selector("body.ready")
        assert tab.url.endswith("/frontdesk.html")
    assert statuses == [200, 200, 200]
    await first.reload()
    await first.wait_for_selector("body.ready")
    assert first.url.endswith("/frontdesk.html")


async def test_wrong_password_keeps_what_was_typed(
    clinic: Clinic, new_context: NewContext, shot: Shot
) -> None:
    page = await (await new_context()).new_page()
    await page.goto("/")
    await page.locator("#signin-email").fill(clinic["doctor"].email)
    await page.locator("#signin-password").fill("not the password")
    await page.locator("#signin-form button[type=submit]").click()
    error = page.locator("#signin-form .form-error")
    await error.wait_for(state="visible")
    assert "Wrong e-mail or password" in (await error.text_content() or "")
    assert await page.locator("#signin-email").input_value() == clinic["doctor"].email
    await shot(page, "2-wrong-password")


async def test_each_role_lands_on_its_page(clinic: Clinic, new_page: NewPage) -> None:
    receptionist = await new_page("receptionist")
    assert receptionist.url.endswith("/frontdesk.html")
    patient = await new_page("patient")
    assert patient.url.endswith("/patient.html")
    # A patient sent to the front desk goes back to their own page.
    await patient.goto("/frontdesk.html")
    await patient.wait_for_url("**/patient.html")


async def test_registration_from_a_clinic_link_then_sign_in(
    clinic: Clinic, new_context: NewContext, shot: Shot
) -> None:
    page = await (await new_context(phone=True)).new_page()
    await page.goto(f"/?clinic={clinic.clinic_id}")
    await page.wait_for_selector("#register-panel:not([hidden])")
    assert await page.locator("#register-clinic").input_value() == str(clinic.clinic_id)
    email = unique_email("selfreg")
    await page.locator("#register-name").fill("Awa Sow")
    await page.locator("#register-email").fill(email)
    await page.locator("#register-phone").fill("+221770001122")
    await page.locator("#register-password").fill(PASSWORD)
    await shot(page, "3-register")
    async with page.expect_response("**/api/v1/auth/register") as answer:
        await page.locator("#register-form button[type=submit]").click()
    assert (await answer.value).status == 202
    await page.wait_for_selector("#signin-panel:not([hidden])")
    assert await page.locator("#signin-email").input_value() == email
    await page.locator("#signin-password").fill(PASSWORD)
    await page.locator("#signin-form button[type=submit]").click()
    await page.wait_for_url("**/patient.html")
    await page.wait_for_selector("body.ready")
    assert await page.locator("#account .who").text_content() == "Awa Sow"


async def test_a_bad_clinic_code_is_explained(new_context: NewContext) -> None:
    page = await (await new_context()).new_page()
    await page.goto("/")
    await page.locator("#show-register").click()
    await page.locator("#register-clinic").fill("CLINIC-42")
    await page.locator("#register-name").fill("X")
    await page.locator("#register-email").fill(unique_email("bad"))
    await page.locator("#register-password").fill(PASSWORD)
    await page.locator("#register-form button[type=submit]").click()
    error = page.locator("#register-form .form-error")
    await error.wait_for(state="visible")
    assert "clinic code" in (await error.text_content() or "")


async def _change_password(page: Page, current: str, new: str) -> None:
    """On account.html: the password form, sent and accepted."""
    await page.locator("#pw-current").fill(current)
    await page.locator("#pw-new").fill(new)
    await page.locator("#pw-confirm").fill(new)
    async with page.expect_response("**/api/v1/me/password") as answer:
        await page.locator("#password-form button[type=submit]").click()
    assert (await answer.value).status == 204


async def test_change_password(
    clinic: Clinic, new_page: NewPage, new_context: NewContext, shot: Shot
) -> None:
    page = await new_page("patient2")
    await page.goto("/account.html")
    await page.wait_for_selector("body.ready")
    new_password = PASSWORD + "-2"
    await _change_password(page, PASSWORD, new_password)
    await page.locator(".toast-ok").wait_for()
    await shot(page, "4-password-changed")
    # The new password signs in; the old one does not.
    other = await (await new_context()).new_page()
    await other.goto("/")
    await other.locator("#signin-email").fill(clinic["patient2"].email)
    await other.locator("#signin-password").fill(new_password)
    await other.locator("#signin-form button[type=submit]").click()
    await other.wait_for_url("**/patient.html")
    # Put it back for the other tests of this module.
    await _change_password(page, new_password, PASSWORD)


async def test_the_page_speaks_french_to_a_french_browser(
    clinic: Clinic, new_context: NewContext, shot: Shot
) -> None:
    page = await (await new_context(lang="fr", phone=True)).new_page()
    await page.goto("/")
    await page.wait_for_selector("body.ready")
    assert await page.locator("html").get_attribute("lang") == "fr"
    assert await page.locator("#signin-title").text_content() == "Connexion"
    assert await page.title() == "Teleconsult — connexion"
    await shot(page, "5-french")


# --- the shared REST client (static/js/api.js) ----------------------------------------

API_MODULE = "document.querySelector('link[rel=modulepreload][href*=\"js/api.js\"]').href"


async def _call(page: Page, script: str) -> Any:
    """Run ``script`` (an async function body with ``m`` = the page's own api.js module)."""
    return await page.evaluate(f"async () => {{ const m = await import({API_MODULE}); {script} }}")


async def test_api_retries_a_get_with_backoff_but_never_a_post(new_page: NewPage) -> None:
    page = await new_page("patient")
    seen: list[str] = []

    async def flaky(route: Route) -> None:
        seen.append(route.request.method)
        if len(seen) == 1 or route.request.method == "POST":
            await route.abort("connectionreset")
        else:
            await route.continue_()

    await page.route("**/api/v1/doctors", flaky)
    count = await _call(page, "return (await m.api('/api/v1/doctors')).items.length;")
    assert count == 2 and seen == ["GET", "GET"]

    seen.clear()
    error = await _call(
        page,
        "try { await m.api('/api/v1/doctors', {method: 'POST', body: {}}); return null; }"
        " catch (e) { return [e.name, e.status, e.code]; }",
    )
    assert error == ["ApiError", 0, "network"] and seen == ["POST"]


async def test_api_times_out(new_page: NewPage) -> None:
    page = await new_page("patient")

    async def silent(route: Route) -> None:
        await asyncio.sleep(1.5)
        with contextlib.suppress(Exception):
            await route.fulfill(status=200, json={"items": []})

    await page.route("**/api/v1/doctors", silent)
    error = await _call(
        page,
        "try { await m.api('/api/v1/doctors', {timeoutMs: 300, retries: 0}); return null; }"
        " catch (e) { return [e.status, e.code]; }",
    )
    assert error == [0, "timeout"]


async def test_an_expired_token_is_refreshed_once_for_concurrent_calls(new_page: NewPage) -> None:
    page = await new_page("patient")
    refreshes: list[str] = []
    page.on(
        "request",
        lambda r: refreshes.append(r.url) if r.url.endswith("/session/refresh") else None,
    )
    expired = {"type": "x", "title": "Unauthenticated", "status": 401, "code": "token_expired"}
    answered: list[int] = []

    async def expire_first_two(route: Route) -> None:
        answered.append(1)
        if len(answered) <= 2:
            await route.fulfill(status=401, json=expired, content_type="application/problem+json")
        else:
            await route.continue_()

    await page.route("**/api/v1/me", expire_first_two)
    before = await _call(page, "return m.session().accessToken;")
    names = await _call(
        page,
        "const [a, b] = await Promise.all([m.api('/api/v1/me'), m.api('/api/v1/me')]);"
        " return [a.full_name, b.full_name];",
    )
    assert names == ["Grace Mwangi", "Grace Mwangi"]
    assert len(refreshes) == 1, "one refresh shared by both calls"
    # Still signed in with a fresh token (a JWT minted in the same second may equal the old).
    assert await _call(page, "return m.session().user.full_name;") == "Grace Mwangi"
    assert before


# --- the vendored crypto, as the pages load it -----------------------------------------


async def test_vendored_hsalsa20_and_x25519_match_libsodium(new_context: NewContext) -> None:
    """crypto_box_beforenm(pk, sk) = hsalsa20(x25519(sk, pk)), the sealed box's key, built
    from the vendored bundles in Chromium, equals libsodium's (PyNaCl)."""
    alice, bob = PrivateKey.generate(), PrivateKey.generate()
    expected = crypto_box_beforenm(bytes(bob.public_key), bytes(alice))
    page = await (await new_context()).new_page()
    await page.goto("/")
    await page.wait_for_selector("body.ready")
    got = await page.evaluate(
        """async ([sk, pk]) => {
            const { hsalsa20 } = await import("/static/vendor/noble-ciphers.js");
            const { x25519 } = await import("/static/vendor/noble-curves.js");
            const shared = x25519.getSharedSecret(new Uint8Array(sk), new Uint8Array(pk));
            return Array.from(hsalsa20(shared));
        }""",
        [list(bytes(alice)), list(bytes(bob.public_key))],
    )
    assert bytes(got) == expected
