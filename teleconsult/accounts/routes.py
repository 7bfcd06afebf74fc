"""HTTP transport for accounts: parse, call the service, serialise."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints

from teleconsult.accounts import browser_session, device_tokens
from teleconsult.accounts.records import ClinicRecord, IssuedTokens, UserRecord
from teleconsult.accounts.service import AccountService
from teleconsult.api.models import (
    Body,
    Email,
    IsoDate,
    Limit,
    Name,
    PageQuery,
    Password,
    Patch,
    Phone,
)
from teleconsult.api.pagination import cut_page, decode_cursor
from teleconsult.api.registry import Api, ApiRequest
from teleconsult.core.identity import Role
from teleconsult.core.policy import Action

ACCOUNTS = web.AppKey("accounts", AccountService)
api = Api()

# The browser's device cookie: HttpOnly, Secure, SameSite=Strict, sent to the
# sign-in only. It holds the device tokens of up to five accounts, dot-separated.
DEVICE_COOKIE = "tc_device"
DEVICE_COOKIE_PATH = "/api/v1/auth"


# --- models ---------------------------------------------------------------------------


class User(BaseModel):
    id: UUID
    clinic_id: UUID
    email: str
    role: Role
    full_name: str
    phone: str | None
    status: Literal["active", "disabled"]
    created_at: datetime

    @classmethod
    def of(cls, user: UserRecord) -> User:
        return cls(
            id=user.id,
            clinic_id=user.clinic_id,
            email=user.email,
            role=user.role,
            full_name=user.full_name,
            phone=user.phone,
            status="active" if user.status == "active" else "disabled",
            created_at=user.created_at,
        )


class UserPage(BaseModel):
    items: list[User]
    next_cursor: str | None


class Tokens(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    user: User

    @classmethod
    def of(cls, issued: IssuedTokens) -> Tokens:
        return cls(
            access_token=issued.access_token,
            refresh_token=issued.refresh_token,
            expires_in=issued.expires_in,
            user=User.of(issued.user),
        )


class SignIn(Tokens):
    device_token: Annotated[
        str,
        Field(
            description="This device's token for the account: send it back as `device_token` "
            "at the next sign-in (browsers get it as the `tc_device` cookie too)."
        ),
    ]


# --- browser session transport (issue 12, part A; accounts/browser_session.py) ---


class BrowserTokens(BaseModel):
    """A sign-in or refresh in the browser's cookie transport: no refresh or device
    token in the body, they travel in HttpOnly cookies."""

    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    user: User
    session_transport: Literal["cookie"] = "cookie"

    @classmethod
    def of(cls, issued: IssuedTokens) -> BrowserTokens:
        return cls(
            access_token=issued.access_token,
            expires_in=issued.expires_in,
            user=User.of(issued.user),
        )


# --- end browser session transport ---


class Registration(BaseModel):
    status: Literal["accepted"] = "accepted"
    detail: str = "if the address can be registered, sign in with it and the password you chose"


class Clinic(BaseModel):
    id: UUID
    name: str
    timezone: str
    created_at: datetime

    @classmethod
    def of(cls, clinic: ClinicRecord) -> Clinic:
        return cls(
            id=clinic.id, name=clinic.name, timezone=clinic.timezone, created_at=clinic.created_at
        )


class LoginBody(Body):
    email: Email
    # Not held to today's password rules: an older password must still sign in.
    password: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    # From an earlier sign-in's answer, for apps without a cookie jar.
    device_token: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None


class RefreshBody(Body):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=256)]


class RegisterBody(Body):
    clinic_id: UUID
    email: Email
    password: Password
    full_name: Name
    phone: Phone | None = None
    date_of_birth: IsoDate | None = None


class MePatch(Patch):
    nullable_fields = {"phone"}
    full_name: Name | None = None
    phone: Phone | None = None


class PasswordBody(Body):
    current_password: str
    new_password: Password


class ClinicPatch(Patch):
    name: Name | None = None
    timezone: str | None = None


class CreateUserBody(Body):
    email: Email
    password: Password
    full_name: Name
    role: Role
    phone: Phone | None = None


class UserPatch(Patch):
    role: Role | None = None
    status: Literal["active", "disabled"] | None = None
    full_name: Name | None = None


class UserQuery(PageQuery):
    role: Role | None = None
    limit: Limit = 50


# --- handlers -------------------------------------------------------------------------


def _svc(req: ApiRequest) -> AccountService:
    return req.request.app[ACCOUNTS]


@api.op(
    "POST",
    "/api/v1/auth/login",
    operation_id="login",
    summary="Sign in with e-mail and password",
    tag="auth",
    action=None,
    body=LoginBody,
    response=SignIn,
    errors=(401, 429),
)
async def login(req: ApiRequest) -> web.Response:
    """Returns a short-lived access token, a rotating refresh token and a device token.

    Rate-limited per client address, and wrong passwords per device: a client that
    sends the device token of an earlier sign-in to this account (`device_token`,
    or the `tc_device` cookie a browser got) has attempts of its own, so someone
    guessing elsewhere cannot lock it out; sign-ins without one share the account's
    few (429 with Retry-After).

    With the header `X-Session-Transport: cookie` (the web pages) the answer is a
    `BrowserTokens`: no `refresh_token` nor `device_token` in the body; the refresh
    token is set as the HttpOnly, SameSite=Strict cookie `tc_refresh` (path
    `/api/v1/auth/`), exchanged at `POST /api/v1/auth/session/refresh`."""
    body = req.body(LoginBody)
    cookie = device_tokens.split_cookie(req.request.cookies.get(DEVICE_COOKIE))
    presented = ([body.device_token] if body.device_token else []) + cookie
    issued = await _svc(req).login(
        body.email, body.password, ip=req.ip, device_tokens_presented=presented
    )
    assert issued.device_token is not None
    browser = browser_session.wants_cookie(req.request)
    answer: BaseModel = (
        BrowserTokens.of(issued)
        if browser
        else SignIn(**Tokens.of(issued).model_dump(), device_token=issued.device_token)
    )
    resp = web.Response(body=answer.model_dump_json(), content_type="application/json")
    if browser:  # issue 12, part A: the refresh token goes in its HttpOnly cookie
        browser_session.set_refresh_cookie(
            req.request, resp, issued.refresh_token, _svc(req).refresh_token_ttl
        )
    resp.set_cookie(
        DEVICE_COOKIE,
        device_tokens.join_cookie(issued.device_token, cookie, drop=issued.replaced_device_token),
        max_age=req.request.app[ACCOUNTS].device_token_ttl,
        path=DEVICE_COOKIE_PATH,
        secure=True,
        httponly=True,
        samesite="Strict",
    )
    return resp


@api.op(
    "POST",
    "/api/v1/auth/refresh",
    operation_id="refreshTokens",
    summary="Exchange a refresh token for a new token pair",
    tag="auth",
    action=None,
    body=RefreshBody,
    response=Tokens,
    errors=(401,),
)
async def refresh(req: ApiRequest) -> Tokens:
    """Each refresh token works once. Presenting a used one revokes the whole session
    (code `refresh_reused`): someone else may hold a copy."""
    body = req.body(RefreshBody)
    return Tokens.of(await _svc(req).refresh(body.refresh_token, ip=req.ip))


@api.op(
    "POST",
    "/api/v1/auth/session/refresh",
    operation_id="refreshBrowserSession",
    summary="Exchange the browser's refresh cookie for an access token (cookie transport)",
    tag="auth",
    action=None,
    response=BrowserTokens,
    errors=(401, 403),
)
async def refresh_browser_session(req: ApiRequest) -> web.Response:
    """For the web pages (issue 12, part A): reads the `tc_refresh` cookie a sign-in
    with `X-Session-Transport: cookie` set, rotates it (the same single-use rule as
    `/auth/refresh`) and answers a fresh access token. Requires the header
    `X-Session-Transport: cookie` and no foreign `Origin` (403), a CSRF defence on top
    of SameSite=Strict; no or a spent cookie is a 401 (`refresh_invalid`,
    `refresh_reused`)."""
    token = browser_session.check_cookie_request(req.request)
    issued = await _svc(req).refresh(token, ip=req.ip)
    resp = web.Response(
        body=BrowserTokens.of(issued).model_dump_json(), content_type="application/json"
    )
    browser_session.set_refresh_cookie(
        req.request, resp, issued.refresh_token, _svc(req).refresh_token_ttl
    )
    return resp


@api.op(
    "POST",
    "/api/v1/auth/register",
    operation_id="registerPatient",
    summary="Register as a patient of a clinic",
    tag="auth",
    action=None,
    body=RegisterBody,
    response=Registration,
    status=202,
    errors=(404, 429),
)
async def register(req: ApiRequest) -> Registration:
    """The answer is the same whether or not the address is already registered, here
    or in another clinic, so registering cannot tell anyone who has an account; the
    new patient then signs in. Limited per client address (429 with Retry-After)."""
    body = req.body(RegisterBody)
    await _svc(req).register_patient(
        clinic_id=body.clinic_id,
        email=body.email,
        password=body.password,
        full_name=body.full_name,
        phone=body.phone,
        date_of_birth=body.date_of_birth,
        ip=req.ip,
    )
    return Registration()


@api.op(
    "POST",
    "/api/v1/auth/logout",
    operation_id="logout",
    summary="End this session (its refresh token family)",
    tag="auth",
    action=Action.SESSION_END,
    status=204,
)
async def logout(req: ApiRequest) -> web.Response:
    """With `X-Session-Transport: cookie`, the answer also clears the `tc_refresh` cookie."""
    await _svc(req).logout(req.principal, ip=req.ip)
    resp = web.Response(status=204)
    if browser_session.wants_cookie(req.request):  # issue 12, part A
        browser_session.clear_refresh_cookie(req.request, resp)
    return resp


@api.op(
    "GET",
    "/api/v1/me",
    operation_id="getMe",
    summary="The signed-in user",
    tag="me",
    action=Action.ME_READ,
    response=User,
)
async def get_me(req: ApiRequest) -> User:
    return User.of(await _svc(req).me(req.principal))


@api.op(
    "PATCH",
    "/api/v1/me",
    operation_id="updateMe",
    summary="Change one's own name or phone",
    tag="me",
    action=Action.ME_UPDATE,
    body=MePatch,
    response=User,
)
async def update_me(req: ApiRequest) -> User:
    changes = req.body(MePatch).changes()
    return User.of(await _svc(req).update_me(req.principal, changes, ip=req.ip))


@api.op(
    "POST",
    "/api/v1/me/password",
    operation_id="changePassword",
    summary="Change one's password (ends one's other sessions)",
    tag="me",
    action=Action.ME_UPDATE,
    body=PasswordBody,
    status=204,
    errors=(429,),
)
async def change_password(req: ApiRequest) -> None:
    """Wrong `current_password` guesses are limited per account (429 with Retry-After)."""
    body = req.body(PasswordBody)
    await _svc(req).change_password(
        req.principal, body.current_password, body.new_password, ip=req.ip
    )


@api.op(
    "GET",
    "/api/v1/clinics/{clinic_id}",
    operation_id="getClinic",
    summary="A clinic the caller belongs to",
    tag="clinics",
    action=Action.CLINIC_READ,
    response=Clinic,
)
async def get_clinic(req: ApiRequest) -> Clinic:
    return Clinic.of(await _svc(req).get_clinic(req.principal, req.params["clinic_id"]))


@api.op(
    "PATCH",
    "/api/v1/clinics/{clinic_id}",
    operation_id="updateClinic",
    summary="Rename a clinic or change its time zone",
    tag="clinics",
    action=Action.CLINIC_UPDATE,
    body=ClinicPatch,
    response=Clinic,
)
async def update_clinic(req: ApiRequest) -> Clinic:
    changes = req.body(ClinicPatch).changes()
    clinic = await _svc(req).update_clinic(
        req.principal, req.params["clinic_id"], changes, ip=req.ip
    )
    return Clinic.of(clinic)


@api.op(
    "GET",
    "/api/v1/users",
    operation_id="listUsers",
    summary="Users of the caller's clinic",
    tag="users",
    action=Action.USER_LIST,
    query=UserQuery,
    response=UserPage,
)
async def list_users(req: ApiRequest) -> UserPage:
    query = req.query(UserQuery)
    roles = [query.role] if query.role else list(Role)
    users = await _svc(req).list_users(
        req.principal,
        roles=roles,
        after=decode_cursor(query.cursor),
        limit=query.limit,
        ip=req.ip,
    )
    page, cursor = cut_page(users, query.limit)
    return UserPage(items=[User.of(u) for u in page], next_cursor=cursor)


@api.op(
    "POST",
    "/api/v1/users",
    operation_id="createUser",
    summary="Create a user (staff or patient) in the caller's clinic",
    tag="users",
    action=Action.USER_CREATE,
    body=CreateUserBody,
    response=User,
    status=201,
    errors=(409,),
)
async def create_user(req: ApiRequest) -> User:
    body = req.body(CreateUserBody)
    user = await _svc(req).create_user(
        req.principal,
        email=body.email,
        password=body.password,
        full_name=body.full_name,
        role=body.role,
        phone=body.phone,
        ip=req.ip,
    )
    return User.of(user)


@api.op(
    "GET",
    "/api/v1/users/{user_id}",
    operation_id="getUser",
    summary="A user of the caller's clinic",
    tag="users",
    action=Action.USER_READ,
    response=User,
)
async def get_user(req: ApiRequest) -> User:
    return User.of(await _svc(req).get_user(req.principal, req.params["user_id"]))


@api.op(
    "PATCH",
    "/api/v1/users/{user_id}",
    operation_id="updateUser",
    summary="Change a user's role, status or name",
    tag="users",
    action=Action.USER_UPDATE,
    body=UserPatch,
    response=User,
    errors=(409,),
)
async def update_user(req: ApiRequest) -> User:
    """Role changes are audited. Disabling a user ends their sessions at once. The
    last active admin of a clinic cannot be demoted or disabled (`last_admin`), and
    no admin can demote or disable themselves (`self_lockout`)."""
    changes = req.body(UserPatch).changes()
    user = await _svc(req).update_user(req.principal, req.params["user_id"], changes, ip=req.ip)
    return User.of(user)
