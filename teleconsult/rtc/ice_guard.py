"""The address policy inside the server peer's ICE agents: the only code here below
aiortc's public API.

The offer's candidates are filtered before aiortc sees them (``sdp.filter_candidates``),
but an ICE agent learns remote addresses two more ways: candidates added later
(trickle) and peer-reflexive candidates, learnt from the source address of an
authenticated binding request. That source can be forged (UDP), and the agent
would answer it and send it checks of its own. :func:`guard_peer` makes every
aioice ``Connection`` of a peer ignore both when the address is refused, so no
STUN packet of the server's peer ever goes to one. It must run after
``setRemoteDescription`` (which creates the agents) and before
``setLocalDescription`` (which opens their sockets).

Written against aioice 0.13 (``Connection.add_remote_candidate`` and
``request_received``) and aiortc 1.16 (``RTCIceTransport._connection``); the
tests in tests/security/test_rtc_peer.py fail if either moves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aioice import Candidate, Connection
from aiortc import RTCPeerConnection

logger = logging.getLogger(__name__)

Refusal = Callable[[str], "str | None"]


def ice_connections(pc: RTCPeerConnection) -> list[Connection]:
    """The aioice agents of every transport the peer has (one with BUNDLE)."""
    transports = [t.receiver.transport.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport.transport)
    found: list[Connection] = []
    for transport in transports:
        connection = transport._connection
        if not any(connection is seen for seen in found):
            found.append(connection)
    return found


def guard_peer(pc: RTCPeerConnection, refusal: Refusal) -> int:
    """Guard every ICE agent of ``pc``; returns how many there are."""
    connections = ice_connections(pc)
    for connection in connections:
        guard_connection(connection, refusal)
    return len(connections)


def guard_connection(connection: Connection, refusal: Refusal) -> None:
    """Make ``connection`` ignore remote candidates and incoming checks ``refusal`` refuses."""
    add = connection.add_remote_candidate
    received = connection.request_received
    warned = False

    async def add_remote_candidate(candidate: Candidate | None) -> None:
        if candidate is not None:
            why = refusal(candidate.host)
            if why is not None:
                logger.info("network test: remote candidate refused (%s)", why)
                return
        await add(candidate)

    def request_received(message: Any, addr: tuple[Any, ...], protocol: Any) -> None:
        nonlocal warned
        why = refusal(str(addr[0]))
        if why is not None:
            if not warned:  # once per agent: a flood must not flood the log
                warned = True
                logger.info("network test: ignored ICE checks from a %s address", why)
            return
        received(message, addr, protocol)

    # Instance attributes shadow the methods for this agent only: the client
    # peers of the same process (tests, the probe) keep aioice's behaviour.
    connection.add_remote_candidate = add_remote_candidate  # type: ignore[method-assign,assignment]
    connection.request_received = request_received  # type: ignore[method-assign]
