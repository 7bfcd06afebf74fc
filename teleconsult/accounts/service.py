"""Accounts: clinics, users and roles, login, rotating refresh tokens, logout.

Domain rules live here; this module knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from teleconsult.accounts import device_tokens, store
from teleconsult.accounts.emails import email_digest
from teleconsult.accounts.records import ClinicRecord, IssuedTokens, UserRecord
from teleconsult.audit import AuditEvent, AuditTrail, Outcome
from teleconsult.core.errors import (
    BadRequest,
    ClientError,
    Conflict,
    ErrorCode,
    FieldError,
    NotFound,
    RateLimited,
    Unauthenticated,
)
from teleconsult.core.identity import Grant, Principal, Role
from teleconsult.core.passwords import PasswordHasher
from teleconsult.core.policy import Scope, ensure_in_scope
from teleconsult.core.ratelimit import RateDecision, RateLimiter
from teleconsult.core.revocation import Revocation, RevocationSink
from teleconsult.core.settings import AuthSettings
from teleconsult.core.tokens import TokenService, hash_refresh_token, new_refresh_token

logger = logging.getLogger(__name__)


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequest(
            "unknown time zone", fields=[FieldError("body.timezone", "not an IANA time zone")]
        ) from None
    return name


class AccountService:
    """Clinics, users and sessions. Safe to call concurrently."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        hasher: PasswordHasher,
        tokens: TokenService,
        audit: AuditTrail,
        limiter: RateLimiter,
        settings: AuthSettings,
        revocations: RevocationSink | None = None,
    ) -> None:
        """``revocations``: told after each commit that ends sessions (logout, password
        change, disabling, role change, refresh reuse), so live connections close."""
        self._pool = pool
        self._revocations = revocations
        self._hasher = hasher
        self._tokens = tokens
        self._audit = audit
        self._limiter = limiter
        self._settings = settings
        self._device_key = device_tokens.device_key(settings.jwt_secret)

    @property
    def refresh_token_ttl(self) -> int:
        """How long a refresh token (and a browser's refresh cookie) lives, in seconds."""
        return self._settings.refresh_ttl

    @property
    def device_token_ttl(self) -> int:
        """How long a device token (and a browser's device cookie) lives, in seconds."""
        return self._settings.device_token_ttl

    # --- authentication -------------------------------------------------------------

    async def authenticate(self, token: str) -> Principal:
        """Resolve an access token to a principal; the session must still be live."""
        claims = self._tokens.verify_access(token)
        return await self._principal_of_claims(claims.user_id, claims.session_id)

    async def grant(self, token: str) -> Grant:
        """For the real-time transports: the principal and when the token expires."""
        claims = self._tokens.verify_access(token)
        principal = await self._principal_of_claims(claims.user_id, claims.session_id)
        return Grant(principal, float(claims.expires_at))

    async def recheck(
        self, principals: Collection[Principal]
    ) -> dict[UUID, Principal | ClientError]:
        """Each login session's principal as of now, or why it may no longer act (one query)."""
        wanted = {p.session_id: p for p in principals}
        rows = await store.load_principal_rows(self._pool, list(wanted))
        verdicts: dict[UUID, Principal | ClientError] = {
            sid: Unauthenticated("session has ended", code=ErrorCode.TOKEN_INVALID)
            for sid in wanted
        }
        for row in rows:
            asked = wanted[row["session_id"]]
            if row["user_id"] != asked.user_id:
                continue
            # Disabling also revokes the sessions: name the cause, not the consequence.
            if row["status"] != "active":
                verdicts[asked.session_id] = Unauthenticated(
                    "account is disabled", code=ErrorCode.ACCOUNT_DISABLED
                )
                continue
            if row["revoked_at"] is not None:
                continue
            verdicts[asked.session_id] = Principal(
                user_id=asked.user_id,
                clinic_id=row["clinic_id"],
                role=Role(row["role"]),
                session_id=asked.session_id,
            )
        return verdicts

    async def _principal_of_claims(self, user_id: UUID, session_id: UUID) -> Principal:
        row = await store.load_principal_row(self._pool, user_id, session_id)
        if row is None:
            raise Unauthenticated("session has ended", code=ErrorCode.TOKEN_INVALID)
        if row["status"] != "active":
            raise Unauthenticated("account is disabled", code=ErrorCode.ACCOUNT_DISABLED)
        if row["revoked_at"] is not None:
            raise Unauthenticated("session has ended", code=ErrorCode.TOKEN_INVALID)
        return Principal(
            user_id=user_id,
            clinic_id=row["clinic_id"],
            role=Role(row["role"]),
            session_id=session_id,
        )

    async def principal_of_user(self, user_id: UUID) -> Principal:
        """A user a broker authenticated (MQTT): no login session, so ``session_id`` is nil.

        Role and clinic come from the users table; an unknown or disabled user is refused.
        """
        user = await store.get_user(self._pool, user_id)
        if user is None or user.status != "active":
            raise Unauthenticated("account is disabled", code=ErrorCode.ACCOUNT_DISABLED)
        return Principal(
            user_id=user.id, clinic_id=user.clinic_id, role=user.role, session_id=UUID(int=0)
        )

    async def _issue(
        self, conn: asyncpg.Connection | asyncpg.Pool, user: UserRecord
    ) -> IssuedTokens:
        refresh = new_refresh_token()
        expires = datetime.now(UTC) + timedelta(seconds=self._settings.refresh_ttl)
        session_id = await store.create_session(
            conn, user_id=user.id, expires_at=expires, token_hash=hash_refresh_token(refresh)
        )
        access = self._tokens.mint_access(user_id=user.id, session_id=session_id)
        return IssuedTokens(access, refresh, self._tokens.access_ttl, user)

    async def login(
        self,
        email: str,
        password: str,
        *,
        ip: str | None,
        device_tokens_presented: Sequence[str] = (),
    ) -> IssuedTokens:
        """Check a password, rate-limited per client address and, for wrong passwords,
        per device token or per account (OWASP's device cookies).

        A valid device token of this account (from an earlier sign-in) puts the
        attempt on the trusted path: its failures count against that token only,
        so someone guessing elsewhere cannot keep the owner out. Any other attempt
        (no token, a forged, expired or another account's token, or a token that
        has run out of attempts) is untrusted: its failures count against the
        account's untrusted bucket, which once full refuses untrusted sign-ins only.
        A success issues a new device token (``IssuedTokens.device_token``).
        """
        s = self._settings
        # Keys end up in Redis: a digest, never the e-mail address itself.
        account = email_digest(email)
        now = int(time.time())
        device = device_tokens.first_valid(
            self._device_key, account, device_tokens_presented, now=now, ttl=s.device_token_ttl
        )
        by_address = await self._limiter.hit(
            f"login:address:{ip or 'unknown'}", s.login_max_per_address, s.login_window
        )
        bucket, limit, by_source = "", 0, RateDecision(allowed=True, count=0, retry_after=0)
        if device is not None:
            bucket, limit = f"login:device:{device.key}", s.login_max_per_device
            by_source = await self._limiter.peek(bucket, limit, s.login_window)
            if not by_source.allowed:
                device = None  # a token out of attempts counts as none
        if device is None:
            bucket, limit = f"login:account:{account}", s.login_max_per_account
            by_source = await self._limiter.peek(bucket, limit, s.login_window)
        if not by_source.allowed or not by_address.allowed:
            await self._audit.record(
                AuditEvent(
                    action="auth.login",
                    outcome="denied",
                    ip=ip,
                    detail={"reason": "rate_limited", "device": device is not None},
                )
            )
            retry = max(by_source.retry_after, by_address.retry_after)
            raise RateLimited("too many login attempts; try again later", retry_after=retry)

        found = await store.get_credentials(self._pool, email)
        user, stored = found if found else (None, None)
        ok = await self._hasher.verify(stored, password)
        if not ok or user is None:
            await self._limiter.hit(bucket, limit, s.login_window)
            await self._audit.record(
                AuditEvent(
                    action="auth.login",
                    outcome="failure",
                    actor_id=user.id if user else None,
                    actor_role=user.role.value if user else None,
                    clinic_id=user.clinic_id if user else None,
                    object_type="user" if user else None,
                    object_id=str(user.id) if user else None,
                    ip=ip,
                    detail={"reason": "bad_credentials", "device": device is not None},
                )
            )
            raise Unauthenticated("wrong e-mail or password", code=ErrorCode.INVALID_CREDENTIALS)
        if user.status != "active":
            await self._audit.record(
                self._user_event(user, "auth.login", ip, outcome="denied", reason="disabled")
            )
            raise Unauthenticated("account is disabled", code=ErrorCode.ACCOUNT_DISABLED)
        assert stored is not None
        if self._hasher.needs_rehash(stored):
            await store.set_password_hash(self._pool, user.id, await self._hasher.hash(password))
        # Only the bucket this attempt came through: an owner signing in on their
        # device must not give someone guessing elsewhere a fresh set of attempts.
        await self._limiter.reset(bucket)
        async with self._pool.acquire() as conn, conn.transaction():
            issued = await self._issue(conn, user)
            await self._audit.record(self._user_event(user, "auth.login", ip), conn=conn)
        fresh = device_tokens.mint(self._device_key, account, now=now)
        return replace(
            issued,
            device_token=fresh.text,
            replaced_device_token=device.text if device is not None else None,
        )

    @staticmethod
    def _user_event(
        user: UserRecord,
        action: str,
        ip: str | None,
        *,
        outcome: Outcome = "success",
        reason: str = "",
    ) -> AuditEvent:
        return _self_event(user.id, user.role, user.clinic_id, action, ip, outcome, reason)

    async def refresh(self, refresh_token: str, *, ip: str | None) -> IssuedTokens:
        """Rotate a refresh token. Reusing a used one revokes its whole family."""
        old_hash = hash_refresh_token(refresh_token)
        new_token = new_refresh_token()
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                row = await store.lock_refresh_token(conn, old_hash)
                if row is None:
                    raise Unauthenticated("unknown refresh token", code=ErrorCode.REFRESH_INVALID)
                user = await store.get_user(conn, row["user_id"])
                assert user is not None
                if row["revoked_at"] is not None:
                    raise Unauthenticated("session has ended", code=ErrorCode.REFRESH_INVALID)
                if row["used_at"] is not None:
                    await store.revoke_session(conn, row["session_id"], "refresh_reused")
                    await self._audit.record(
                        self._user_event(
                            user,
                            "auth.refresh",
                            ip,
                            outcome="denied",
                            reason="reuse_revoked_family",
                        ),
                        conn=conn,
                    )
                    reused = True
                else:
                    reused = False
                    if row["expires_at"] <= datetime.now(UTC):
                        raise Unauthenticated("session expired", code=ErrorCode.REFRESH_INVALID)
                    if row["status"] != "active":
                        raise Unauthenticated(
                            "account is disabled", code=ErrorCode.ACCOUNT_DISABLED
                        )
                    await store.rotate_refresh_token(
                        conn,
                        old_hash=old_hash,
                        new_hash=hash_refresh_token(new_token),
                        session_id=row["session_id"],
                    )
            if reused:
                logger.warning("refresh token reuse; session %s revoked", row["session_id"])
                await self._revoke(
                    Revocation(user.id, str(ErrorCode.TOKEN_INVALID), session_id=row["session_id"])
                )
                raise Unauthenticated(
                    "refresh token was already used; the session is revoked, sign in again",
                    code=ErrorCode.REFRESH_REUSED,
                )
        access = self._tokens.mint_access(user_id=user.id, session_id=row["session_id"])
        return IssuedTokens(access, new_token, self._tokens.access_ttl, user)

    async def logout(self, principal: Principal, *, ip: str | None) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            await store.revoke_session(conn, principal.session_id, "logout")
            await self._audit.record(
                AuditEvent(
                    action="auth.logout",
                    actor_id=principal.user_id,
                    actor_role=principal.role.value,
                    clinic_id=principal.clinic_id,
                    object_type="session",
                    object_id=str(principal.session_id),
                    ip=ip,
                ),
                conn=conn,
            )
        await self._revoke(
            Revocation(
                principal.user_id, str(ErrorCode.TOKEN_INVALID), session_id=principal.session_id
            )
        )

    async def _revoke(self, revocation: Revocation) -> None:
        if self._revocations is not None:
            await self._revocations(revocation)

    # --- registration and profile ---------------------------------------------------

    async def register_patient(
        self,
        *,
        clinic_id: UUID,
        email: str,
        password: str,
        full_name: str,
        phone: str | None,
        date_of_birth: date | None,
        ip: str | None,
    ) -> None:
        """Register a patient, who then signs in. Limited per client address.

        The answer must not tell whether the address is already registered (in
        this clinic or another): an address that is taken gets the same answer
        after the same work (the password is hashed, one statement tries the
        insert), creates nothing and changes nothing; it leaves a ``denied`` audit
        row naming the existing account, for the clinic's security officer.
        """
        s = self._settings
        by_address = await self._limiter.hit(
            f"register:address:{ip or 'unknown'}", s.register_max_per_address, s.register_window
        )
        if not by_address.allowed:
            await self._audit.record(
                AuditEvent(
                    action="user.register",
                    outcome="denied",
                    clinic_id=clinic_id,
                    ip=ip,
                    detail={"reason": "rate_limited"},
                )
            )
            raise RateLimited(
                "too many registrations from this address; try again later",
                retry_after=by_address.retry_after,
            )
        password_hash = await self._hasher.hash(password)
        async with self._pool.acquire() as conn, conn.transaction():
            if await store.get_clinic(conn, clinic_id) is None:
                raise NotFound("clinic not found")
            user, created = await store.insert_or_find_user(
                conn,
                clinic_id=clinic_id,
                email=email,
                password_hash=password_hash,
                role=Role.PATIENT,
                full_name=full_name,
                phone=phone,
                date_of_birth=date_of_birth,
            )
            if created:
                event = self._user_event(user, "user.register", ip)
            else:
                event = AuditEvent(
                    action="user.register",
                    outcome="denied",
                    clinic_id=clinic_id,
                    object_type="user",
                    object_id=str(user.id),
                    ip=ip,
                    detail={"reason": "email_exists", "same_clinic": user.clinic_id == clinic_id},
                )
            await self._audit.record(event, conn=conn)

    async def me(self, principal: Principal) -> UserRecord:
        user = await store.get_user(self._pool, principal.user_id)
        if user is None:
            raise Unauthenticated("account no longer exists")
        return user

    async def update_me(
        self, principal: Principal, changes: dict[str, Any], *, ip: str | None
    ) -> UserRecord:
        if not changes:
            return await self.me(principal)
        async with self._pool.acquire() as conn, conn.transaction():
            user = await store.update_user(conn, principal.user_id, changes)
            await self._audit.record(
                self._actor_event(principal, "user.update_self", user, ip, sorted(changes)),
                conn=conn,
            )
        return user

    async def change_password(
        self, principal: Principal, current: str, new: str, *, ip: str | None
    ) -> None:
        """Wrong ``current`` passwords are limited per account: a stolen access token
        must not become a way to guess the password (429 with Retry-After)."""
        s = self._settings
        guesses = f"password:account:{principal.user_id}"
        allowed = await self._limiter.peek(guesses, s.password_change_max_failures, s.login_window)
        if not allowed.allowed:
            await self._audit.record(
                self._principal_event(principal, "user.password_change", ip, "rate_limited")
            )
            raise RateLimited(
                "too many wrong current passwords; try again later",
                retry_after=allowed.retry_after,
            )
        stored = await store.get_password_hash(self._pool, principal.user_id)
        if not await self._hasher.verify(stored, current):
            await self._limiter.hit(guesses, s.password_change_max_failures, s.login_window)
            await self._audit.record(
                self._principal_event(
                    principal, "user.password_change", ip, "bad_credentials", outcome="failure"
                )
            )
            raise BadRequest(
                "current password is wrong",
                code=ErrorCode.INVALID_CREDENTIALS,
                fields=[FieldError("body.current_password", "does not match")],
            )
        await self._limiter.reset(guesses)
        new_hash = await self._hasher.hash(new)
        async with self._pool.acquire() as conn, conn.transaction():
            await store.set_password_hash(conn, principal.user_id, new_hash)
            await store.revoke_user_sessions(
                conn, principal.user_id, "password_changed", keep=principal.session_id
            )
            await self._audit.record(
                AuditEvent(
                    action="user.password_change",
                    actor_id=principal.user_id,
                    actor_role=principal.role.value,
                    clinic_id=principal.clinic_id,
                    object_type="user",
                    object_id=str(principal.user_id),
                    ip=ip,
                ),
                conn=conn,
            )
        await self._revoke(
            Revocation(
                principal.user_id,
                str(ErrorCode.TOKEN_INVALID),
                keep_session=principal.session_id,
            )
        )

    @staticmethod
    def _principal_event(
        principal: Principal,
        action: str,
        ip: str | None,
        reason: str,
        *,
        outcome: Outcome = "denied",
    ) -> AuditEvent:
        return _self_event(
            principal.user_id, principal.role, principal.clinic_id, action, ip, outcome, reason
        )

    @staticmethod
    def _actor_event(
        principal: Principal,
        action: str,
        user: UserRecord,
        ip: str | None,
        fields: list[str] | None = None,
        **detail: str,
    ) -> AuditEvent:
        facts: dict[str, str | int | bool | None] = dict(detail)
        if fields:
            facts["fields"] = ",".join(fields)
        return AuditEvent(
            action=action,
            actor_id=principal.user_id,
            actor_role=principal.role.value,
            clinic_id=user.clinic_id,
            object_type="user",
            object_id=str(user.id),
            ip=ip,
            detail=facts,
        )

    # --- clinics --------------------------------------------------------------------

    async def create_clinic(
        self, *, name: str, timezone: str, admin_email: str, admin_password: str, admin_name: str
    ) -> tuple[ClinicRecord, UserRecord]:
        """Create a clinic with its first admin (operator command, not an HTTP route)."""
        created = await self._create_clinic(
            name, timezone, admin_email, admin_password, admin_name, only_if_none=False
        )
        assert created is not None
        return created

    async def create_first_clinic(
        self, *, name: str, timezone: str, admin_email: str, admin_password: str, admin_name: str
    ) -> tuple[ClinicRecord, UserRecord] | None:
        """The first run's clinic; None when there is a clinic already.

        Server processes started together on an empty database agree on one of them
        (a lock held for the transaction); the others find the clinic it made.
        """
        return await self._create_clinic(
            name, timezone, admin_email, admin_password, admin_name, only_if_none=True
        )

    async def _create_clinic(
        self,
        name: str,
        timezone: str,
        admin_email: str,
        admin_password: str,
        admin_name: str,
        *,
        only_if_none: bool,
    ) -> tuple[ClinicRecord, UserRecord] | None:
        check_timezone(timezone)
        password_hash = await self._hasher.hash(admin_password)
        async with self._pool.acquire() as conn, conn.transaction():
            if only_if_none:
                await store.lock_first_run(conn)
                if await store.count_clinics(conn) > 0:
                    return None
            clinic = await store.insert_clinic(conn, name=name, timezone=timezone)
            admin = await store.insert_user(
                conn,
                clinic_id=clinic.id,
                email=admin_email,
                password_hash=password_hash,
                role=Role.ADMIN,
                full_name=admin_name,
            )
            if admin is None:
                raise Conflict(
                    "this e-mail address is already registered", code=ErrorCode.EMAIL_TAKEN
                )
            await self._audit.record(
                AuditEvent(
                    action="clinic.create",
                    clinic_id=clinic.id,
                    object_type="clinic",
                    object_id=str(clinic.id),
                    detail={"admin_id": str(admin.id)},
                ),
                conn=conn,
            )
        return clinic, admin

    async def count_clinics(self) -> int:
        return await store.count_clinics(self._pool)

    async def get_clinic(self, principal: Principal, clinic_id: UUID) -> ClinicRecord:
        clinic = await store.get_clinic(self._pool, clinic_id)
        # Every member of a clinic, patients included, may see its public details.
        ensure_in_scope(
            principal,
            Scope(clinic.id, principal.user_id) if clinic else None,
            "clinic",
        )
        assert clinic is not None
        return clinic

    async def update_clinic(
        self, principal: Principal, clinic_id: UUID, changes: dict[str, Any], *, ip: str | None
    ) -> ClinicRecord:
        clinic = await self.get_clinic(principal, clinic_id)
        if "timezone" in changes:
            check_timezone(changes["timezone"])
        if not changes:
            return clinic
        async with self._pool.acquire() as conn, conn.transaction():
            updated = await store.update_clinic(conn, clinic_id, changes)
            await self._audit.record(
                AuditEvent(
                    action="clinic.update",
                    actor_id=principal.user_id,
                    actor_role=principal.role.value,
                    clinic_id=clinic_id,
                    object_type="clinic",
                    object_id=str(clinic_id),
                    ip=ip,
                    detail={"fields": ",".join(sorted(changes))},
                ),
                conn=conn,
            )
        return updated

    # --- users (clinic administration) -----------------------------------------------

    async def create_user(
        self,
        principal: Principal,
        *,
        email: str,
        password: str,
        full_name: str,
        role: Role,
        phone: str | None,
        ip: str | None,
    ) -> UserRecord:
        password_hash = await self._hasher.hash(password)
        async with self._pool.acquire() as conn, conn.transaction():
            user = await store.insert_user(
                conn,
                clinic_id=principal.clinic_id,
                email=email,
                password_hash=password_hash,
                role=role,
                full_name=full_name,
                phone=phone,
            )
            if user is None:
                raise Conflict(
                    "this e-mail address is already registered", code=ErrorCode.EMAIL_TAKEN
                )
            await self._audit.record(
                self._actor_event(principal, "user.create", user, ip, role=role.value), conn=conn
            )
        return user

    async def list_users(
        self,
        principal: Principal,
        *,
        roles: list[Role],
        after: tuple[datetime, UUID] | None,
        limit: int,
        ip: str | None = None,
    ) -> list[UserRecord]:
        """A page of ``limit`` of the clinic's users, plus one more row when there is a
        next page (the caller cuts it off).

        A list that may hold patients is a read of patient data: one ``patient.list``
        audit event per read, committed with it, naming the reader, the query and how
        many patients the page shows (a count, no names or ids).
        """
        if Role.PATIENT not in roles:
            return await store.list_users(
                self._pool,
                clinic_id=principal.clinic_id,
                roles=roles,
                after=after,
                limit=limit + 1,
            )
        async with self._pool.acquire() as conn, conn.transaction():
            users = await store.list_users(
                conn, clinic_id=principal.clinic_id, roles=roles, after=after, limit=limit + 1
            )
            patients = sum(1 for user in users[:limit] if user.role is Role.PATIENT)
            await self._audit.record(
                AuditEvent.by(
                    principal,
                    "patient.list",
                    "patient_list",
                    ip=ip,
                    detail={
                        "via": "users",
                        "query": "role=patient" if roles == [Role.PATIENT] else "all_roles",
                        "results": patients,
                        "after": after is not None,
                    },
                ),
                conn=conn,
            )
        return users

    async def get_user(self, principal: Principal, user_id: UUID) -> UserRecord:
        async with self._pool.acquire() as conn:
            user = await store.get_user(conn, user_id)
            ensure_in_scope(principal, Scope(user.clinic_id, user.id) if user else None, "user")
            assert user is not None
            if user.role is Role.PATIENT:
                await self._audit.record(
                    self._actor_event(principal, "patient.read", user, None, via="users"), conn
                )
        return user

    async def update_user(
        self, principal: Principal, user_id: UUID, changes: dict[str, Any], *, ip: str | None
    ) -> UserRecord:
        """Change role, status or name. The clinic always keeps one active admin."""
        async with self._pool.acquire() as conn, conn.transaction():
            admins = await store.lock_active_admins(conn, principal.clinic_id)
            user = await store.get_user(conn, user_id)
            ensure_in_scope(principal, Scope(user.clinic_id, user.id) if user else None, "user")
            assert user is not None
            new_role = changes.get("role", user.role)
            new_status = changes.get("status", user.status)
            loses_admin = user.id in admins and (
                new_role is not Role.ADMIN or new_status != "active"
            )
            if loses_admin and len(admins) == 1:
                raise Conflict(
                    "a clinic must keep at least one active admin", code=ErrorCode.LAST_ADMIN
                )
            if loses_admin and user.id == principal.user_id:
                raise Conflict(
                    "an admin cannot demote or disable themselves; ask another admin",
                    code=ErrorCode.SELF_LOCKOUT,
                )
            effective = {k: v for k, v in changes.items() if getattr(user, k) != v}
            if not effective:
                return user
            updated = await store.update_user(conn, user_id, effective)
            if "role" in effective:
                await self._audit.record(
                    self._actor_event(
                        principal,
                        "user.role_change",
                        updated,
                        ip,
                        old_role=user.role.value,
                        new_role=updated.role.value,
                    ),
                    conn=conn,
                )
            if effective.get("status") == "disabled":
                await store.revoke_user_sessions(conn, user_id, "disabled")
            other = sorted(set(effective) - {"role"})
            if other:
                await self._audit.record(
                    self._actor_event(principal, "user.update", updated, ip, other), conn=conn
                )
        # Live connections re-authenticate (a role change) or end (disabled).
        if effective.get("status") == "disabled":
            await self._revoke(Revocation(user_id, str(ErrorCode.ACCOUNT_DISABLED)))
        elif "role" in effective:
            await self._revoke(Revocation(user_id, str(ErrorCode.ROLE_CHANGED)))
        return updated


def _self_event(
    user_id: UUID,
    role: Role,
    clinic_id: UUID,
    action: str,
    ip: str | None,
    outcome: Outcome,
    reason: str,
) -> AuditEvent:
    """An audit event of a user acting on their own account."""
    return AuditEvent(
        action=action,
        outcome=outcome,
        actor_id=user_id,
        actor_role=role.value,
        clinic_id=clinic_id,
        object_type="user",
        object_id=str(user_id),
        ip=ip,
        detail={"reason": reason} if reason else {},
    )
