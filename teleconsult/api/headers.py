"""Security headers on every answer, engine.io's included.

A response hook (``app.on_response_prepare``) rather than a middleware: it runs
for every response the application prepares, including those of engine.io on
``/socket.io/`` (which the middlewares skip, see ``realtime.server.outside_realtime``)
and WebSocket upgrades, and it keeps no frame alive per connection.

- ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and
  ``X-Frame-Options: DENY`` everywhere.
- ``Content-Security-Policy``: a page (``text/html``) gets a strict policy (only
  its own origin's scripts, no inline script, no plugins, not framed); anything
  else gets ``default-src 'none'; frame-ancestors 'none'``, since a JSON answer
  opened as a document should run nothing. A response that sets its own policy
  keeps it.
- ``Cache-Control: no-store`` on the API, FHIR and engine.io answers, which carry
  patient data (a shared or browser cache must not keep them); it overrides a
  handler's own value.
- ``Server: teleconsult`` instead of aiohttp's ``Python/3.x aiohttp/3.x`` banner
  (aiohttp adds its banner unless the header is set). aiohttp answers a request it
  cannot parse (a bad request line, say) below the application, where no hook
  runs: :func:`hide_server_banner` replaces the banner for those too.
"""

from __future__ import annotations

from aiohttp import web, web_response

SERVER_NAME = "teleconsult"
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
OTHER_POLICY = "default-src 'none'; frame-ancestors 'none'"
NO_STORE_PREFIXES = ("/api/", "/fhir/", "/socket.io/")

_ALWAYS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """For ``app.on_response_prepare``: set the headers above on ``response``."""
    headers = response.headers
    headers.update(_ALWAYS)
    headers["Server"] = SERVER_NAME
    if "Content-Security-Policy" not in headers:
        page = response.content_type == "text/html"
        headers["Content-Security-Policy"] = PAGE_POLICY if page else OTHER_POLICY
    if request.path.startswith(NO_STORE_PREFIXES):
        headers["Cache-Control"] = "no-store"


def install(app: web.Application) -> None:
    app.on_response_prepare.append(security_headers)


def hide_server_banner() -> None:
    """Make aiohttp's default ``Server`` header (its fallback for every answer, those
    to unparseable requests included) name no software version. Process-wide: the
    server's command line calls it once at start."""
    web_response.SERVER_SOFTWARE = SERVER_NAME
