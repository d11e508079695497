"""Prometheus metrics of the front. Route classes, not raw paths, keep label cardinality low."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "sir_http_requests_total", "HTTP requests answered", ["route_class", "method", "status"]
)
LATENCY = Histogram(
    "sir_http_request_seconds",
    "Time to answer an HTTP request",
    ["route_class"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
AUTH_FAILURES = Counter("sir_auth_failures_total", "Refused authentications", ["code"])
DEPENDENCY_ERRORS = Counter(
    "sir_http_dependency_errors_total",
    "Requests that failed on a database or Redis error (answered 503 or 500)",
    ["dependency"],  # database, redis
)


def route_class(path: str) -> str:
    """`/v1/partner/users/u_1/balance` -> `partner:users`; unknown paths collapse to `other`."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["v1", "partner"] and len(parts) > 2:
        return f"partner:{parts[2]}"
    if parts[:3] == ["api", "v1", "admin"] and len(parts) > 3:
        return f"admin:{parts[3]}"
    if parts and parts[0] in {"healthz", "readyz", "metrics", "partner-api"}:
        return parts[0]
    return "other"
