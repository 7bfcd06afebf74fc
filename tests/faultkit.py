"""Private Redis and PostgreSQL instances on spare loopback ports, for tests that kill them.

Never the system services the other tests share: each instance lives in the test's
temporary directory and dies with the test. The classes are the soak run's
(``teleconsult/loadtest/processes.py``), so the operators' fault run and the tests
start and kill them the same way.
"""

from __future__ import annotations

from teleconsult.loadtest.processes import (
    PrivatePostgres,
    PrivateRedis,
    postgres_bin,
    private_postgres,
    private_redis,
)

__all__ = ["PrivatePostgres", "PrivateRedis", "postgres_bin", "private_postgres", "private_redis"]
