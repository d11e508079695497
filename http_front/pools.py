"""Partner token-pool endpoints (contract section 7 "Token pools"): list, read, ask for a top-up.

Secret key with HMAC on every route; the caller's scope confines every query, so another
partner's or environment's pool answers 404 (also when named in a top-up request's body).
"""

from __future__ import annotations

from aiohttp import web

from engine import pools, topups
from engine.errors import NotFound
from engine.pagination import read_page
from http_front.auth_partner import secret_key_required
from http_front.body import json_response, read_model
from http_front.keys import DB
from http_front.openapi import PAGE, Query, documented
from http_front.principal import principal
from schemas.pools import TopupRequest, pool_json, topup_request_json
from schemas.responses import PoolList, PoolOut, TopupRequestOut

BASE = "/v1/partner/token-pools"


@documented(
    "List token pools",
    auth="secret",
    responses={200: PoolList},
    query=[*PAGE, Query("status", "Only this status", enum=("ACTIVE", "EXHAUSTED", "CLOSED"))],
)
@secret_key_required
async def list_pools(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    page = read_page(request.query.get("limit"), request.query.get("cursor"), {"status": status})
    async with request.app[DB].connect() as conn:
        # One snapshot: each pool's figures come from several reads that must agree.
        snapshot = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with snapshot.begin():
            views, cursor = await pools.list_pool_views(
                snapshot, principal(request).scope, page, status=status
            )
    return json_response({"data": [pool_json(v) for v in views], "nextCursor": cursor})


@documented("Get a token pool", auth="secret", responses={200: PoolOut}, errors=[NotFound])
@secret_key_required
async def get_pool(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        snapshot = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with snapshot.begin():
            view = await pools.pool_view(
                snapshot, principal(request).scope, request.match_info["pool_id"]
            )
    return json_response(pool_json(view))


@documented(
    "Ask for a top-up",
    auth="secret",
    request=TopupRequest,
    responses={201: TopupRequestOut},
    errors=[NotFound],
)
@secret_key_required
async def request_topup(request: web.Request) -> web.Response:
    body = await read_model(request, TopupRequest)
    async with request.app[DB].begin() as conn:
        row = await topups.request_topup(
            conn, principal(request).scope, body.pool_id, body.amount, body.reason
        )
    return json_response(topup_request_json(row), status=201)


def add_routes(app: web.Application) -> None:
    # The literal route first: "request" is not a pool id.
    app.router.add_post(BASE + "/request", request_topup)
    app.router.add_get(BASE, list_pools)
    app.router.add_get(BASE + "/{pool_id}", get_pool)
