"""Every metric the alert rules and the Grafana dashboard name is really exported.

A real front (`serve --processes 2`), a real worker group with its metrics port and a real
scheduler on short ticks get traffic: a signed submit (events, a webhook delivery that fails once
then succeeds), a refused request, a pool under its low-balance threshold and a poisoned message
that becomes a dead letter. Then both /metrics endpoints are scraped. A few series exist only
after a fault we cannot cheaply cause here (a database outage in the front, a Dramatiq retry, a
broken ledger); those must at least be registered by the code, which a fresh process lists.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from decimal import Decimal

import redis
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from engine.credentials import issue_keys
from engine.money import Tokens
from sir_client import SirClient
from tests.conftest import ROOT, free_port, wait_http_ok

OPS = ROOT / "ops"
# Series that appear only after a fault: checked against the code's registries instead.
NEEDS_A_FAULT = {
    "sir_http_dependency_errors_total",  # a front request failing on PostgreSQL or Redis
    "dramatiq_message_retries_total",  # a transient actor failure
    "sir_ledger_problems",  # the audit runs every 15 minutes
}
TICKS = ("measure_queues", "outbox_relay", "check_low_balances")
_NAME = re.compile(r"\b(?:sir|dramatiq)_[a-z0-9_]+\b")


def referenced_metric_names() -> set[str]:
    """Metric names in the alert rules and the dashboard (quoted label values stripped)."""
    exprs = [
        rule["expr"]
        for group in yaml.safe_load((OPS / "alerts" / "sir-engine.rules.yml").read_text())["groups"]
        for rule in group["rules"]
    ]
    board = json.loads((OPS / "grafana" / "sir-engine.json").read_text())
    exprs += [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    names: set[str] = set()
    for expr in exprs:
        names |= set(_NAME.findall(re.sub(r'"[^"]*"', '""', expr)))
    return names


_DECLARED = """
import prometheus_client
import http_front.app, workers.actors  # every module that registers metrics
from dramatiq.middleware.prometheus import Prometheus
# Dramatiq creates its metrics at worker boot in a private registry: collect them in ours.
prometheus_client.CollectorRegistry = lambda *a, **k: prometheus_client.REGISTRY
Prometheus().after_process_boot(None)
print("\\n".join(sorted(prometheus_client.REGISTRY._names_to_collectors)))
"""


def declared_metric_names(env: dict[str, str]) -> set[str]:
    listed = subprocess.run(
        [sys.executable, "-c", _DECLARED],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(listed.stdout.split())


def _samples(body: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def _scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return _samples(response.read().decode())
    except OSError:
        return {}


def _value(samples, name: str, **labels: str) -> float | None:
    for found, value in samples.get(name, []):
        if all(found.get(k) == v for k, v in labels.items()):
            return value
    return None


async def _flaky_receiver() -> tuple[web.AppRunner, str, list[int]]:
    """Answers 500 to the first delivery and 200 after: one failed attempt, then success."""
    answered: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        answered.append(500 if not answered else 200)
        return web.Response(status=answered[-1])

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook", answered


def _poison(env: dict[str, str]) -> None:
    # A delivery id that is not a string: the database refuses the statement, the actor fails
    # with a non-transient error, and Dramatiq dead-letters the message.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "from workers.webhook_actors import deliver_webhook; deliver_webhook.send({'x': 1})",
        ],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=60,
    )


async def test_every_metric_the_alerts_and_dashboard_name_is_exported(
    db, box, make_partner, services, tmp_path
):
    referenced = referenced_metric_names()
    assert len(referenced) >= 20, referenced
    runner, hook_url, answered = await _flaky_receiver()
    # A pool under its low-balance threshold (100 tokens, threshold 500).
    partner = await make_partner(funding="100", low_balance_threshold=Tokens.parse("500"))
    async with db.begin() as conn:
        keys = await issue_keys(
            conn, box, actor="test", partner_id=partner.partner_id, environment="sandbox", name="k"
        )
    front_port, metrics_port = free_port(), free_port()
    ticks = dict(
        SIR_QUEUE_METRICS_SECONDS="1",
        SIR_REFILL_SECONDS="1",
        SIR_OUTBOX_RELAY_SECONDS="1",
        SIR_WEBHOOK_PICKUP_SECONDS="1",
        SIR_SWEEP_SECONDS="2",
        SIR_WEBHOOK_RETRY_SCALE="0.01",
    )
    env = services.env(**ticks)
    worker_env = services.env(
        SIR_WORKER_METRICS_PORT=str(metrics_port),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"),
        **ticks,
    )
    cli = [sys.executable, "-m", "ops.cli"]
    logs = (tmp_path / "processes.log").open("w")
    processes = [
        subprocess.Popen(
            [*cli, "serve", "--processes", "2", "--port", str(front_port)],
            env=env,
            cwd=ROOT,
            stdout=logs,
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [*cli, "worker", "--processes", "1", "--threads", "4"],
            env=worker_env,
            cwd=ROOT,
            stdout=logs,
            stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            [*cli, "scheduler"], env=env, cwd=ROOT, stdout=logs, stderr=subprocess.STDOUT
        ),
    ]
    base = f"http://127.0.0.1:{front_port}"
    worker_url = f"http://127.0.0.1:{metrics_port}/metrics"
    client = redis.Redis.from_url(services.redis_url)
    try:
        wait_http_ok(f"{base}/healthz", processes[0], timeout=90)  # N fronts start at once
        async with SirClient(base, keys.secret_key, keys.hmac_secret) as sir:
            hook = await sir.request(
                "POST",
                "/v1/partner/webhooks",
                {"url": hook_url, "eventTypes": ["action.completed"], "receiveAllEvents": False},
            )
            assert hook["isActive"] is True
            result = await sir.request(
                "POST",
                "/v1/partner/actions/submit",
                {
                    "idempotencyKey": "metrics_1",
                    "actionType": "PURCHASE",
                    "amount": "10",
                    "currency": "USD",
                    "stakeholders": [{"stakeholderTypeCode": "CUSTOMER", "partnerUserId": "u1"}],
                    "autoCreateUsers": True,
                },
            )
            assert result["tokensDistributed"] == Decimal("10")
        try:
            urllib.request.urlopen(f"{base}/v1/partner/users", timeout=5).close()
        except urllib.error.HTTPError as refused:  # unsigned: 401 AUTH_REQUIRED, counted
            assert refused.code == 401
        _poison(services.env())
        # Then, within a few ticks, the worker group exports everything the alerts watch.
        deadline = time.monotonic() + 60
        worker: dict = {}
        while time.monotonic() < deadline:
            worker = _scrape(worker_url)
            if (
                _value(worker, "sir_dead_letters", queue="webhooks") == 1
                and (_value(worker, "sir_webhook_attempts_total", outcome="succeeded") or 0) >= 1
                and _value(worker, "sir_pools_below_threshold", environment="sandbox")
                and "sir_worker_dependency_errors_total" in worker
                and "sir_outbox_lag_seconds" in worker
                and all(
                    _value(worker, "sir_tick_last_run_timestamp_seconds", tick=tick)
                    for tick in TICKS
                )
            ):
                break
            await asyncio.sleep(0.5)
        front = _scrape(f"{base}/metrics")
        scraped = set(worker) | set(front)
        missing = referenced - scraped
        assert missing <= NEEDS_A_FAULT, (missing, sorted(worker))
        declared = declared_metric_names(env)
        assert referenced <= scraped | declared, referenced - scraped - declared
        assert NEEDS_A_FAULT <= declared
        # And the figures are the ones the traffic made.
        assert answered[:2] == [500, 200]
        assert _value(worker, "sir_webhook_attempts_total", outcome="http_error") == 1
        assert _value(worker, "sir_worker_dependency_errors_total", dependency="database") >= 1
        assert _value(worker, "dramatiq_message_rejects_total", actor_name="deliver_webhook") == 1
        assert _value(worker, "sir_pools_below_threshold", environment="sandbox") >= 1
        for queue in ("distribution", "webhooks", "sweeps", "maintenance"):
            assert _value(worker, "sir_queue_depth", queue=queue) is not None
            assert _value(worker, "sir_queue_oldest_message_age_seconds", queue=queue) is not None
        for tick in TICKS:  # each sampling tick stamped its last run just now
            stamp = _value(worker, "sir_tick_last_run_timestamp_seconds", tick=tick)
            assert stamp is not None and abs(time.time() - stamp) < 120, (tick, stamp)
        assert _value(front, "sir_auth_failures_total", code="AUTH_REQUIRED") >= 1
        assert (
            _value(front, "sir_http_requests_total", route_class="partner:actions", status="200")
            == 1
        )
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        logs.close()
        await runner.cleanup()
        # The poisoned message must not linger for other tests' dead-letter listings.
        client.delete("dramatiq:webhooks.XQ", "dramatiq:webhooks.XQ.msgs")
