"""Weak networks: the patient's pages weigh at most 200 KB compressed on first load.

Measured in Chromium with an empty cache: the bytes each response took on the wire
(Chrome's encodedDataLength: headers and gzipped body), for every request the page
makes until it is ready and the network is idle. The figure is printed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import Clinic, NewContext
from tests.world import PASSWORD

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

LIMIT = 200 * 1024
# The patient's pages, each loaded cold. (The consultation room, room.html, is measured
# with its own test: it needs an appointment.)
PATIENT_PAGES = ["/", "/patient.html", "/account.html"]
PATIENT_PAGES += ["/pay.html", "/receipt.html"]  # --- payments (issue 15) ---


async def _first_load(context: Any, path: str) -> tuple[int, list[tuple[str, int, str]]]:
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    await cdp.send("Network.enable")
    await cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    urls: dict[str, str] = {}
    encodings: dict[str, str] = {}
    sizes: dict[str, int] = {}

    def received(event: dict[str, Any]) -> None:
        urls[event["requestId"]] = event["response"]["url"]
        headers = {k.lower(): v for k, v in event["response"]["headers"].items()}
        encodings[event["requestId"]] = headers.get("content-encoding", "")

    def finished(event: dict[str, Any]) -> None:
        sizes[event["requestId"]] = int(event["encodedDataLength"])

    cdp.on("Network.responseReceived", received)
    cdp.on("Network.loadingFinished", finished)
    await page.goto(path)
    await page.wait_for_selector("body.ready")
    await page.wait_for_load_state("networkidle")
    rows = sorted(
        ((urls.get(r, r), n, encodings.get(r, "")) for r, n in sizes.items()), key=lambda x: -x[1]
    )
    return sum(n for _, n, _ in rows), rows


@pytest.mark.parametrize("path", PATIENT_PAGES)
async def test_patient_page_first_load_is_at_most_200_kb(
    clinic: Clinic, new_context: NewContext, path: str
) -> None:
    context = await new_context(phone=True)
    if path != "/":  # signed in as the patient: the cookie the sign-in form would get
        resp = await context.request.post(
            "/api/v1/auth/login",
            data={"email": clinic["patient"].email, "password": PASSWORD},
            headers={"X-Session-Transport": "cookie"},
        )
        assert resp.ok
    total, rows = await _first_load(context, path)
    print(f"\npage weight {path}: {total} bytes ({total / 1024:.1f} KB) in {len(rows)} responses")
    for url, size, encoding in rows:
        print(f"  {size:>7}  {encoding or '-':5}  {url.replace(clinic.base_url, '')}")
    assert len(rows) >= 4, "the page, its stylesheet, scripts and strings were all counted"
    scripts = [r for r in rows if r[0].endswith(".js")]
    assert scripts and all(enc == "gzip" for _, _, enc in scripts)
    assert total <= LIMIT, f"{path} weighs {total} bytes on first load (limit {LIMIT})"
