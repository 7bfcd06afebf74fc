"""The client's reconnect policy under restarts (issue 16): a capped, jittered backoff,
and no sleeping it out once the server answers /healthz again.

Before, a client whose backoff had grown kept away from a server that was already up
(13.5 s in the outside test). Here the client's backoff is made absurdly long (its
first wait is 15–45 s), so it can only be back in time because it watched /healthz.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from teleconsult.client.transport import SocketIoTransport
from teleconsult.core.backoff import Backoff
from teleconsult.core.identity import Role
from tests.chatkit import connect, person
from tests.servers import ServerProcess
from tests.world import clinic_people

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_waiting_client_reconnects_when_the_server_answers_healthz_again(
    fresh_db: str, tmp_path: Path, transport: str
) -> None:
    (account,) = await clinic_people(fresh_db, Role.PATIENT)
    server = ServerProcess(fresh_db, tmp_path)
    await server.start()
    patient = await person(server.base_url, account)
    try:

        async def token() -> str:
            return patient.rest.access_token

        link = SocketIoTransport(
            server.base_url, token, transports=(transport,), backoff=Backoff(first=30, most=60)
        )
        await connect(patient, link)
        server.kill()
        await asyncio.sleep(3)
        assert not link.connected.is_set()
        await server.start()
        # Far sooner than the backoff's first wait (at least 15 s).
        async with asyncio.timeout(10):
            await link.connected.wait()
        assert link.reconnects == 1
    finally:
        await patient.close()
        await server.stop()
