"""Partner-user endpoints (contract section 7 "Users"): translate HTTP to `engine.users`.

Every handler needs the secret key with HMAC and works in the caller's scope (partner and
environment from the key), so another partner's or environment's user answers 404.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from engine import users
from engine.errors import NotFound
from http_front.auth_partner import secret_key_required
from http_front.body import json_response, read_model
from http_front.keys import DB
from http_front.openapi import FROM, PAGE, TO, Query, documented
from http_front.params import time_range
from http_front.principal import principal
from schemas.users import BalanceOut, TransactionList, UpdateUser, UpsertUser, UserList, UserOut

BASE = "/v1/partner/users"


# -- wire views ---------------------------------------------------------------------------------------


def user_view(user: users.PartnerUser) -> dict[str, Any]:
    return {
        "id": user.id,
        "externalUserId": user.external_user_id,
        "email": user.email,
        "firstName": user.first_name,
        "lastName": user.last_name,
        "metadata": user.metadata,
        "createdAt": user.created_at,
        "updatedAt": user.updated_at,
    }


def balance_view(balance: users.Balance) -> dict[str, Any]:
    vesting = balance.next_vesting
    return {
        "externalUserId": balance.external_user_id,
        "available": balance.available,
        "locked": balance.locked,
        "total": balance.total,
        "lifetimeEarned": balance.lifetime_earned,
        "lifetimeRedeemed": balance.lifetime_redeemed,
        "lifetimeExpired": balance.lifetime_expired,
        "lifetimeReversed": balance.lifetime_reversed,
        "nextVesting": None if vesting is None else {"amount": vesting.amount, "at": vesting.at},
        "expiringSoon": [
            {"amount": lot.amount, "expiresAt": lot.expires_at} for lot in balance.expiring_soon
        ],
    }


def transaction_view(line: users.Transaction) -> dict[str, Any]:
    return {
        "id": line.id,
        "type": line.type,
        "amount": line.amount,
        "wallet": line.wallet,
        "poolId": line.pool_id,
        "externalUserId": line.external_user_id,
        "organizationSlug": None,  # a user's wallet; organizations have wallets of their own
        "actionId": line.action_id,
        "orderId": line.order_id,
        "createdAt": line.created_at,
        "vestsAt": line.vests_at,
        "expiresAt": line.expires_at,
    }


def _external_id(request: web.Request) -> str:
    # aiohttp has already percent-decoded the segment (an id may hold an encoded "/").
    return request.match_info["external_id"]


# -- handlers ----------------------------------------------------------------------------------------------


@documented(
    "List users",
    auth="secret",
    responses={200: UserList},
    query=[*PAGE, Query("email", "Only users with this email (case-insensitive)"), FROM, TO],
)
@secret_key_required
async def list_users(request: web.Request) -> web.Response:
    created_from, created_to = time_range(request)
    async with request.app[DB].connect() as conn:
        page, cursor = await users.list_users(
            conn,
            principal(request).scope,
            limit=request.query.get("limit"),
            cursor=request.query.get("cursor"),
            email=request.query.get("email") or None,
            created_from=created_from,
            created_to=created_to,
        )
    return json_response({"data": [user_view(u) for u in page], "nextCursor": cursor})


def _changes(model: UpsertUser | UpdateUser) -> dict[str, Any]:
    """Only the fields the caller sent: absent leaves a field alone, null clears it."""
    sent = model.model_fields_set
    return {
        name: getattr(model, name)
        for name in ("email", "first_name", "last_name", "metadata")
        if name in sent
    }


@documented(
    "Create or update a user",
    auth="secret",
    request=UpsertUser,
    responses={200: UserOut, 201: UserOut},
)
@secret_key_required
async def upsert_user(request: web.Request) -> web.Response:
    body = await read_model(request, UpsertUser)
    async with request.app[DB].begin() as conn:
        user, created = await users.upsert_user(
            conn, principal(request).scope, body.external_user_id, **_changes(body)
        )
    return json_response(user_view(user), status=201 if created else 200)


@documented("Get a user", auth="secret", responses={200: UserOut}, errors=[NotFound])
@secret_key_required
async def get_user(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        user = await users.get_user(conn, principal(request).scope, _external_id(request))
    return json_response(user_view(user))


@documented(
    "Update a user", auth="secret", request=UpdateUser, responses={200: UserOut}, errors=[NotFound]
)
@secret_key_required
async def update_user(request: web.Request) -> web.Response:
    body = await read_model(request, UpdateUser)
    async with request.app[DB].begin() as conn:
        user = await users.update_user(
            conn, principal(request).scope, _external_id(request), **_changes(body)
        )
    return json_response(user_view(user))


@documented("Get a user's balance", auth="secret", responses={200: BalanceOut}, errors=[NotFound])
@secret_key_required
async def get_balance(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        # One snapshot: balances, postings and lots read while actions land must agree.
        snapshot = await conn.execution_options(isolation_level="REPEATABLE READ")
        async with snapshot.begin():
            balance = await users.get_balance(
                snapshot, principal(request).scope, _external_id(request)
            )
    return json_response(balance_view(balance))


@documented(
    "List a user's wallet transactions",
    auth="secret",
    responses={200: TransactionList},
    errors=[NotFound],
    query=[*PAGE, Query("type", "Only this posting type"), FROM, TO],
)
@secret_key_required
async def list_transactions(request: web.Request) -> web.Response:
    created_from, created_to = time_range(request)
    async with request.app[DB].connect() as conn:
        lines, cursor = await users.list_transactions(
            conn,
            principal(request).scope,
            _external_id(request),
            limit=request.query.get("limit"),
            cursor=request.query.get("cursor"),
            posting_type=request.query.get("type") or None,
            created_from=created_from,
            created_to=created_to,
        )
    return json_response({"data": [transaction_view(t) for t in lines], "nextCursor": cursor})


def add_routes(app: web.Application) -> None:
    app.router.add_get(BASE, list_users)
    app.router.add_post(BASE, upsert_user)
    app.router.add_get(BASE + "/{external_id}", get_user)
    app.router.add_patch(BASE + "/{external_id}", update_user)
    app.router.add_get(BASE + "/{external_id}/balance", get_balance)
    app.router.add_get(BASE + "/{external_id}/transactions", list_transactions)
