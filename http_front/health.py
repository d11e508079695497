"""Operations endpoints: liveness, readiness (PostgreSQL and Redis), Prometheus metrics."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text

from http_front.keys import DB, REDIS
from http_front.openapi import documented
from schemas.responses import HealthOut, ReadinessOut

routes = web.RouteTableDef()


@routes.get("/healthz")
@documented("Liveness", auth="none", responses={200: HealthOut})
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _check(name: str, probe) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    try:
        await asyncio.wait_for(probe(), timeout=2)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return name, f"unavailable: {type(exc).__name__}"
    return name, "ok"


@routes.get("/readyz")
@documented(
    "Readiness: PostgreSQL and Redis reachable",
    auth="none",
    responses={200: ReadinessOut, 503: ReadinessOut},
)
async def readyz(request: web.Request) -> web.Response:
    async def database() -> None:
        async with request.app[DB].connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def redis() -> None:
        await request.app[REDIS].ping()

    checks = dict(await asyncio.gather(_check("database", database), _check("redis", redis)))
    ready = all(v == "ok" for v in checks.values())
    response = web.json_response(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
    if not ready:
        response.headers["Retry-After"] = "5"
    return response


@routes.get("/metrics")
@documented("Prometheus metrics", auth="none", responses={200: "text/plain"})
async def metrics(request: web.Request) -> web.Response:
    # `serve --processes N` puts its children in Prometheus multiprocess mode: the port is
    # shared, so any child must answer for all of them (counters summed across processes).
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
