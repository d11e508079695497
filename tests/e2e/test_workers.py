"""Real Dramatiq worker processes on real Redis, and the scheduler's single-leader lock."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import redis

from tests.conftest import ROOT
from workers.scheduler import LeaderLock


def _enqueue_audit(env: dict[str, str]) -> None:
    # Enqueue from a separate process: the broker binds to REDIS_URL at import time.
    subprocess.run(
        [sys.executable, "-c", "from workers.actors import audit_ledger; audit_ledger.send()"],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=60,
    )


def _wait_for(stream_path, needle: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = stream_path.read_text()
        if needle in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not seen in: {stream_path.read_text()[-2000:]}")


def test_worker_runs_the_ledger_audit(services, tmp_path):
    env = services.env()
    _enqueue_audit(env)
    log = tmp_path / "worker.log"
    with log.open("w") as sink:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ops.cli",
                "worker",
                "--processes",
                "1",
                "--threads",
                "2",
                "--queues",
                "maintenance",
            ],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            text = _wait_for(log, "ledger OK")
            assert "accounts checked" in text
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0


def test_only_one_scheduler_leads(services):
    client = redis.Redis.from_url(services.redis_url)
    key = "sir:test:leader"
    client.delete(key)
    first, second = LeaderLock(client, key, ttl=2), LeaderLock(client, key, ttl=2)
    assert first.hold() is True
    assert second.hold() is False
    assert first.hold() is True  # renewing our own lock
    first.release()
    assert second.hold() is True
    assert first.hold() is False
    # A leader that dies stops renewing; its lock expires and the standby takes over.
    time.sleep(2.2)
    assert first.hold() is True


def test_two_scheduler_processes_enqueue_ticks_once(services, tmp_path):
    env = services.env(SIR_LEDGER_AUDIT_SECONDS="1")
    client = redis.Redis.from_url(services.redis_url)
    client.delete("sir:scheduler:leader", "dramatiq:maintenance", "dramatiq:maintenance.msgs")
    logs = [tmp_path / "s1.log", tmp_path / "s2.log"]
    processes = []
    for path in logs:
        with path.open("w") as sink:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ops.cli", "scheduler"],
                    env=env,
                    cwd=ROOT,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        # Count over a fixed window that starts with the first tick, so how long the two
        # processes took to start (a loaded CI machine) does not matter.
        deadline = time.monotonic() + 60
        while client.hlen("dramatiq:maintenance.msgs") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        start = client.hlen("dramatiq:maintenance.msgs")
        assert start > 0, "no tick within 60 s"
        time.sleep(6)
        enqueued = client.hlen("dramatiq:maintenance.msgs") - start
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            assert process.wait(timeout=30) == 0
    texts = [path.read_text() for path in logs]
    assert sum("scheduler started (leader)" in t for t in texts) == 1
    assert sum("scheduler started (standby)" in t for t in texts) == 1
    # ~6 one-second audit ticks from the leader alone; two leaders would make ~12.
    assert 4 <= enqueued <= 8, enqueued
    client.delete("dramatiq:maintenance", "dramatiq:maintenance.msgs")


def test_worker_metrics_are_served_across_processes(services, tmp_path):
    import urllib.request

    from tests.conftest import free_port

    port = free_port()
    env = services.env(
        SIR_WORKER_METRICS_PORT=str(port), PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom")
    )
    # Enqueue from plain processes: the metrics directory belongs to the worker group.
    _enqueue_audit(services.env())
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from workers.maintenance import measure_queues; measure_queues.send()",
        ],
        env=services.env(),
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    log = tmp_path / "worker.log"
    with log.open("w") as sink:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ops.cli",
                "worker",
                "--processes",
                "2",
                "--threads",
                "2",
                "--queues",
                "maintenance",
            ],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_for(log, "ledger OK")
            deadline = time.monotonic() + 30
            body = ""
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{port}/metrics", timeout=2
                    ) as response:
                        body = response.read().decode()
                except OSError:
                    body = ""
                if 'actor_name="audit_ledger"' in body and "sir_queue_depth" in body:
                    break
                time.sleep(0.3)
            # Dramatiq's own counters and ours, from whichever worker process ran them.
            assert (
                'dramatiq_messages_total{actor_name="audit_ledger",queue_name="maintenance"}'
                in body
            ), body[-3000:]
            assert "sir_ledger_problems" in body
            assert 'sir_queue_depth{queue="maintenance"}' in body
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0


def test_the_scheduler_fires_every_modules_ticks():
    from workers.scheduler import ticks

    names = {tick.name for tick in ticks()}
    assert {
        "audit_ledger",
        "measure_queues",
        "outbox_relay",
        "webhook_pickup",
        "resume_batches",
        "vest_tokens",
        "expire_tokens",
        "refill_pools",
        "check_low_balances",
        "alert_expiring_keys",
        "pick_up_orders",
        "reconcile_yesterday",
        "roll_up_dashboards",
        "fold_api_usage",
    } <= names
