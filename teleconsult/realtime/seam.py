"""The one place that reaches below python-socketio's public API (tests/test_realtime_seam.py).

Fan-out encodes an event once per encoding and hands the same engine.io packets to
every recipient socket, and back-pressure needs each socket's backlog. Neither is in
python-socketio's public API, so this module does it against the versions pinned in
pyproject.toml (python-socketio 5, python-engineio 4); the seam test fails first if
an upgrade moves anything used here.

What is used: ``AsyncServer.packet_class`` and ``Packet.encode`` (public attributes),
``AsyncManager.eio_sid_from_sid`` (public), the engine.io server's ``sockets`` map
and each socket's ``queue`` (an ``asyncio.Queue``, used only through its public
methods) and ``closed`` flag.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

Packets = Sequence[Any]  # engine.io packets of one Socket.IO event, sent in order


def eio_sid(server: socketio.AsyncServer, sid: str, namespace: str) -> str | None:
    """The engine.io session behind a Socket.IO ``sid`` of ``namespace``."""
    found: str | None = server.manager.eio_sid_from_sid(sid, namespace)
    return found


def event_packets(server: socketio.AsyncServer, namespace: str, event: str, data: Any) -> Packets:
    """``event`` with ``data`` as ready-to-queue engine.io packets (binary attachments too)."""
    encoded = server.packet_class(
        sio_packet.EVENT, namespace=namespace, data=[event, data]
    ).encode()
    parts = encoded if isinstance(encoded, list) else [encoded]
    return [eio_packet.Packet(eio_packet.MESSAGE, part) for part in parts]


def size(packets: Packets) -> int:
    """Bytes these packets put on the wire (their payloads)."""
    return sum(len(p.data) if isinstance(p.data, str | bytes) else 0 for p in packets)


def _socket(server: socketio.AsyncServer, eio: str) -> Any:
    sock = server.eio.sockets.get(eio)
    if sock is None or sock.closed:
        return None
    return sock


def backlog(server: socketio.AsyncServer, eio: str) -> int | None:
    """Packets waiting to be written to this client; None when its socket is gone."""
    sock = _socket(server, eio)
    return None if sock is None else int(sock.queue.qsize())


def queue(server: socketio.AsyncServer, eio: str, packets: Packets) -> bool:
    """Queue packets for the client without waiting; False when its socket is gone.

    The queue is unbounded (engine.io's), so this never blocks: callers bound it by
    checking :func:`backlog` first.
    """
    sock = _socket(server, eio)
    if sock is None:
        return False
    put = sock.queue.put_nowait
    for pkt in packets:
        put(pkt)
    return True


def cut_in_line(server: socketio.AsyncServer, eio: str, packets: Packets) -> int:
    """Drop everything still waiting for the client, then queue ``packets``.

    For a client about to be disconnected for falling behind: what it had not read
    is dropped (it resumes by seq when it comes back), and what it is told last
    reaches it first. Returns how many packets were dropped.
    """
    sock = _socket(server, eio)
    if sock is None:
        return 0
    dropped = 0
    while True:
        try:
            pending = sock.queue.get_nowait()
        except asyncio.QueueEmpty:
            break
        sock.queue.task_done()
        if pending is None:  # engine.io's "writer, stop" marker: the socket is closing
            sock.queue.put_nowait(None)
            return dropped
        dropped += 1
    for pkt in packets:
        sock.queue.put_nowait(pkt)
    return dropped
