"""Webhook endpoints (contract section 7 "Webhooks"): translate HTTP to `engine.webhooks`.

Secret key with HMAC on every route; the caller's scope confines every query, so another
partner's or environment's endpoint or delivery answers 404. `test` and `retry` record a
delivery due now and nudge a worker after the commit; the nudge is best effort, the workers'
pick-up tick (every SIR_WEBHOOK_PICKUP_SECONDS) is the guarantee.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from engine import webhooks
from engine.errors import NotFound, WebhookEndpointInactive
from engine.pagination import read_page
from http_front.auth_partner import secret_key_required
from http_front.body import json_response, read_model
from http_front.keys import DB, DISPATCH, SECRET_BOX, SETTINGS
from http_front.openapi import PAGE, Query, documented
from http_front.principal import principal
from schemas.responses import (
    DeletedOut,
    DeliveryList,
    DeliveryOut,
    WebhookEndpointList,
    WebhookEndpointOut,
    WebhookEndpointWithSecret,
)
from schemas.webhooks import EndpointCreate, EndpointPatch

BASE = "/v1/partner/webhooks"
DELIVERIES = "/v1/partner/webhook-deliveries"


@documented(
    "Register a webhook endpoint",
    auth="secret",
    request=EndpointCreate,
    responses={201: WebhookEndpointWithSecret},
)
@secret_key_required
async def create_endpoint(request: web.Request) -> web.Response:
    body = await read_model(request, EndpointCreate)
    box = request.app[SECRET_BOX]
    async with request.app[DB].begin() as conn:
        row, secret = await webhooks.create_endpoint(
            conn,
            box,
            principal(request).scope,
            body.to_spec(),
            allow_private=request.app[SETTINGS].webhook_allow_private,
        )
    return json_response({**webhooks.endpoint_json(row, box), "secret": secret}, status=201)


@documented(
    "List webhook endpoints", auth="secret", responses={200: WebhookEndpointList}, query=PAGE
)
@secret_key_required
async def list_endpoints(request: web.Request) -> web.Response:
    page = read_page(request.query.get("limit"), request.query.get("cursor"), {})
    box = request.app[SECRET_BOX]
    async with request.app[DB].connect() as conn:
        rows, cursor = await webhooks.list_endpoints(conn, principal(request).scope, page)
    return json_response(
        {"data": [webhooks.endpoint_json(r, box) for r in rows], "nextCursor": cursor}
    )


@documented(
    "Get a webhook endpoint", auth="secret", responses={200: WebhookEndpointOut}, errors=[NotFound]
)
@secret_key_required
async def get_endpoint(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        row = await webhooks.get_endpoint(
            conn, principal(request).scope, request.match_info["endpoint_id"]
        )
    return json_response(webhooks.endpoint_json(row, request.app[SECRET_BOX]))


@documented(
    "Update a webhook endpoint",
    auth="secret",
    request=EndpointPatch,
    responses={200: WebhookEndpointOut},
    errors=[NotFound],
)
@secret_key_required
async def patch_endpoint(request: web.Request) -> web.Response:
    body = await read_model(request, EndpointPatch)
    box = request.app[SECRET_BOX]
    async with request.app[DB].begin() as conn:
        row = await webhooks.patch_endpoint(
            conn,
            box,
            principal(request).scope,
            request.match_info["endpoint_id"],
            body.to_changes(),
            allow_private=request.app[SETTINGS].webhook_allow_private,
        )
    return json_response(webhooks.endpoint_json(row, box))


@documented(
    "Delete a webhook endpoint", auth="secret", responses={200: DeletedOut}, errors=[NotFound]
)
@secret_key_required
async def delete_endpoint(request: web.Request) -> web.Response:
    endpoint_id = request.match_info["endpoint_id"]
    async with request.app[DB].begin() as conn:
        await webhooks.delete_endpoint(conn, principal(request).scope, endpoint_id)
    return json_response({"id": endpoint_id, "deleted": True})


@documented(
    "Rotate a webhook secret",
    auth="secret",
    responses={200: WebhookEndpointWithSecret},
    errors=[NotFound],
)
@secret_key_required
async def rotate_secret(request: web.Request) -> web.Response:
    box = request.app[SECRET_BOX]
    async with request.app[DB].begin() as conn:
        row, secret = await webhooks.rotate_secret(
            conn, box, principal(request).scope, request.match_info["endpoint_id"], _now()
        )
    return json_response({**webhooks.endpoint_json(row, box), "secret": secret})


@documented(
    "Send a webhook.test event",
    auth="secret",
    responses={202: DeliveryOut},
    errors=[NotFound, WebhookEndpointInactive],
)
@secret_key_required
async def send_test(request: web.Request) -> web.Response:
    async with request.app[DB].begin() as conn:
        delivery = await webhooks.send_test(
            conn, principal(request).scope, request.match_info["endpoint_id"], _now()
        )
    await _nudge(request, delivery["id"])
    return json_response(webhooks.delivery_json(delivery), status=202)


@documented(
    "List an endpoint's deliveries",
    auth="secret",
    responses={200: DeliveryList},
    errors=[NotFound],
    query=[*PAGE, Query("status", "Only this status", enum=("PENDING", "SUCCEEDED", "FAILED"))],
)
@secret_key_required
async def list_deliveries(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    page = read_page(request.query.get("limit"), request.query.get("cursor"), {"status": status})
    async with request.app[DB].connect() as conn:
        rows, cursor = await webhooks.list_deliveries(
            conn, principal(request).scope, request.match_info["endpoint_id"], page, status=status
        )
    return json_response({"data": [webhooks.delivery_json(r) for r in rows], "nextCursor": cursor})


@documented(
    "Replay a delivery",
    auth="secret",
    responses={202: DeliveryOut},
    errors=[NotFound, WebhookEndpointInactive],
)
@secret_key_required
async def retry_delivery(request: web.Request) -> web.Response:
    async with request.app[DB].begin() as conn:
        delivery = await webhooks.replay_delivery(
            conn, principal(request).scope, request.match_info["delivery_id"], _now()
        )
    await _nudge(request, delivery["id"])
    return json_response(webhooks.delivery_json(delivery), status=202)


async def _nudge(request: web.Request, delivery_id: str) -> None:
    # By name: the front never imports the actors. A refused send is logged by the dispatcher.
    dispatcher = request.app.get(DISPATCH)
    if dispatcher is not None:
        await dispatcher.send_soon("webhooks", "deliver_webhook", delivery_id)


def _now() -> datetime:
    return datetime.now(UTC)


def add_routes(app: web.Application) -> None:
    app.router.add_post(BASE, create_endpoint)
    app.router.add_get(BASE, list_endpoints)
    app.router.add_get(BASE + "/{endpoint_id}", get_endpoint)
    app.router.add_patch(BASE + "/{endpoint_id}", patch_endpoint)
    app.router.add_delete(BASE + "/{endpoint_id}", delete_endpoint)
    app.router.add_post(BASE + "/{endpoint_id}/rotate-secret", rotate_secret)
    app.router.add_post(BASE + "/{endpoint_id}/test", send_test)
    app.router.add_get(BASE + "/{endpoint_id}/deliveries", list_deliveries)
    app.router.add_post(DELIVERIES + "/{delivery_id}/retry", retry_delivery)
