"""`create_app(settings)`: wires resources, middlewares and routes. Nothing else."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from engine.crypto import SecretBox
from engine.db import create_engine
from engine.group_commit import GroupCommitter
from engine.settings import Settings
from engine.vendors import Vendors
from http_front import (
    actions,
    admin,
    admin_marketplace,
    batches,
    campaigns,
    dashboard,
    donations,
    health,
    marketplace,
    openapi,
    pools,
    portal,
    providers,
    transactions,
    users,
    webhooks,
    widget,
)
from http_front.auth_partner import ensure_replay_epoch
from http_front.keys import (
    DB,
    DISPATCH,
    GROUP_COMMIT,
    NUDGE,
    REDIS,
    SECRET_BOX,
    SETTINGS,
    VENDORS,
)
from http_front.middlewares import error_middleware, nul_guard_middleware, request_id_middleware
from http_front.usage import usage_ctx, usage_middleware
from workers.dispatch import Dispatcher, Nudge

log = logging.getLogger("sir.http")

MAX_BODY = 1024 * 1024  # 1 MiB; /actions/batch raises its own limit to 8 MiB


async def _database(app: web.Application) -> AsyncIterator[None]:
    engine = create_engine(app[SETTINGS].database_url)
    app[DB] = engine

    def nudge_relay() -> None:
        # The nudge comes up with the dispatcher, a later cleanup context; the tick covers until then.
        nudge = app.get(NUDGE)
        if nudge is not None:
            nudge()

    app[GROUP_COMMIT] = GroupCommitter(engine, after_commit=nudge_relay)
    app[VENDORS] = Vendors(engine, app[SECRET_BOX])
    yield
    await app[GROUP_COMMIT].close()  # let batches in flight commit before the pool closes
    await engine.dispose()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    client = aioredis.from_url(
        app[SETTINGS].redis_url,
        socket_timeout=2,
        socket_connect_timeout=2,
        health_check_interval=15,
    )
    app[REDIS] = client
    try:
        # Set the replay epoch now rather than on the first signed write, so writes signed just
        # after a fresh Redis start are not refused as replays (contract 3.1's epoch rule).
        await ensure_replay_epoch(client)
    except RedisError as exc:  # a Redis that is down now fails requests closed later, not startup
        log.warning("replay epoch not set at startup: %s", type(exc).__name__)
    yield
    await client.aclose()


async def _dispatcher(app: web.Application) -> AsyncIterator[None]:
    """Nudges to the workers (relay, batches, deliveries); the periodic ticks are the guarantee."""
    dispatcher = Dispatcher(app[SETTINGS].redis_url)
    app[DISPATCH] = dispatcher
    app[NUDGE] = Nudge(dispatcher, "webhooks", "relay_outbox")
    yield
    dispatcher.close()


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[
            request_id_middleware,
            usage_middleware,
            error_middleware,
            nul_guard_middleware,
        ],
        client_max_size=MAX_BODY,
    )
    app[SETTINGS] = settings
    app[SECRET_BOX] = SecretBox(settings.master_key)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(_dispatcher)
    app.cleanup_ctx.append(usage_ctx)
    app.add_routes(health.routes)
    for module in (
        admin,
        portal,
        users,
        actions,
        batches,
        campaigns,
        pools,
        transactions,
        webhooks,
        marketplace,
        admin_marketplace,
        widget,
        donations,
        providers,
        dashboard,
        openapi,
    ):
        module.add_routes(app)
    return app
