"""The typed keys under which the composition root stores what it opens.

``app.py`` and the feature modules beside it (``media.py``, ``clinical.py``) share
them; everything else reaches these objects through what the root hands over.
"""

from __future__ import annotations

import asyncpg
import socketio
from aiohttp import web

from teleconsult.audit import AuditSequencer, AuditTrail
from teleconsult.core.bus import Bus
from teleconsult.core.metrics import Metrics
from teleconsult.core.ratelimit import RateLimiter
from teleconsult.core.revocation import Revocations
from teleconsult.core.settings import Settings
from teleconsult.messaging.directory import ThreadDirectory
from teleconsult.messaging.mqtt_bridge import MqttBridge
from teleconsult.messaging.namespace import ChatNamespace
from teleconsult.realtime.guard import SessionGuard
from teleconsult.signaling.namespace import SignalNamespace

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
POOL = web.AppKey("pool", asyncpg.Pool)
BUS = web.AppKey("bus", Bus)
LIMITER = web.AppKey("rate_limiter", RateLimiter)
AUDIT = web.AppKey("audit", AuditTrail)
AUDIT_SEQUENCER = web.AppKey("audit_sequencer", AuditSequencer)
DATABASE_DSN = web.AppKey("database_dsn", str)
# False for a process that never migrates (the worker): it waits for the schema instead.
MIGRATES = web.AppKey("migrates", bool)
SIGNAL_NAMESPACE = web.AppKey("signal_namespace", SignalNamespace)
REALTIME = web.AppKey("realtime", socketio.AsyncServer)
GUARD = web.AppKey("session_guard", SessionGuard)
DIRECTORY = web.AppKey("thread_directory", ThreadDirectory)
CHAT_NAMESPACE_KEY = web.AppKey("chat_namespace", ChatNamespace)
MQTT_BRIDGE = web.AppKey("mqtt_bridge", MqttBridge)
# Sessions that end: the accounts domain announces, every transport closes what it holds.
REVOCATIONS = web.AppKey("revocations", Revocations)
