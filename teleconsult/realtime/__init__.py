"""The real-time core shared by ``/chat`` and ``/signal``: the Socket.IO server, connect
authentication, live sessions and their revocation, the hub that delivers to this
process's sockets, presence, and the bus between processes (in-process or Redis)."""
