"""The load test's own users, made through the public API as the clinic's admin.

Patients register themselves (``/api/v1/auth/register``, limited by the
server's ``REGISTER_MAX_PER_ADDRESS``, default 10 an hour) and then sign in;
staff are created by the admin and then sign in. Each sign-in counts against
the server's per-address limit (``LOGIN_MAX_PER_ADDRESS``, default 100 per 15
minutes): a refusal says so.
Every e-mail address is ``loadtest-<run>-<role>-<n>@loadtest.invalid``. At the
end of a run its users are disabled (which also ends their sessions) unless
asked to keep them; the API has no way to delete a user.

Passwords are hashed with argon2id on the server, slowly on purpose, so users
are made a few at a time (``--setup-concurrency``) with a progress line.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from uuid import UUID

import aiohttp
import jwt

from teleconsult.accounts.bootstrap import CREDENTIALS_FILE, FIRST_ADMIN_EMAIL, read_credentials
from teleconsult.client.rest import ApiError, RestClient
from teleconsult.loadtest import LoadtestError
from teleconsult.loadtest.report import SetupProgress

logger = logging.getLogger(__name__)

T = TypeVar("T")
EMAIL_DOMAIN = "loadtest.invalid"
PASSWORD_ENV = "TELECONSULT_ADMIN_PASSWORD"
RATE_LIMIT_HINT = (
    "the server refused a sign-in as rate-limited: it allows LOGIN_MAX_PER_ADDRESS "
    "(default 100) sign-ins per address in LOGIN_RATE_WINDOW (default 900 s), and every "
    "staff member of a load test signs in once. Raise the limit on the server under test, "
    "use fewer staff (a larger --group-size in chat, --rooms-per-doctor in signal), or wait"
)
REGISTER_LIMIT_HINT = (
    "the server refused a registration as rate-limited: it allows REGISTER_MAX_PER_ADDRESS "
    "(default 10) registrations per address in REGISTER_RATE_WINDOW (default 3600 s), and "
    "every patient of a load test registers once. Raise the limit on the server under test"
)


def default_credentials_file() -> Path:
    """Where ``teleconsult serve`` writes the first admin's password (its data directory)."""
    return Path(os.environ.get("TELECONSULT_DATA_DIR", "var")) / CREDENTIALS_FILE


def admin_credentials(
    email: str | None, password: str | None, credentials: Path | None
) -> tuple[str, str]:
    """The admin to act as: given on the command line or in the environment, else the
    credentials file a fresh server wrote."""
    password = password or os.environ.get(PASSWORD_ENV)
    if password:
        return email or FIRST_ADMIN_EMAIL, password
    path = credentials or default_credentials_file()
    try:
        found = read_credentials(path)
    except OSError as exc:
        raise LoadtestError(
            f"no admin password: pass --admin-email and --admin-password (or {PASSWORD_ENV}), "
            f"or --credentials FILE (could not read {path}: {exc.strerror})"
        ) from None
    if "email" not in found or "password" not in found:
        raise LoadtestError(f"{path} has no email= and password= lines")
    return email or found["email"], found["password"]


@dataclass
class Member:
    """One of the run's users, signed in."""

    index: int
    role: str
    email: str
    rest: RestClient

    @property
    def user_id(self) -> UUID:
        assert self.rest.user_id is not None
        return self.rest.user_id


def expires_at(token: str) -> tuple[float, float] | None:
    """(issued at, expires at) of an access token, read without checking it."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
        return float(claims["iat"]), float(claims["exp"])
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        return None


async def keep_fresh(rest: RestClient, on_refreshed: Callable[[str], Awaitable[None]]) -> None:
    """Refresh the access token before it expires, for runs longer than its life
    (``ACCESS_TOKEN_TTL``), and hand each new one to ``on_refreshed``. Runs until
    cancelled; the only place this client's tokens are refreshed (a refresh token
    works once)."""
    while True:
        times = expires_at(rest.access_token)
        if times is None:
            return
        issued, expires = times
        margin = min(60.0, (expires - issued) / 3)
        await asyncio.sleep(max(1.0, expires - margin - time.time()))
        try:
            token = await rest.refresh()
            await on_refreshed(token)
        except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("could not refresh a load-test user's token: %s", exc)
            await asyncio.sleep(5.0)


class Accounts:
    """Creates, signs in and finally disables one run's users.

    ``base_url`` like ``http://127.0.0.1:8080``; one HTTP session for every
    REST client of the run, closed by ``close``.
    """

    def __init__(self, base_url: str, *, run_id: str, concurrency: int, quiet: bool) -> None:
        self.base_url = base_url.rstrip("/")
        self.run_id = run_id
        self.concurrency = concurrency
        self.quiet = quiet
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=120),
        )
        self.admin = RestClient(self.base_url, session=self.session)
        self.clinic_id: UUID | None = None
        self.password = secrets.token_urlsafe(18)
        self.created: list[UUID] = []

    async def close(self) -> None:
        await self.session.close()

    def client(self) -> RestClient:
        return RestClient(self.base_url, session=self.session)

    def email(self, role: str, index: int) -> str:
        return f"loadtest-{self.run_id}-{role}-{index:05d}@{EMAIL_DOMAIN}"

    async def sign_in_admin(self, email: str, password: str) -> None:
        try:
            await self.admin.login(email, password)
            me = await self.admin.call("GET", "/api/v1/me")
        except aiohttp.ClientError as exc:
            raise LoadtestError(f"cannot reach {self.base_url}: {exc}") from None
        except ApiError as exc:
            if exc.status == 429:
                raise LoadtestError(RATE_LIMIT_HINT) from None
            raise LoadtestError(f"the admin {email} could not sign in: {exc}") from None
        if me.get("role") != "admin":
            raise LoadtestError(f"{email} is a {me.get('role')}, not a clinic admin")
        self.clinic_id = UUID(me["clinic_id"])

    async def fresh_admin(self) -> RestClient:
        """The admin's client with an access token good for at least another minute."""
        times = expires_at(self.admin.access_token)
        if times is not None and times[1] - time.time() < 60:
            await self.admin.refresh()
        return self.admin

    # --- making users -----------------------------------------------------------------

    async def patients(self, count: int, *, first: int = 0) -> list[Member]:
        """``count`` patients who registered themselves and signed in."""
        assert self.clinic_id is not None

        async def register(i: int) -> Member:
            index = first + i
            rest = self.client()
            email = self.email("patient", index)
            body = {
                "clinic_id": str(self.clinic_id),
                "email": email,
                "password": self.password,
                "full_name": f"Loadtest Patient {index}",
            }
            # The answer is the same for a new and a taken address: signing in tells.
            await _api(rest.call("POST", "/api/v1/auth/register", body), "register")
            await _api(rest.login(email, self.password), "sign in")
            assert rest.user_id is not None
            self.created.append(rest.user_id)
            return Member(index=index, role="patient", email=email, rest=rest)

        return await self.bounded("registering patients", count, register)

    async def staff(self, count: int, role: str, *, sign_in: bool) -> list[Member]:
        """``count`` staff of ``role`` created by the admin; signed in when asked
        (each sign-in counts against the server's per-address limit)."""

        async def create(i: int) -> Member:
            email = self.email(role, i)
            body = {
                "email": email,
                "password": self.password,
                "full_name": f"Loadtest {role.title()} {i}",
                "role": role,
            }
            user = await _api(self.admin.call("POST", "/api/v1/users", body), "create a user")
            self.created.append(UUID(user["id"]))
            rest = self.client()
            if sign_in:
                await _api(rest.login(email, self.password), "sign in")
            else:
                rest.user_id = UUID(user["id"])
            return Member(index=i, role=role, email=email, rest=rest)

        label = f"creating {role}s" + (" and signing them in" if sign_in else "")
        return await self.bounded(label, count, create)

    async def disable_all(self) -> int:
        """Disable every user this run made; returns how many could not be."""
        if not self.created:
            return 0
        admin = await self.fresh_admin()
        failed = 0

        async def disable(i: int) -> None:
            nonlocal failed
            try:
                await admin.call(
                    "PATCH", f"/api/v1/users/{self.created[i]}", {"status": "disabled"}
                )
            except (ApiError, aiohttp.ClientError, TimeoutError) as exc:
                failed += 1
                logger.warning("could not disable load-test user %s: %s", self.created[i], exc)

        await self.bounded("disabling the run's users", len(self.created), disable)
        return failed

    async def bounded(self, label: str, count: int, make: Callable[[int], Awaitable[T]]) -> list[T]:
        """``make(i)`` for i in range(count), at most ``concurrency`` at once; the first
        failure cancels the rest and is raised."""
        progress = SetupProgress(label, count, quiet=self.quiet)
        gate = asyncio.Semaphore(self.concurrency)

        async def one(i: int) -> T:
            async with gate:
                result = await make(i)
            progress.step()
            return result

        tasks = [asyncio.create_task(one(i)) for i in range(count)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise


async def _api(call: Awaitable[T], what: str) -> T:
    """A set-up call; its refusal becomes a LoadtestError saying what failed."""
    try:
        return await call
    except ApiError as exc:
        if exc.status == 429 and what == "sign in":
            raise LoadtestError(RATE_LIMIT_HINT) from None
        if exc.status == 429 and what == "register":
            raise LoadtestError(REGISTER_LIMIT_HINT) from None
        raise LoadtestError(f"could not {what}: {exc}") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise LoadtestError(f"could not {what}: {type(exc).__name__} {exc}") from None


def user_ids(members: Sequence[Member]) -> list[UUID]:
    return [m.user_id for m in members]
