"""Builds `ops/grafana/sir-engine.json`, the Grafana dashboard over the metrics the engine exports.

Run `python -m ops.grafana.build` after changing a panel; a test fails when the committed JSON
differs from what this module builds, and another proves every metric a panel names is exported
by a real front or worker (tests/e2e/test_ops_metrics.py).

The dashboard assumes the scrape jobs of ops/alerts/prometheus.yml (`sir-front`, `sir-worker`)
and picks its Prometheus data source from a variable, so it imports into any Grafana (10.x+).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PATH = Path(__file__).with_name("sir-engine.json")
RATE = "$__rate_interval"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# (title, [(legend, expr)], unit, description), laid out two per row under each section title.
Panel = tuple[str, list[tuple[str, str]], str, str]

SECTIONS: list[tuple[str, list[Panel]]] = [
    (
        "Front (sir-engine serve)",
        [
            (
                "Requests per second by route class",
                [
                    (
                        "{{route_class}}",
                        f"sum by (route_class) (rate(sir_http_requests_total[{RATE}]))",
                    )
                ],
                "reqps",
                "All answers, by route class (partner:actions, partner:users, admin:..., healthz).",
            ),
            (
                "Share of 5xx answers",
                [
                    (
                        "5xx",
                        f'sum(rate(sir_http_requests_total{{status=~"5.."}}[{RATE}])) '
                        f"/ sum(rate(sir_http_requests_total[{RATE}]))",
                    ),
                    (
                        "4xx",
                        f'sum(rate(sir_http_requests_total{{status=~"4.."}}[{RATE}])) '
                        f"/ sum(rate(sir_http_requests_total[{RATE}]))",
                    ),
                ],
                "percentunit",
                "Alert SirHigh5xxRate fires above 2% for 5 minutes.",
            ),
            (
                "Latency p50 / p99 by route class",
                [
                    (
                        "p50 {{route_class}}",
                        "histogram_quantile(0.5, sum by (le, route_class) "
                        f"(rate(sir_http_request_seconds_bucket[{RATE}])))",
                    ),
                    (
                        "p99 {{route_class}}",
                        "histogram_quantile(0.99, sum by (le, route_class) "
                        f"(rate(sir_http_request_seconds_bucket[{RATE}])))",
                    ),
                ],
                "s",
                "Time to answer, measured in the front (alert SirSubmitLatencyHigh: p99 of partner:actions over 1 s).",
            ),
            (
                "Refused authentications by code",
                [("{{code}}", f"sum by (code) (rate(sir_auth_failures_total[{RATE}]))")],
                "reqps",
                "Contract 3.5 refusals: INVALID_SIGNATURE, TIMESTAMP_OUT_OF_RANGE, RATE_LIMITED, REPLAYED_REQUEST...",
            ),
        ],
    ),
    (
        "Dependencies",
        [
            (
                "Database and Redis errors (front)",
                [
                    (
                        "{{dependency}}",
                        f"sum by (dependency) (rate(sir_http_dependency_errors_total[{RATE}]))",
                    )
                ],
                "reqps",
                "Requests answered 503/500 because PostgreSQL or Redis failed (alerts SirDatabaseErrors, SirRedisErrors).",
            ),
            (
                "Database and Redis errors (workers)",
                [
                    (
                        "{{dependency}}",
                        f"sum by (dependency) (rate(sir_worker_dependency_errors_total[{RATE}]))",
                    )
                ],
                "ops",
                "Actor runs that failed on PostgreSQL or Redis (retried when transient).",
            ),
        ],
    ),
    (
        "Queues and workers (sir-engine worker)",
        [
            (
                "Messages waiting per queue",
                [("{{queue}}", "max by (queue) (sir_queue_depth)")],
                "short",
                "Ready and delayed messages. A queue that keeps growing needs more worker processes (`--queues`).",
            ),
            (
                "Oldest waiting message per queue",
                [("{{queue}}", "max by (queue) (sir_queue_oldest_message_age_seconds)")],
                "s",
                "Queue lag (alerts SirQueueLag over 5 min, SirQueueLagCritical over 30 min).",
            ),
            (
                "Messages processed per second by actor",
                [
                    (
                        "{{actor_name}}",
                        f"sum by (actor_name) (rate(dramatiq_messages_total[{RATE}]))",
                    )
                ],
                "ops",
                "Dramatiq's Prometheus middleware, every worker process summed.",
            ),
            (
                "Errors, retries and dead-lettered messages",
                [
                    ("errors", f"sum(rate(dramatiq_message_errors_total[{RATE}]))"),
                    ("retries", f"sum(rate(dramatiq_message_retries_total[{RATE}]))"),
                    ("dead-lettered", f"sum(rate(dramatiq_message_rejects_total[{RATE}]))"),
                ],
                "ops",
                "Domain errors are never retried; transient ones are, with backoff, up to 20 times.",
            ),
            (
                "Seconds since each sampling tick ran",
                [("{{tick}}", "time() - max by (tick) (sir_tick_last_run_timestamp_seconds)")],
                "s",
                "Queue, outbox and pool gauges freeze when their tick stops (alert SirTicksStale over 5 min).",
            ),
            (
                "Dead letters per queue",
                [("{{queue}}", "max by (queue) (sir_dead_letters)")],
                "short",
                "`sir-engine dead-letters list` shows them (alert SirDeadLetters).",
            ),
            (
                "Actor duration p95 and in progress",
                [
                    (
                        "p95 {{actor_name}} (ms)",
                        "histogram_quantile(0.95, sum by (le, actor_name) "
                        f"(rate(dramatiq_message_duration_milliseconds_bucket[{RATE}])))",
                    ),
                    (
                        "in progress {{actor_name}}",
                        "sum by (actor_name) (dramatiq_messages_inprogress)",
                    ),
                ],
                "short",
                "How long each actor takes, and how many run right now.",
            ),
        ],
    ),
    (
        "Events and webhooks",
        [
            (
                "Outbox lag",
                [("oldest unrelayed event", "max(sir_outbox_lag_seconds)")],
                "s",
                "Age of the oldest committed event not yet turned into deliveries (alert SirOutboxLag).",
            ),
            (
                "Events relayed per second",
                [("relayed", f"sum(rate(sir_outbox_events_relayed_total[{RATE}]))")],
                "ops",
                "Events fanned out into webhook deliveries by the relay.",
            ),
            (
                "Webhook attempts by outcome",
                [
                    (
                        "{{outcome}}",
                        f"sum by (outcome) (rate(sir_webhook_attempts_total[{RATE}]))",
                    )
                ],
                "ops",
                "succeeded, http_error, timeout, connection_error, not_allowed (alert SirWebhookFailureRate).",
            ),
            (
                "Webhook attempt latency p50 / p95",
                [
                    (
                        "p50",
                        "histogram_quantile(0.5, sum by (le) "
                        f"(rate(sir_webhook_attempt_seconds_bucket[{RATE}])))",
                    ),
                    (
                        "p95",
                        "histogram_quantile(0.95, sum by (le) "
                        f"(rate(sir_webhook_attempt_seconds_bucket[{RATE}])))",
                    ),
                ],
                "s",
                "From request sent to response read; the contract's timeout is 5 s.",
            ),
        ],
    ),
    (
        "Ledger, pools and sweeps",
        [
            (
                "Pools below threshold / exhausted",
                [
                    (
                        "below threshold {{environment}}",
                        "max by (environment) (sir_pools_below_threshold)",
                    ),
                    ("exhausted {{environment}}", "max by (environment) (sir_pools_exhausted)"),
                ],
                "short",
                "Open pools under their lowBalanceThreshold, and EXHAUSTED pools (alerts SirPoolBelowThreshold, SirPoolExhausted).",
            ),
            (
                "Ledger audit problems",
                [("problems", "max(sir_ledger_problems)")],
                "short",
                "Found by the periodic `ledger verify` (must be 0; alert SirLedgerProblems).",
            ),
            (
                "Sweep rows per second",
                [("{{sweep}}", f"sum by (sweep) (rate(sir_sweep_rows_total[{RATE}]))")],
                "ops",
                "Vesting, expiry, refill, low-balance and key-expiry sweeps.",
            ),
            (
                "Sweep batches per second",
                [("{{sweep}}", f"sum by (sweep) (rate(sir_sweep_batches_total[{RATE}]))")],
                "ops",
                "Committed sweep transactions.",
            ),
        ],
    ),
]


def _panel(panel_id: int, panel: Panel, x: int, y: int) -> dict[str, Any]:
    title, targets, unit, description = panel
    return {
        "id": panel_id,
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(65 + i)}
            for i, (legend, expr) in enumerate(targets)
        ],
    }


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y = 0
    next_id = 1
    for section, section_panels in SECTIONS:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": section,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        next_id += 1
        y += 1
        for index, panel in enumerate(section_panels):
            panels.append(_panel(next_id, panel, 12 * (index % 2), y + 8 * (index // 2)))
            next_id += 1
        y += 8 * ((len(section_panels) + 1) // 2)
    return {
        "title": "SIR engine",
        "uid": "sir-engine",
        "description": "Front, queues, webhooks, pools and ledger of sir-engine (ops/grafana/build.py).",
        "tags": ["sir-engine"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                }
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    PATH.write_text(render())
    print(f"wrote {PATH}")
