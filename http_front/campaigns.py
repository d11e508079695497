"""Campaign endpoints (contract section 7 "Campaigns"): translate HTTP to `engine.campaigns`.

Secret key with HMAC on every route; the caller's scope (partner and environment of the key)
confines every query, so another partner's or environment's campaign answers 404.
"""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from engine import campaigns
from engine.errors import InvalidStatusTransition, NotFound
from engine.pagination import read_page
from http_front.auth_partner import secret_key_required
from http_front.body import json_response, read_model
from http_front.keys import DB
from http_front.openapi import PAGE, Query, documented
from http_front.principal import principal
from schemas.campaigns import CampaignCreate, CampaignPatch, SimulateRequest
from schemas.responses import CampaignList, CampaignOut, SimulationOut

BASE = "/v1/partner/campaigns"


@documented(
    "Create a campaign",
    auth="secret",
    request=CampaignCreate,
    responses={201: CampaignOut},
    errors=[InvalidStatusTransition],
)
@secret_key_required
async def create_campaign(request: web.Request) -> web.Response:
    body = await read_model(request, CampaignCreate)
    async with request.app[DB].begin() as conn:
        row = await campaigns.create_campaign(conn, principal(request).scope, body.to_spec())
    return json_response(campaigns.campaign_json(row), status=201)


@documented(
    "List campaigns",
    auth="secret",
    responses={200: CampaignList},
    query=[*PAGE, Query("status", "Only this status", enum=("DRAFT", "ACTIVE", "PAUSED", "ENDED"))],
)
@secret_key_required
async def list_campaigns(request: web.Request) -> web.Response:
    status = request.query.get("status") or None
    page = read_page(request.query.get("limit"), request.query.get("cursor"), {"status": status})
    async with request.app[DB].connect() as conn:
        rows, cursor = await campaigns.list_campaigns(
            conn, principal(request).scope, page, status=status
        )
    return json_response({"data": [campaigns.campaign_json(r) for r in rows], "nextCursor": cursor})


@documented("Get a campaign", auth="secret", responses={200: CampaignOut}, errors=[NotFound])
@secret_key_required
async def get_campaign(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        row = await campaigns.get_campaign_row(
            conn, principal(request).scope, request.match_info["campaign_id"]
        )
    return json_response(campaigns.campaign_json(row))


@documented(
    "Update a campaign",
    auth="secret",
    request=CampaignPatch,
    responses={200: CampaignOut},
    errors=[NotFound, InvalidStatusTransition],
)
@secret_key_required
async def patch_campaign(request: web.Request) -> web.Response:
    body = await read_model(request, CampaignPatch)
    async with request.app[DB].begin() as conn:
        row = await campaigns.patch_campaign(
            conn, principal(request).scope, request.match_info["campaign_id"], body.to_changes()
        )
    return json_response(campaigns.campaign_json(row))


@documented(
    "Simulate an action under a campaign",
    auth="secret",
    request=SimulateRequest,
    responses={200: SimulationOut},
    errors=[NotFound],
)
@secret_key_required
async def simulate(request: web.Request) -> web.Response:
    body = await read_model(request, SimulateRequest)
    stakeholders = body.to_stakeholders()
    async with request.app[DB].connect() as conn:
        result = await campaigns.simulate(
            conn,
            principal(request).scope,
            request.match_info["campaign_id"],
            action_type=body.action_type,
            amount=body.amount,
            stakeholders=stakeholders,
            at=datetime.now(UTC),  # as a submit received now would be checked
        )
    return json_response(result)


def add_routes(app: web.Application) -> None:
    app.router.add_post(BASE, create_campaign)
    app.router.add_get(BASE, list_campaigns)
    app.router.add_get(BASE + "/{campaign_id}", get_campaign)
    app.router.add_patch(BASE + "/{campaign_id}", patch_campaign)
    app.router.add_post(BASE + "/{campaign_id}/simulate", simulate)
