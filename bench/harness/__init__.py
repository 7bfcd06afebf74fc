"""What every benchmark shares: one server-process class, CPU accounting, HDR latency,
the open-loop generator, the world in a throwaway database, the tables and the JSON.

* :mod:`bench.harness.procs`: ``ServerProcess``, pinned, dying with its parent, bounded;
* :mod:`bench.harness.cpu`: per-process and per-core CPU from ``/proc``, mean and
  per-second peak; pinning of this process and of PostgreSQL;
* :mod:`bench.harness.latency`: an HDR histogram that counts the missing as late;
* :mod:`bench.harness.load`: the open-loop scheduler with its send lag, the progress line;
* :mod:`bench.harness.world`: the database, people, devices, threads, envelopes, and
  the servers a scenario starts (teleconsult and every reference);
* :mod:`bench.harness.sio`: a lean Socket.IO client for load generation;
* :mod:`bench.harness.report`: rows, validity, ratios, tables, JSON, the command line.
"""
