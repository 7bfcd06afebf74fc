"""Weak networks: the consultation room (a patient's page) weighs at most 200 KB
compressed on first load, measured like the other patient pages (test_page_weight.py):
every response's bytes on the wire in Chromium with an empty cache, until the page is
ready (the check view, its chat connected) and the network is idle. The figure is printed.
"""

from __future__ import annotations

import pytest
from playwright.async_api import expect

from tests.browser.conftest import Clinic, NewContext
from tests.browser.roomkit import SERVER_ENV, book_now
from tests.browser.test_page_weight import LIMIT, _first_load
from tests.world import PASSWORD

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]
__all__ = ["SERVER_ENV"]


async def test_the_room_first_load_is_at_most_200_kb(
    clinic: Clinic, new_context: NewContext
) -> None:
    appointment = await book_now(clinic, clinic["patient"], clinic["doctor"])
    context = await new_context(phone=True)
    resp = await context.request.post(
        "/api/v1/auth/login",
        data={"email": clinic["patient"].email, "password": PASSWORD},
        headers={"X-Session-Transport": "cookie"},
    )
    assert resp.ok
    path = f"/room.html?appointment={appointment['id']}"
    total, rows = await _first_load(context, path)
    page = context.pages[-1]
    await expect(page.locator("#check")).to_be_visible()
    print(
        f"\npage weight /room.html: {total} bytes ({total / 1024:.1f} KB) in {len(rows)} responses"
    )
    for url, size, encoding in rows:
        print(f"  {size:>7}  {encoding or '-':5}  {url.replace(clinic.base_url, '')}")
    scripts = [r for r in rows if r[0].endswith(".js")]
    assert any("/js/room/" in url for url, _, _ in scripts), "the room's own modules were counted"
    assert any("noble-ciphers" in url for url, _, _ in scripts), "the chat's crypto was counted"
    assert all(enc == "gzip" for _, _, enc in scripts)
    assert total <= LIMIT, f"room.html weighs {total} bytes on first load (limit {LIMIT})"
