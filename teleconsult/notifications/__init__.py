"""Notifications: the transactional outbox, its channels (log, signed webhook) and workers.

A change enqueues its notifications in its own transaction (``store``); a
worker (``worker``) claims due rows under a lease and sends them through a
channel (``channels``), at least once, with a stable idempotency key.
"""
