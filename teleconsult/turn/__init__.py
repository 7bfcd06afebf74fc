"""TURN relay credentials for WebRTC calls, in the scheme coturn's ``use-auth-secret`` checks.

``credentials`` is the pure scheme, ``service`` mints them for users (REST and
signaling), ``routes`` serves ``GET /api/v1/turn/credentials``. See docs/turn.md.
"""
