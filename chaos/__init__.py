"""The chaos run: queuectl under injected faults, and proof that no job is lost.

A private redis-server (append-only file, fsync on every write), four
workers, two schedulers and a reaper loop run a workload of short, long,
delayed, retried, prioritized and failing jobs.  Meanwhile the harness
kills, stops and restarts the daemons and Redis at random intervals.
Afterwards it checks every job's runs against its recorded history, the
processes left behind and the keyspace.  ``python -m chaos --help`` lists the options;
docs/reliability.md records the figures of a full run.
"""
