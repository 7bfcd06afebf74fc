"""``teleconsult loadtest``: open-loop load against a running server, for operators.

Scenarios drive a server through its public API and the project's own client
library (REST, Socket.IO or MQTT, end-to-end encryption included), with
accounts they create for themselves (``loadtest-`` e-mail addresses). Sends
go out on a schedule and latency is measured from the scheduled time, so a
server that falls behind shows as latency rather than as fewer requests.
"""

from __future__ import annotations

from teleconsult.core.errors import TeleconsultError


class LoadtestError(TeleconsultError):
    """The load test cannot start or go on; the message says what to change."""
