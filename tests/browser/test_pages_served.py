"""How the server serves the pages: strict CSP, no inline script or style, gzip, cache
headers, one build per page load, nothing from another origin; the API unchanged."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from teleconsult.pages.routes import STATIC_DIR

Client = TestClient[Any, Any]
PAGES = sorted(p.name for p in STATIC_DIR.glob("*.html"))
OWN_PAGES = ["index.html", "account.html", "patient.html", "frontdesk.html"]
TEXT_FILES = sorted(
    p
    for p in STATIC_DIR.rglob("*")
    if p.is_file() and p.suffix in {".html", ".js", ".css", ".json"} and "vendor" not in p.parts
)


def _directives(policy: str) -> dict[str, list[str]]:
    out = {}
    for part in policy.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def test_our_pages_exist() -> None:
    assert set(OWN_PAGES) <= set(PAGES)


@pytest.mark.parametrize("path", ["/", "/patient.html", "/frontdesk.html", "/account.html"])
async def test_page_has_a_strict_content_security_policy(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.content_type == "text/html"
    policy = _directives(resp.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    host = f"{resp.url.host}:{resp.url.port}"
    assert policy["connect-src"] == ["'self'", f"ws://{host}"]
    assert "unsafe-inline" not in resp.headers["Content-Security-Policy"]
    assert "unsafe-eval" not in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Cache-Control"] == "no-cache"


async def test_a_forged_host_header_adds_nothing_to_the_policy(client: Client) -> None:
    resp = await client.get("/", headers={"Host": "evil.test; script-src *"})
    policy = resp.headers["Content-Security-Policy"]
    assert "evil" not in policy and "*" not in policy


@pytest.mark.parametrize("name", PAGES)
def test_no_inline_script_style_or_handler_in_html(name: str) -> None:
    html = (STATIC_DIR / name).read_text(encoding="utf-8")
    for tag in re.findall(r"<script\b[^>]*>", html, flags=re.I):
        assert "src=" in tag and 'type="module"' in tag, tag
    assert re.findall(r"<script\b[^>]*>\s*[^<\s]", html) == [], "inline script"
    assert "<style" not in html.lower(), "inline stylesheet"
    assert re.findall(r"\sstyle\s*=", html, flags=re.I) == [], "style attribute"
    assert re.findall(r"\son[a-z]+\s*=", html, flags=re.I) == [], "inline event handler"
    assert "javascript:" not in html.lower()


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: str(p.relative_to(STATIC_DIR)))
def test_no_external_url_in_our_files(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    # No CDN, no web font, no tracker: every script, style and fetch is this server's.
    assert re.findall(r"https?://|//[a-z0-9-]+\.[a-z]", text, flags=re.I) == [], path
    if path.suffix == ".js":
        # Tokens live in memory only; no HTML is built from strings.
        assert re.findall(r"\b(?:localStorage|sessionStorage)\s*[.\[]", text) == [], path
        assert re.findall(r"\.(?:innerHTML|outerHTML)\s*=|\beval\(|new Function\(", text) == []


@pytest.mark.parametrize("path", sorted((STATIC_DIR / "vendor").glob("*.js")), ids=lambda p: p.name)
def test_vendored_bundles_load_nothing_from_elsewhere(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "fonts.googleapis" not in text and "cdn." not in text


async def test_static_files_are_gzipped_and_cached_by_build(client: Client) -> None:
    page = await client.get("/patient.html", headers={"Accept-Encoding": "gzip"})
    html = await page.text()
    assert page.headers["Content-Encoding"] == "gzip"
    assert page.headers["Vary"] == "Accept-Encoding"
    urls = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
    assert urls, "the page names its script and stylesheet"
    builds = {u.split("/")[2] for u in urls}
    assert len(builds) == 1 and re.fullmatch(r"[0-9a-f]{12}", builds.pop())
    for url in urls:
        resp = await client.get(url, headers={"Accept-Encoding": "gzip, br"}, auto_decompress=False)
        assert resp.status == 200, url
        assert resp.headers["Content-Encoding"] == "gzip", url
        assert resp.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        raw = await resp.read()
        plain = (STATIC_DIR / url.split("/", 3)[3]).read_bytes()
        assert gzip.decompress(raw) == plain
        assert len(raw) < len(plain)


async def test_unversioned_or_old_build_urls_are_revalidated(client: Client) -> None:
    plain = await client.get("/static/js/api.js")
    assert plain.status == 200
    assert plain.headers["Cache-Control"] == "no-cache"
    assert plain.content_type == "text/javascript"
    old = await client.get("/static/000000000000/js/api.js")
    assert old.status == 200 and old.headers["Cache-Control"] == "no-cache"
    again = await client.get("/static/js/api.js", headers={"If-None-Match": plain.headers["ETag"]})
    assert again.status == 304


async def test_a_client_without_gzip_gets_plain_bytes(client: Client) -> None:
    resp = await client.get(
        "/static/js/api.js", headers={"Accept-Encoding": "identity"}, auto_decompress=False
    )
    assert "Content-Encoding" not in resp.headers
    assert await resp.read() == (STATIC_DIR / "js" / "api.js").read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        "/nope.html",
        "/static/js/nope.js",
        "/static/../routes.py",
        "/static/%2e%2e/routes.py",
        "/static/index.html",
        "/Patient.html",
    ],
)
async def test_unknown_or_escaping_paths_are_404(client: Client, path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 404


async def test_the_api_answers_as_before(client: Client) -> None:
    resp = await client.get("/api/v1/nope")
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"
    me = await client.get("/api/v1/me")
    assert me.status == 401
    assert me.headers["Cache-Control"] == "no-store"
    assert me.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"


# --- the string catalogues --------------------------------------------------------------

I18N = STATIC_DIR / "i18n"
ALL_PAGE_FILES = sorted(
    p
    for p in STATIC_DIR.rglob("*")
    if p.is_file() and p.suffix in {".html", ".js"} and "vendor" not in p.parts
)


def _catalogue(lang: str) -> dict[str, str]:
    data = json.loads((I18N / f"{lang}.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_french_and_english_have_the_same_keys() -> None:
    en, fr = _catalogue("en"), _catalogue("fr")
    assert sorted(set(en) ^ set(fr)) == []
    for key in en:
        assert re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+", key), key
        assert en[key].strip() and fr[key].strip(), key
        # The same placeholders in both languages.
        assert set(re.findall(r"\{(\w+)\}", en[key])) == set(re.findall(r"\{(\w+)\}", fr[key])), key


def test_every_key_the_pages_use_is_in_the_catalogues() -> None:
    keys = set(_catalogue("en"))
    missing = []
    for path in ALL_PAGE_FILES:
        text = path.read_text(encoding="utf-8")
        used = re.findall(r'data-i18n(?:-placeholder|-aria-label|-title)?="([^"]+)"', text)
        used += re.findall(r'\bt\(\s*"([a-z0-9_.]+)"', text)
        missing += [f"{path.name}: {key}" for key in used if key not in keys]
        # t(`service.${kind}`): some key must start with the template's fixed part.
        for prefix in re.findall(r"\bt\(\s*`([a-z0-9_.]+)\$\{", text):
            if not any(k.startswith(prefix) for k in keys):
                missing.append(f"{path.name}: {prefix}*")
    assert missing == []
