"""Accounts: clinics, users and roles, login, rotating refresh tokens, logout.

Domain rules live here; this module knows nothing of HTTP.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg

from teleconsult.accounts import store
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
from teleconsult.core.ratelimit import RateLimiter
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
    ) -> None:
        self._pool = pool
        self._hasher = hasher
        self._tokens = tokens
        self._audit = audit
        self._limiter = limiter
        self._settings = settings

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
            if row["user_id"] != asked.user_id or row["revoked_at"] is not None:
                continue
            if row["status"] != "active":
                verdicts[asked.session_id] = Unauthenticated(
                    "account is disabled", code=ErrorCode.ACCOUNT_DISABLED
                )
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
        if row is None or row["revoked_at"] is not None:
            raise Unauthenticated("session has ended", code=ErrorCode.TOKEN_INVALID)
        if row["status"] != "active":
            raise Unauthenticated("account is disabled", code=ErrorCode.ACCOUNT_DISABLED)
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

    async def login(self, email: str, password: str, *, ip: str | None) -> IssuedTokens:
        """Check a password, rate-limited per account and per client address."""
        s = self._settings
        # Keys end up in Redis: a digest, never the e-mail address itself.
        account_key = "login:account:" + hashlib.sha256(email.lower().encode()).hexdigest()[:32]
        address_key = f"login:address:{ip or 'unknown'}"
        by_account = await self._limiter.peek(account_key, s.login_max_per_account, s.login_window)
        by_address = await self._limiter.hit(address_key, s.login_max_per_address, s.login_window)
        if not by_account.allowed or not by_address.allowed:
            await self._audit.record(
                AuditEvent(
                    action="auth.login",
                    outcome="denied",
                    ip=ip,
                    detail={"reason": "rate_limited"},
                )
            )
            retry = max(by_account.retry_after, by_address.retry_after)
            raise RateLimited("too many login attempts; try again later", retry_after=retry)

        found = await store.get_credentials(self._pool, email)
        user, stored = found if found else (None, None)
        ok = await self._hasher.verify(stored, password)
        if not ok or user is None:
            await self._limiter.hit(account_key, s.login_max_per_account, s.login_window)
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
                    detail={"reason": "bad_credentials"},
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
        await self._limiter.reset(account_key)
        async with self._pool.acquire() as conn, conn.transaction():
            issued = await self._issue(conn, user)
            await self._audit.record(self._user_event(user, "auth.login", ip), conn=conn)
        return issued

    @staticmethod
    def _user_event(
        user: UserRecord,
        action: str,
        ip: str | None,
        *,
        outcome: Outcome = "success",
        reason: str = "",
    ) -> AuditEvent:
        return AuditEvent(
            action=action,
            outcome=outcome,
            actor_id=user.id,
            actor_role=user.role.value,
            clinic_id=user.clinic_id,
            object_type="user",
            object_id=str(user.id),
            ip=ip,
            detail={"reason": reason} if reason else {},
        )

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
    ) -> IssuedTokens:
        password_hash = await self._hasher.hash(password)
        async with self._pool.acquire() as conn, conn.transaction():
            if await store.get_clinic(conn, clinic_id) is None:
                raise NotFound("clinic not found")
            user = await store.insert_user(
                conn,
                clinic_id=clinic_id,
                email=email,
                password_hash=password_hash,
                role=Role.PATIENT,
                full_name=full_name,
                phone=phone,
                date_of_birth=date_of_birth,
            )
            if user is None:
                raise Conflict(
                    "this e-mail address is already registered", code=ErrorCode.EMAIL_TAKEN
                )
            await self._audit.record(self._user_event(user, "user.register", ip), conn=conn)
            return await self._issue(conn, user)

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
        stored = await store.get_password_hash(self._pool, principal.user_id)
        if not await self._hasher.verify(stored, current):
            raise BadRequest(
                "current password is wrong",
                code=ErrorCode.INVALID_CREDENTIALS,
                fields=[FieldError("body.current_password", "does not match")],
            )
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
        check_timezone(timezone)
        password_hash = await self._hasher.hash(admin_password)
        async with self._pool.acquire() as conn, conn.transaction():
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
    ) -> list[UserRecord]:
        return await store.list_users(
            self._pool, clinic_id=principal.clinic_id, roles=roles, after=after, limit=limit
        )

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
        return updated
