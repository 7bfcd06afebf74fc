"""Serving the web pages: ``/``, ``/<page>.html``, ``/join/<room id>`` and ``/static/...``.

Every file under ``static/`` is read once when the application is built, gzipped
once, and answered from memory (the pages are small; a 2G client gets the
compressed bytes, a client that does not accept gzip the plain ones).

Caching: the pages' HTML is rewritten so that ``/static/`` URLs carry the build's
content hash (``/static/<hash>/js/api.js``). Files fetched under the current hash
are immutable for a year; relative ES-module imports inherit the prefix, so a
whole page and its modules always come from one build. The HTML itself is
``no-cache`` (revalidated with its ETag, a 304 on a slow link costs a few hundred
bytes). A request under another hash (a page from before a restart) or none gets
the current file with ``no-cache``.

The pages' Content-Security-Policy is strict (docs/pages.md): only this origin's
scripts, styles, images and connections (its WebSocket too), nothing inline, no
plugins, no ``<base>``, not framed. ``api.headers`` keeps a policy a response sets.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/static/"
# Pages are the HTML files directly under static/; the sign-in page is also "/".
HOME_PAGE = "index.html"
_PAGE_NAME = re.compile(r"^[a-z][a-z0-9-]{0,40}$")
# --- join links (issue 12 follow-up): /join/<room id> (scheduling's join_url) ---
JOIN_PAGE = "join.html"
_ROOM_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")  # store.new_room_id's alphabet
_VERSIONED = re.compile(r"^(?P<build>[0-9a-f]{12})/(?P<path>.+)$")
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
_URL_ATTR = re.compile(r'(\s(?:src|href)=")/static/')
# Only text compresses; the vendored bundles are text too.
_COMPRESSIBLE = {".html", ".js", ".css", ".json", ".svg", ".txt", ".map"}
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".json": "application/json",
    ".html": "text/html",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".wav": "audio/wav",
    ".ogg": "audio/ogg",
}
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"


def sfu_origins(url: str | None) -> tuple[str, ...]:
    """What a page must reach of an SFU it joins itself (LiveKit): its WebSocket origin
    (``/rtc``) and its HTTP origin (livekit-client asks ``/rtc/validate`` why a join
    failed), whichever of the two schemes ``url`` is given in."""
    if not url:
        return ()
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    if not sep or not _HOST.match(host):
        return ()
    secure = scheme in ("https", "wss")
    return (f"{'wss' if secure else 'ws'}://{host}", f"{'https' if secure else 'http'}://{host}")


def page_policy(request: web.Request) -> str:
    """The pages' CSP. ``connect-src`` names this origin's WebSocket scheme explicitly
    (``'self'`` covers it in CSP 3 browsers; older ones need it spelled out), and the
    origins of an SFU the pages join directly (``install``'s ``connect``)."""
    ws = "wss" if request.secure else "ws"
    own = f" {ws}://{request.host}" if _HOST.match(request.host) else ""
    own += "".join(f" {origin}" for origin in request.app.get(CONNECT, ()))
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        f"media-src 'self' blob:; connect-src 'self'{own}; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


class PageAssets:
    """The static tree in memory, with the build hash the pages' URLs carry."""

    def __init__(self, root: Path = STATIC_DIR) -> None:
        files = sorted(p for p in root.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        raw: dict[str, bytes] = {}
        for path in files:
            rel = path.relative_to(root).as_posix()
            if rel.startswith(".") or "/." in rel:
                continue
            data = path.read_bytes()
            raw[rel] = data
            digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
        self.build = digest.hexdigest()[:12]
        self.files: dict[str, Asset] = {}
        for rel, data in raw.items():
            if rel.endswith(".html") and "/" not in rel:
                data = _URL_ATTR.sub(rf"\1/static/{self.build}/", data.decode()).encode()
            self.files[rel] = _asset(rel, data)

    def page(self, name: str) -> Asset | None:
        return self.files.get(name) if "/" not in name and name.endswith(".html") else None

    def static(self, path: str) -> tuple[Asset | None, bool]:
        """The file at ``path`` (with or without a build prefix) and whether it is this
        build's (cacheable for ever)."""
        match = _VERSIONED.match(path)
        current = False
        if match is not None:
            current = match["build"] == self.build
            path = match["path"]
        if path.endswith(".html") and "/" not in path:
            return None, False  # pages are served at /<name>.html, with their policy
        return self.files.get(path), current


def _asset(rel: str, data: bytes) -> Asset:
    suffix = Path(rel).suffix
    content_type = _TYPES.get(suffix) or mimetypes.guess_type(rel)[0] or "application/octet-stream"
    gzipped = None
    if suffix in _COMPRESSIBLE and len(data) > 256:
        gzipped = gzip.compress(data, compresslevel=9, mtime=0)
    etag = '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
    return Asset(data, gzipped, content_type, etag)


ASSETS = web.AppKey("page_assets", PageAssets)
CONNECT = web.AppKey("page_connect_origins", tuple)


def _respond(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    vary = "Accept-Encoding"
    if request.headers.get("If-None-Match") == asset.etag:
        resp = web.Response(status=304)
    elif asset.gzipped is not None and "gzip" in request.headers.get("Accept-Encoding", ""):
        resp = web.Response(body=asset.gzipped, content_type=asset.content_type)
        resp.headers["Content-Encoding"] = "gzip"
    else:
        resp = web.Response(body=asset.body, content_type=asset.content_type)
    if asset.content_type.startswith("text/") or asset.content_type == "application/json":
        if resp.status == 200:
            resp.charset = "utf-8"
    resp.headers["ETag"] = asset.etag
    resp.headers["Cache-Control"] = cache_control
    resp.headers["Vary"] = vary
    return resp


async def home(request: web.Request) -> web.Response:
    return await _page(request, HOME_PAGE)


async def page(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if not _PAGE_NAME.match(name):
        raise web.HTTPNotFound()
    return await _page(request, f"{name}.html")


async def _page(request: web.Request, name: str) -> web.Response:
    asset = request.app[ASSETS].page(name)
    if asset is None:
        raise web.HTTPNotFound()
    resp = _respond(request, asset, REVALIDATE)
    resp.headers["Content-Security-Policy"] = page_policy(request)
    return resp


async def join(request: web.Request) -> web.Response:
    """The join link's page. The same page for every well-formed id, whether or not the
    room exists: it signs the visitor in and asks the API (``getRoomAppointment``),
    which answers only those who may read the appointment."""
    if not _ROOM_ID.match(request.match_info["room_id"]):
        raise web.HTTPNotFound()
    return await _page(request, JOIN_PAGE)


async def static(request: web.Request) -> web.Response:
    path = request.match_info["path"]
    if ".." in path.split("/") or "\\" in path:
        raise web.HTTPNotFound()
    asset, current = request.app[ASSETS].static(path)
    if asset is None:
        raise web.HTTPNotFound()
    return _respond(request, asset, IMMUTABLE if current else REVALIDATE)


def install(
    app: web.Application, root: Path = STATIC_DIR, *, connect: tuple[str, ...] = ()
) -> None:
    """Serve the pages on ``app`` (after the API's routes, which keep their paths);
    ``connect``: more origins the pages may connect to (``sfu_origins``)."""
    app[ASSETS] = PageAssets(root)
    app[CONNECT] = connect
    app.router.add_get("/", home, name="page_home")
    app.router.add_get("/{name}.html", page, name="page")
    app.router.add_get("/join/{room_id}", join, name="page_join")
    app.router.add_get(STATIC_PREFIX + "{path:.+}", static, name="page_static")
