"""When each sampling tick last ran, so a stopped scheduler or a worker group that no longer
consumes a queue shows up as stale metrics (alert SirTicksStale) instead of frozen gauges that
look healthy: a sampled gauge keeps its last value when nothing samples it any more.
"""

from __future__ import annotations

import time

from prometheus_client import Gauge

LAST_RUN = Gauge(
    "sir_tick_last_run_timestamp_seconds",
    "Unix time at which a sampling tick (queue metrics, outbox relay, pool checks) last finished",
    ["tick"],
    multiprocess_mode="max",  # a timestamp: the latest of any process is the truth
)


def mark(tick: str) -> None:
    LAST_RUN.labels(tick).set(time.time())
