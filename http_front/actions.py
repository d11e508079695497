"""Action endpoints (contract section 7, "Actions"): translate HTTP to `engine.submit` and
`engine.actions`. Submit is synchronous: 200 with everything applied, or an error with nothing."""

from __future__ import annotations

from aiohttp import web

from engine import actions
from engine.errors import (
    AlreadyReversed,
    CampaignBudgetExhausted,
    CampaignNotApplicable,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    Idempotent,
    InsufficientPool,
    NoActivePool,
    NotFound,
    ReversalExceedsAction,
    UnknownActionType,
    UnknownOrganization,
    UnknownStakeholderType,
    UnknownUser,
)
from engine.reversals import reverse_action
from http_front.auth_partner import secret_key_required
from http_front.body import json_response, read_model
from http_front.keys import DB, GROUP_COMMIT
from http_front.openapi import FROM, PAGE, TO, Query, documented
from http_front.params import time_range
from http_front.principal import principal
from schemas.actions import ReverseAction, SubmitAction
from schemas.responses import ActionList, ActionOut, ReversalResult, SubmitResult

BASE = "/v1/partner/actions"


@documented(
    "Submit an action",
    auth="secret",
    request=SubmitAction,
    responses={200: SubmitResult},
    errors=[
        Idempotent,
        IdempotencyKeyReused,
        IdempotencyInProgress,
        UnknownActionType,
        UnknownStakeholderType,
        UnknownUser,
        UnknownOrganization,
        CampaignNotApplicable,
        CampaignBudgetExhausted,
        InsufficientPool,
        NoActivePool,
    ],
)
@secret_key_required
async def submit(request: web.Request) -> web.Response:
    body = await read_model(request, SubmitAction)
    # Coalesced with concurrent submissions of the same partner-environment (group commit).
    result = await request.app[GROUP_COMMIT].submit(principal(request).scope, body.to_request())
    return json_response(result)


@documented(
    "List actions",
    auth="secret",
    responses={200: ActionList},
    query=[
        *PAGE,
        Query("actionType", "Only this action type"),
        Query("status", "Only this status", enum=("COMPLETED", "PARTIALLY_REVERSED", "REVERSED")),
        FROM,
        TO,
    ],
)
@secret_key_required
async def list_actions(request: web.Request) -> web.Response:
    created_from, created_to = time_range(request)
    async with request.app[DB].connect() as conn:
        data, cursor = await actions.list_actions(
            conn,
            principal(request).scope,
            limit=request.query.get("limit"),
            cursor=request.query.get("cursor"),
            action_type=request.query.get("actionType") or None,
            status=request.query.get("status") or None,
            created_from=created_from,
            created_to=created_to,
        )
    return json_response({"data": data, "nextCursor": cursor})


@documented("Get an action", auth="secret", responses={200: ActionOut}, errors=[NotFound])
@secret_key_required
async def get_action(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        body = await actions.get_action(
            conn, principal(request).scope, request.match_info["action_id"]
        )
    return json_response(body)


@documented(
    "Reverse an action",
    auth="secret",
    request=ReverseAction,
    responses={200: ReversalResult},
    errors=[NotFound, Idempotent, IdempotencyKeyReused, AlreadyReversed, ReversalExceedsAction],
)
@secret_key_required
async def reverse(request: web.Request) -> web.Response:
    body = await read_model(request, ReverseAction)
    result = await reverse_action(
        request.app[DB],
        principal(request).scope,
        request.match_info["action_id"],
        body.to_request(),
    )
    return json_response(result)


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{BASE}/submit", submit)
    app.router.add_get(BASE, list_actions)
    app.router.add_get(f"{BASE}/{{action_id}}", get_action)
    app.router.add_post(f"{BASE}/{{action_id}}/reverse", reverse)
