"""The partner portal (JWT): login, refresh, me, and self-service keys. Handlers translate only.

Login is limited to 5 attempts per minute per email and per client IP (contract 3.3), counted
in Redis by `http_front.ratelimit` so every front process shares the budget. Every attempt
counts, successful or not: the limit is on guessing, and a real user logs in once.
"""

from __future__ import annotations

import hashlib
from typing import Any

from aiohttp import web

from engine import credentials, partners, portal
from engine.errors import (
    InvalidCredentials,
    InvalidToken,
    KeyNotUsable,
    NotFound,
    PartnerInactive,
    PartnerNotApproved,
    RateLimited,
    TokenExpired,
    ValidationFailed,
)
from engine.pagination import read_page
from http_front.auth_partner import client_ip, keyring
from http_front.auth_portal import portal_required, portal_user, signer
from http_front.body import json_response, read_model
from http_front.keys import DB, REDIS, SECRET_BOX
from http_front.openapi import ENVIRONMENT, PAGE, documented
from http_front.ratelimit import MINUTE, consume
from schemas import admin as admin_wire
from schemas import portal as wire
from schemas.responses import IssuedKeyOut, KeyList, KeyOut, MeOut, PartnerInfoOut, SessionOut

PREFIX = "/v1/partner"
LOGIN_LIMITS = [(5, MINUTE)]


async def _limit_login(request: web.Request, email: str) -> None:
    """Spend one login attempt for this email and this client IP; RateLimited when either
    budget is gone. The email is hashed so Redis never holds a list of addresses."""
    digest = hashlib.sha256(portal.normalize_email(email).encode()).hexdigest()[:32]
    buckets = (f"sir:portal-login:email:{digest}", f"sir:portal-login:ip:{client_ip(request)}")
    for bucket in buckets:
        verdict = await consume(request.app[REDIS], bucket, LOGIN_LIMITS)
        if not verdict.allowed:
            error = RateLimited(
                "Too many login attempts; retry after the number of seconds in Retry-After",
                details={"retryAfter": verdict.retry_after},
            )
            error.headers = verdict.headers()  # type: ignore[attr-defined]
            raise error


async def _session(request: web.Request, user: dict[str, Any]) -> web.Response:
    async with request.app[DB].connect() as conn:
        partner = None
        key = None
        if user["partner_id"] is not None:
            partner = await partners.get_partner(conn, user["partner_id"])
            key = await portal.publishable_key_for(conn, partner)
    tokens = signer(request).issue_pair(user["id"])
    return json_response(wire.session_json(tokens, partner, key))


# -- authentication -------------------------------------------------------------------------------


@documented(
    "Log in to the portal",
    auth="none",
    request=wire.Login,
    responses={200: SessionOut},
    errors=[InvalidCredentials, RateLimited],
)
async def login(request: web.Request) -> web.Response:
    body = await read_model(request, wire.Login)
    await _limit_login(request, body.email)
    async with request.app[DB].connect() as conn:
        user = await portal.authenticate(conn, body.email, body.password)
    return await _session(request, user)


@documented(
    "Refresh a portal session",
    auth="none",
    request=wire.Refresh,
    responses={200: SessionOut},
    errors=[InvalidToken, TokenExpired],
)
async def refresh(request: web.Request) -> web.Response:
    body = await read_model(request, wire.Refresh)
    async with request.app[DB].connect() as conn:
        user = await portal.user_for_token(conn, signer(request), body.refresh_token, "refresh")
    return await _session(request, user)


@documented("The portal user", auth="portal", responses={200: MeOut})
@portal_required
async def me(request: web.Request) -> web.Response:
    user = portal_user(request)
    partner = None
    if user["partner_id"] is not None:
        async with request.app[DB].connect() as conn:
            partner = await partners.get_partner(conn, user["partner_id"])
    return json_response(wire.me_json(user, partner))


# -- self-service keys ----------------------------------------------------------------------------


def _partner_id(request: web.Request) -> str:
    """The caller's partner; a user without one has no keys to see (404)."""
    partner_id = portal_user(request)["partner_id"]
    if partner_id is None:
        raise NotFound("No partner yet: create a sandbox key to register one")
    return str(partner_id)


@documented(
    "Issue a key pair (self-service)",
    auth="portal",
    request=wire.SelfServiceKeyCreate,
    responses={201: IssuedKeyOut},
    errors=[PartnerNotApproved, PartnerInactive],
)
@portal_required
async def create_key(request: web.Request) -> web.Response:
    body = await read_model(request, wire.SelfServiceKeyCreate)
    async with request.app[DB].begin() as conn:
        issued = await portal.issue_self_service_keys(
            conn,
            request.app[SECRET_BOX],
            user_id=portal_user(request)["id"],
            name=body.name,
            environment=body.environment,
        )
    return json_response(admin_wire.issued_json(issued), status=201)


@documented(
    "List the partner's keys", auth="portal", responses={200: KeyList}, query=[*PAGE, ENVIRONMENT]
)
@portal_required
async def list_keys(request: web.Request) -> web.Response:
    environment = request.query.get("environment") or None
    if environment not in (None, "sandbox", "production"):
        raise ValidationFailed({"environment": ["must be sandbox or production"]})
    page = read_page(
        request.query.get("limit"), request.query.get("cursor"), {"environment": environment}
    )
    partner_id = portal_user(request)["partner_id"]
    if partner_id is None:
        return json_response(admin_wire.page_json([], None))
    async with request.app[DB].connect() as conn:
        rows, cursor = await credentials.list_keys(conn, partner_id, page, environment=environment)
    return json_response(admin_wire.page_json([admin_wire.key_json(r) for r in rows], cursor))


@documented(
    "The partner of the portal user",
    auth="portal",
    responses={200: PartnerInfoOut},
    errors=[NotFound],
)
@portal_required
async def partner_info(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        partner = await partners.get_partner(conn, _partner_id(request))
    return json_response(admin_wire.partner_info_json(partner))


@documented("Get a key", auth="portal", responses={200: KeyOut}, errors=[NotFound])
@portal_required
async def get_key(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        row = await credentials.get_key(conn, _partner_id(request), request.match_info["key_id"])
    return json_response(admin_wire.key_json(row))


@documented(
    "Update a key",
    auth="portal",
    request=wire.KeyPatch,
    responses={200: KeyOut},
    errors=[NotFound, KeyNotUsable],
)
@portal_required
async def patch_key(request: web.Request) -> web.Response:
    body = await read_model(request, wire.KeyPatch)
    async with request.app[DB].begin() as conn:
        row = await credentials.update_key(
            conn,
            actor=f"portal:{portal_user(request)['id']}",
            partner_id=_partner_id(request),
            key_id=request.match_info["key_id"],
            changes=body.changes(),
        )
    keyring(request.app).invalidate()  # this process at once; the others within 1 s
    return json_response(admin_wire.key_json(row))


@documented("Revoke a key", auth="portal", responses={200: KeyOut}, errors=[NotFound])
@portal_required
async def revoke_key(request: web.Request) -> web.Response:
    async with request.app[DB].begin() as conn:
        row = await credentials.revoke_key(
            conn,
            actor=f"portal:{portal_user(request)['id']}",
            partner_id=_partner_id(request),
            key_id=request.match_info["key_id"],
        )
    keyring(request.app).invalidate()
    return json_response(admin_wire.key_json(row))


def add_routes(app: web.Application) -> None:
    """Register the portal's JWT endpoints under /v1/partner (auth and keys)."""
    p = PREFIX
    app.router.add_post(f"{p}/auth/login", login)
    app.router.add_post(f"{p}/auth/refresh", refresh)
    app.router.add_get(f"{p}/auth/me", me)
    app.router.add_post(f"{p}/keys", create_key)
    app.router.add_get(f"{p}/keys", list_keys)
    # Registered before /keys/{key_id} so "partner-info" is never taken for a key id.
    app.router.add_get(f"{p}/keys/partner-info", partner_info)
    app.router.add_get(f"{p}/keys/{{key_id}}", get_key)
    app.router.add_patch(f"{p}/keys/{{key_id}}", patch_key)
    app.router.add_delete(f"{p}/keys/{{key_id}}", revoke_key)
