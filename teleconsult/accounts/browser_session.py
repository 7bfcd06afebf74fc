"""The browser's session transport: the refresh token in an HttpOnly cookie.

A page keeps its access token in memory only (never in localStorage, where any
script injected into the origin could read it). The refresh token that outlives a
reload travels in the ``tc_refresh`` cookie: HttpOnly (scripts cannot read it),
SameSite=Strict (no other site's page sends it), scoped to ``/api/v1/auth/`` (no
other request carries it) and Secure when the server is reached over https.

A client asks for this transport with the header ``X-Session-Transport: cookie`` on
sign-in: the answer then holds no refresh token (nor the device token, which is
in the ``tc_device`` cookie already) and sets the cookie. The cookie is exchanged at
``POST /api/v1/auth/session/refresh``, which requires the same header: a custom
header cannot be sent by another origin's form or image, and another origin's
script would need a CORS pre-flight this server never grants (CSRF defence on top
of SameSite). A request with an ``Origin`` of another site is refused too. The JSON
token API (``/auth/login``, ``/auth/refresh`` with a body) is unchanged.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from teleconsult.core.errors import ErrorCode, Forbidden, Unauthenticated

TRANSPORT_HEADER = "X-Session-Transport"
COOKIE_TRANSPORT = "cookie"
REFRESH_COOKIE = "tc_refresh"
REFRESH_COOKIE_PATH = "/api/v1/auth/"
# Whether cookies get the Secure attribute although the request came over plain http
# (a TLS-terminating proxy in front: PUBLIC_URL is https). Set by the composition root.
SECURE_COOKIES = web.AppKey("secure_cookies", bool)


def wants_cookie(request: web.Request) -> bool:
    return request.headers.get(TRANSPORT_HEADER, "").strip().lower() == COOKIE_TRANSPORT


def check_cookie_request(request: web.Request) -> str:
    """The refresh token of a cookie-transport request, after the CSRF checks."""
    if not wants_cookie(request):
        raise Forbidden(f"send the header {TRANSPORT_HEADER}: {COOKIE_TRANSPORT}")
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        parts = urlsplit(origin)
        if parts.netloc.lower() != request.host.lower():
            raise Forbidden("cross-origin request refused")
    elif origin == "null":
        raise Forbidden("cross-origin request refused")
    token = request.cookies.get(REFRESH_COOKIE, "")
    if not token or len(token) > 256:
        raise Unauthenticated("no session cookie", code=ErrorCode.REFRESH_INVALID)
    return token


def _secure(request: web.Request) -> bool:
    return request.secure or bool(request.app.get(SECURE_COOKIES, False))


def set_refresh_cookie(
    request: web.Request, resp: web.StreamResponse, token: str, ttl: int
) -> None:
    resp.set_cookie(
        REFRESH_COOKIE,
        token,
        max_age=ttl,
        path=REFRESH_COOKIE_PATH,
        secure=_secure(request),
        httponly=True,
        samesite="Strict",
    )


def clear_refresh_cookie(request: web.Request, resp: web.StreamResponse) -> None:
    resp.del_cookie(
        REFRESH_COOKIE,
        path=REFRESH_COOKIE_PATH,
        secure=_secure(request),
        httponly=True,
        samesite="Strict",
    )
