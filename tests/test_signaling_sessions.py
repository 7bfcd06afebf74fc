"""/signal sockets after their login session ends: closed like /chat's, refused when expired."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from teleconsult.client.signal import SignalClient
from teleconsult.core.identity import Role
from teleconsult.core.tokens import TokenService
from teleconsult.server.app import POOL, SETTINGS
from tests.conftest import StartServer
from tests.signalkit import open_room, raw_signal, signal_refusal
from tests.world import SESSION_ENDINGS, Account, make_tenant


def _base(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("")).rstrip("/")


def _expiring(client: TestClient[Any, Any], who: Account, seconds: float) -> str:
    """An access token of ``who``'s live session that expires ``seconds`` from now."""
    auth = client.app[SETTINGS].auth
    tokens = TokenService(secret=auth.jwt_secret, issuer=auth.issuer, access_ttl=auth.access_ttl)
    session = tokens.verify_access(who.access_token).session_id
    return tokens.mint_access(
        user_id=who.user_id, session_id=session, now=time.time() - tokens.access_ttl + seconds
    )


@pytest.mark.parametrize("ending", sorted(SESSION_ENDINGS))
async def test_a_socket_in_a_call_is_closed_soon_after_its_session_ends(
    start_server: StartServer, ending: str
) -> None:
    client = await start_server(CHAT_AUTH_RECHECK_SECONDS="0.2")
    pool = client.app[POOL]
    tenant = await make_tenant(pool, client)
    room = await open_room(pool, tenant)
    base = _base(client)
    patient = tenant[Role.PATIENT]
    doctor = SignalClient(base, tenant[Role.DOCTOR].access_token)
    try:
        async with asyncio.timeout(30), raw_signal(base, patient.access_token) as sock:
            await doctor.connect()
            await doctor.join(room)
            joined = await sock.call("join", {"room_id": room})
            assert joined["ok"], joined
            await doctor.call("admit", {"peer_id": joined["peer_id"]})
            await sock.next_event("admitted")
            code = await SESSION_ENDINGS[ending](client, tenant, patient)
            # The socket only listens: the server still notices, says why, and closes.
            assert await sock.next_event("bye") == {"reason": code}
            await sock.gone.wait()
            # Its peer drops like any lost connection; the session cannot come back.
            gone = await doctor.next_event("peer_disconnected")
            assert gone == {"peer_id": joined["peer_id"]}
            refused = await signal_refusal(base, patient.access_token)
            assert refused["data"]["code"] == code
    finally:
        await doctor.close()


async def test_a_socket_whose_token_expires_gets_bye_and_cannot_come_back_with_it(
    start_server: StartServer,
) -> None:
    client = await start_server(CHAT_AUTH_RECHECK_SECONDS="0.2")
    pool = client.app[POOL]
    tenant = await make_tenant(pool, client)
    room = await open_room(pool, tenant)
    base = _base(client)
    token = _expiring(client, tenant[Role.DOCTOR], 2)
    async with asyncio.timeout(30):
        async with raw_signal(base, token) as sock:
            joined = await sock.call("join", {"room_id": room})
            assert joined["ok"] and joined["status"] == "admitted", joined
            assert await sock.next_event("bye") == {"reason": "token_expired"}
            await sock.gone.wait()
        refused = await signal_refusal(base, token)
    assert refused["data"]["code"] == "token_expired"


async def test_events_with_an_expired_token_are_refused_until_auth_renews_it(
    start_server: StartServer,
) -> None:
    # The guard's sweep is far away: the namespace itself refuses the expired token.
    client = await start_server(CHAT_AUTH_RECHECK_SECONDS="600")
    pool = client.app[POOL]
    tenant = await make_tenant(pool, client)
    room = await open_room(pool, tenant)
    doctor = tenant[Role.DOCTOR]
    token = _expiring(client, doctor, 2)  # whole seconds: it expires within 1 to 2 s
    async with asyncio.timeout(30), raw_signal(_base(client), token) as sock:
        await asyncio.sleep(2.1)
        refused = await sock.call("join", {"room_id": room})
        assert refused["ok"] is False and refused["error"]["code"] == "token_expired", refused
        assert refused["error"]["status"] == 401
        other = await sock.call("auth", {"token": tenant[Role.PATIENT].access_token})
        assert other["ok"] is False and other["error"]["code"] == "unauthenticated", other
        assert await sock.call("auth", {"token": doctor.access_token}) == {"ok": True}
        joined = await sock.call("join", {"room_id": room})
        assert joined["ok"] and joined["status"] == "admitted", joined
