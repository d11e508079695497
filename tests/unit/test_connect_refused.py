"""A connection PostgreSQL refuses while it shuts down or starts up (asyncpg raises it unwrapped)
is "database unreachable": 503 with Retry-After from the front, a transient fault for the
workers' retries. Found by the chaos harness (`ops/chaos`), where a restart gave 500s."""

from __future__ import annotations

import asyncpg.exceptions
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from http_front.middlewares import error_middleware
from workers.broker import is_transient


def test_refused_connections_are_transient_for_workers():
    assert is_transient(asyncpg.exceptions.CannotConnectNowError("shutting down"))
    assert is_transient(asyncpg.exceptions.ConnectionDoesNotExistError("closed"))
    assert not is_transient(asyncpg.exceptions.UniqueViolationError("duplicate"))


async def test_front_answers_503_while_postgres_refuses_connections():
    async def handler(request: web.Request) -> web.Response:
        raise asyncpg.exceptions.CannotConnectNowError("the database system is shutting down")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/", handler)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/")
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        assert (await response.json())["error"]["code"] == "SERVICE_UNAVAILABLE"
