"""The operator API (`/api/v1/admin`): handlers that translate HTTP to engine calls, nothing more.

Every handler runs one transaction; every write is audited by the engine function it calls,
with the operator's token label as the actor.
"""

from __future__ import annotations

from aiohttp import web

from engine import audit, credentials, organizations, partners, pools, portal, topups
from engine import webhooks as webhook_engine
from engine.errors import (
    AlreadyDecided,
    EmailTaken,
    InvalidStatusTransition,
    KeyNotUsable,
    NotFound,
    ValidationFailed,
)
from engine.pagination import read_page
from engine.scope import Scope
from http_front.auth_operator import OPERATOR, operator_required
from http_front.auth_partner import keyring
from http_front.body import json_response, read_model
from http_front.keys import DB, SECRET_BOX, SETTINGS
from http_front.openapi import ENVIRONMENT, PAGE, SLUG_TAKEN, Query, documented
from schemas import admin as wire
from schemas.responses import (
    AllocationOut,
    AuditList,
    IssuedKeyOut,
    KeyList,
    KeyOut,
    OperatorTopupRequestList,
    OperatorTopupRequestOut,
    OperatorWebhookEndpointOut,
    OrganizationList,
    OrganizationOut,
    PartnerList,
    PartnerOut,
    PoolOut,
    PortalUserOut,
    ReserveOut,
    RotatedKeyOut,
)
from schemas.webhooks import OperatorEndpointCreate

PREFIX = "/api/v1/admin"


def _query(request: web.Request, name: str, allowed: tuple[str, ...] | None = None) -> str | None:
    value = request.query.get(name) or None
    if value is not None and allowed is not None and value not in allowed:
        raise ValidationFailed({name: [f"must be one of {', '.join(allowed)}"]})
    return value


# -- partners -----------------------------------------------------------------------------------


@documented(
    "Create a partner",
    auth="operator",
    request=wire.PartnerCreate,
    responses={201: PartnerOut},
    errors=[SLUG_TAKEN],
)
@operator_required
async def create_partner(request: web.Request) -> web.Response:
    body = await read_model(request, wire.PartnerCreate)
    async with request.app[DB].begin() as conn:
        row = await partners.register_partner(conn, actor=request[OPERATOR], fields=body.columns())
    return json_response(wire.partner_json(row), status=201)


@documented(
    "List partners",
    auth="operator",
    responses={200: PartnerList},
    query=[*PAGE, Query("status", "Only this status", enum=partners.STATUSES)],
)
@operator_required
async def list_partners(request: web.Request) -> web.Response:
    status = _query(request, "status", partners.STATUSES)
    page = read_page(request.query.get("limit"), request.query.get("cursor"), {"status": status})
    async with request.app[DB].connect() as conn:
        rows, cursor = await partners.list_partners(conn, page, status=status)
    return json_response(wire.page_json([wire.partner_json(r) for r in rows], cursor))


@documented("Get a partner", auth="operator", responses={200: PartnerOut}, errors=[NotFound])
@operator_required
async def get_partner(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        row = await partners.get_partner(conn, request.match_info["partner_id"])
    return json_response(wire.partner_json(row))


@documented(
    "Update a partner",
    auth="operator",
    request=wire.PartnerPatch,
    responses={200: PartnerOut},
    errors=[NotFound, InvalidStatusTransition],
)
@operator_required
async def patch_partner(request: web.Request) -> web.Response:
    body = await read_model(request, wire.PartnerPatch)
    async with request.app[DB].begin() as conn:
        row = await partners.update_partner(
            conn,
            actor=request[OPERATOR],
            partner_id=request.match_info["partner_id"],
            changes=body.columns(),
        )
    # Status, allowlist and limits are cached for partner calls: drop this process's copy now
    # (other processes see the change within the keyring's 1 s TTL).
    keyring(request.app).invalidate()
    return json_response(wire.partner_json(row))


# -- keys ---------------------------------------------------------------------------------------


@documented(
    "Issue a key pair for a partner",
    auth="operator",
    request=wire.KeyCreate,
    responses={201: IssuedKeyOut},
    errors=[NotFound],
)
@operator_required
async def create_keys(request: web.Request) -> web.Response:
    body = await read_model(request, wire.KeyCreate)
    async with request.app[DB].begin() as conn:
        issued = await credentials.issue_keys_checked(
            conn,
            request.app[SECRET_BOX],
            actor=request[OPERATOR],
            partner_id=request.match_info["partner_id"],
            environment=body.environment,
            name=body.name,
            expires_at=body.expires_at,
            ip_allowlist=body.ip_allowlist,
        )
    return json_response(wire.issued_json(issued), status=201)


@documented(
    "List a partner's keys",
    auth="operator",
    responses={200: KeyList},
    errors=[NotFound],
    query=[*PAGE, ENVIRONMENT],
)
@operator_required
async def list_keys(request: web.Request) -> web.Response:
    partner_id = request.match_info["partner_id"]
    environment = _query(request, "environment", ("sandbox", "production"))
    page = read_page(
        request.query.get("limit"), request.query.get("cursor"), {"environment": environment}
    )
    async with request.app[DB].connect() as conn:
        await partners.get_partner(conn, partner_id)
        rows, cursor = await credentials.list_keys(conn, partner_id, page, environment=environment)
    return json_response(wire.page_json([wire.key_json(r) for r in rows], cursor))


@documented(
    "Rotate a key pair",
    auth="operator",
    responses={201: RotatedKeyOut},
    errors=[NotFound, KeyNotUsable],
)
@operator_required
async def rotate_keys(request: web.Request) -> web.Response:
    async with request.app[DB].begin() as conn:
        issued = await credentials.rotate_keys(
            conn,
            request.app[SECRET_BOX],
            actor=request[OPERATOR],
            partner_id=request.match_info["partner_id"],
            key_id=request.match_info["key_id"],
        )
    return json_response(
        {**wire.issued_json(issued), "rotatedFromId": request.match_info["key_id"]}, status=201
    )


@documented("Revoke a key", auth="operator", responses={200: KeyOut}, errors=[NotFound])
@operator_required
async def revoke_key(request: web.Request) -> web.Response:
    async with request.app[DB].begin() as conn:
        row = await credentials.revoke_key(
            conn,
            actor=request[OPERATOR],
            partner_id=request.match_info["partner_id"],
            key_id=request.match_info["key_id"],
        )
    keyring(request.app).invalidate()
    return json_response(wire.key_json(row))


# -- token pools and reserves -------------------------------------------------------------------


@documented(
    "Create a token pool",
    auth="operator",
    request=wire.PoolCreate,
    responses={201: PoolOut},
    errors=[NotFound],
)
@operator_required
async def create_pool(request: web.Request) -> web.Response:
    body = await read_model(request, wire.PoolCreate)
    partner_id = request.match_info["partner_id"]
    scope = Scope(partner_id, body.environment)
    redemption, auto_refill = pools.encode_settings(
        redemption_min_balance=body.restrictions.redemption.min_balance,
        allowed_categories=body.restrictions.redemption.allowed_categories,
        refill_enabled=body.auto_refill.enabled,
        refill_threshold=body.auto_refill.threshold,
        refill_amount=body.auto_refill.amount,
        refill_max_per_day=body.auto_refill.max_per_day,
    )
    if body.allocation.micro < 0:
        raise ValidationFailed({"allocation": ["must be 0 or more"]})
    if body.low_balance_threshold.micro < 0:
        raise ValidationFailed({"lowBalanceThreshold": ["must be 0 or more"]})
    async with request.app[DB].begin() as conn:
        await partners.get_partner(conn, partner_id)
        row = await pools.create_pool(
            conn,
            scope,
            actor=request[OPERATOR],
            name=body.name,
            vesting_days=body.restrictions.vesting_days,
            expiration_days=body.restrictions.expiration_days,
            low_balance_threshold=body.low_balance_threshold,
            redemption=redemption,
            auto_refill=auto_refill,
        )
        if body.allocation.is_positive:
            await pools.allocate(
                conn,
                scope,
                actor=request[OPERATOR],
                pool_id=row["id"],
                amount=body.allocation,
                memo="initial allocation",
            )
        view = await pools.pool_view(conn, scope, row["id"])
    return json_response(wire.pool_json(view), status=201)


@documented(
    "Allocate tokens to a pool",
    auth="operator",
    request=wire.Allocation,
    responses={201: AllocationOut},
    errors=[NotFound],
)
@operator_required
async def allocate(request: web.Request) -> web.Response:
    body = await read_model(request, wire.Allocation)
    partner_id = request.match_info["partner_id"]
    async with request.app[DB].begin() as conn:
        pool = await pools.find_pool(conn, partner_id, request.match_info["pool_id"])
        scope = Scope(partner_id, pool["environment"])
        entry_id = await pools.allocate(
            conn,
            scope,
            actor=request[OPERATOR],
            pool_id=pool["id"],
            amount=body.amount,
            memo=body.memo,
        )
        view = await pools.pool_view(conn, scope, pool["id"])
    return json_response(
        {
            "entryId": entry_id,
            "amount": body.amount,
            "memo": body.memo,
            "pool": wire.pool_json(view),
        },
        status=201,
    )


@documented(
    "Fund a partner's refill reserve",
    auth="operator",
    request=wire.ReserveFunding,
    responses={201: ReserveOut},
    errors=[NotFound],
)
@operator_required
async def fund_reserve(request: web.Request) -> web.Response:
    body = await read_model(request, wire.ReserveFunding)
    partner_id = request.match_info["partner_id"]
    scope = Scope(partner_id, body.environment)
    async with request.app[DB].begin() as conn:
        await partners.get_partner(conn, partner_id)
        entry_id = await pools.fund_reserve(
            conn, scope, actor=request[OPERATOR], amount=body.amount, memo=body.memo
        )
        balance = await pools.reserve_balance(conn, scope)
    return json_response(
        {
            "entryId": entry_id,
            "partnerId": partner_id,
            "environment": body.environment,
            "amount": body.amount,
            "memo": body.memo,
            "reserveBalance": balance,
        },
        status=201,
    )


# -- top-up requests ------------------------------------------------------------------------------


@documented(
    "List a partner's top-up requests",
    auth="operator",
    responses={200: OperatorTopupRequestList},
    errors=[NotFound],
    query=[*PAGE, Query("status", "Only this status", enum=topups.STATUSES), ENVIRONMENT],
)
@operator_required
async def list_requests(request: web.Request) -> web.Response:
    partner_id = request.match_info["partner_id"]
    status = _query(request, "status", topups.STATUSES)
    environment = _query(request, "environment", ("sandbox", "production"))
    page = read_page(
        request.query.get("limit"),
        request.query.get("cursor"),
        {"status": status, "environment": environment},
    )
    async with request.app[DB].connect() as conn:
        await partners.get_partner(conn, partner_id)
        rows, cursor = await topups.list_requests(
            conn, partner_id, page, status=status, environment=environment
        )
    return json_response(wire.page_json([wire.request_json(r) for r in rows], cursor))


@documented(
    "Approve a top-up request",
    auth="operator",
    request=wire.Decision,
    responses={200: OperatorTopupRequestOut},
    errors=[NotFound, AlreadyDecided],
)
@operator_required
async def approve_request(request: web.Request) -> web.Response:
    body = await read_model(request, wire.Decision)
    async with request.app[DB].begin() as conn:
        row = await topups.approve_request(
            conn,
            actor=request[OPERATOR],
            request_id=request.match_info["request_id"],
            memo=body.memo,
        )
    return json_response(wire.request_json(row))


@documented(
    "Reject a top-up request",
    auth="operator",
    request=wire.Decision,
    responses={200: OperatorTopupRequestOut},
    errors=[NotFound, AlreadyDecided],
)
@operator_required
async def reject_request(request: web.Request) -> web.Response:
    body = await read_model(request, wire.Decision)
    async with request.app[DB].begin() as conn:
        row = await topups.reject_request(
            conn,
            actor=request[OPERATOR],
            request_id=request.match_info["request_id"],
            reason=body.reason,
        )
    return json_response(wire.request_json(row))


# -- portal users and the audit log ---------------------------------------------------------------


@documented(
    "Create a portal user",
    auth="operator",
    request=wire.PortalUserCreate,
    responses={201: PortalUserOut},
    errors=[EmailTaken],
)
@operator_required
async def create_portal_user(request: web.Request) -> web.Response:
    body = await read_model(request, wire.PortalUserCreate)
    async with request.app[DB].begin() as conn:
        row = await portal.create_portal_user(
            conn,
            actor=request[OPERATOR],
            email=body.email,
            password=body.password,
            partner_id=body.partner_id,
        )
    return json_response(wire.portal_user_json(row), status=201)


@documented(
    "Read the audit log",
    auth="operator",
    responses={200: AuditList},
    query=[
        *PAGE,
        Query("action", "Only this action"),
        Query("targetType", "Only this target type"),
        Query("targetId", "Only this target"),
    ],
)
@operator_required
async def audit_log(request: web.Request) -> web.Response:
    filters = {
        "action": _query(request, "action"),
        "targetType": _query(request, "targetType"),
        "targetId": _query(request, "targetId"),
    }
    page = read_page(request.query.get("limit"), request.query.get("cursor"), filters)
    async with request.app[DB].connect() as conn:
        rows, cursor = await audit.list_audit_log(
            conn,
            page,
            action=filters["action"],
            target_type=filters["targetType"],
            target_id=filters["targetId"],
        )
    return json_response(wire.page_json([wire.audit_json(r) for r in rows], cursor))


# -- organizations (the nonprofit directory) ----------------------------------------------------------


@documented(
    "Add an organization to the directory",
    auth="operator",
    request=wire.OrganizationCreate,
    responses={201: OrganizationOut},
    errors=[SLUG_TAKEN],
)
@operator_required
async def create_organization(request: web.Request) -> web.Response:
    body = await read_model(request, wire.OrganizationCreate)
    async with request.app[DB].begin() as conn:
        row = await organizations.create_organization(
            conn, actor=request[OPERATOR], fields=body.columns()
        )
    return json_response(wire.organization_json(row), status=201)


@documented(
    "List organizations",
    auth="operator",
    responses={200: OrganizationList},
    query=[
        *PAGE,
        Query("status", "Only this status", enum=organizations.STATUSES),
        Query("q", "Name or slug contains (case-insensitive)"),
    ],
)
@operator_required
async def list_organizations(request: web.Request) -> web.Response:
    status = _query(request, "status", organizations.STATUSES)
    q = request.query.get("q") or None
    page = read_page(
        request.query.get("limit"), request.query.get("cursor"), {"status": status, "q": q}
    )
    async with request.app[DB].connect() as conn:
        rows, cursor = await organizations.list_organizations(conn, page, q=q, status=status)
    return json_response(wire.page_json([wire.organization_json(r) for r in rows], cursor))


@documented(
    "Update an organization",
    auth="operator",
    request=wire.OrganizationPatch,
    responses={200: OrganizationOut},
    errors=[NotFound],
)
@operator_required
async def patch_organization(request: web.Request) -> web.Response:
    body = await read_model(request, wire.OrganizationPatch)
    async with request.app[DB].begin() as conn:
        row = await organizations.update_organization(
            conn, actor=request[OPERATOR], slug=request.match_info["slug"], changes=body.columns()
        )
    return json_response(wire.organization_json(row))


# -- webhooks -------------------------------------------------------------------------------------


@documented(
    "Register a webhook endpoint for a partner",
    auth="operator",
    request=OperatorEndpointCreate,
    responses={201: OperatorWebhookEndpointOut},
    errors=[NotFound],
)
@operator_required
async def create_webhook(request: web.Request) -> web.Response:
    """Register a webhook endpoint for a partner (contract 6); the secret is shown once."""
    body = await read_model(request, OperatorEndpointCreate)
    partner_id = request.match_info["partner_id"]
    box = request.app[SECRET_BOX]
    async with request.app[DB].begin() as conn:
        await partners.get_partner(conn, partner_id)
        row, secret = await webhook_engine.create_endpoint(
            conn,
            box,
            Scope(partner_id, body.environment),
            body.to_spec(),
            allow_private=request.app[SETTINGS].webhook_allow_private,
            actor=request[OPERATOR],
        )
    return json_response(
        {**webhook_engine.endpoint_json(row, box), "partnerId": partner_id, "secret": secret},
        status=201,
    )


def add_routes(app: web.Application) -> None:
    """Register the operator API under /api/v1/admin."""
    p = PREFIX
    app.router.add_post(f"{p}/partners", create_partner)
    app.router.add_get(f"{p}/partners", list_partners)
    app.router.add_get(f"{p}/partners/{{partner_id}}", get_partner)
    app.router.add_patch(f"{p}/partners/{{partner_id}}", patch_partner)
    app.router.add_post(f"{p}/partners/{{partner_id}}/keys", create_keys)
    app.router.add_get(f"{p}/partners/{{partner_id}}/keys", list_keys)
    app.router.add_post(f"{p}/partners/{{partner_id}}/keys/{{key_id}}/rotate", rotate_keys)
    app.router.add_delete(f"{p}/partners/{{partner_id}}/keys/{{key_id}}", revoke_key)
    app.router.add_post(f"{p}/partners/{{partner_id}}/token-pools", create_pool)
    app.router.add_post(
        f"{p}/partners/{{partner_id}}/token-pools/{{pool_id}}/allocations", allocate
    )
    app.router.add_post(f"{p}/partners/{{partner_id}}/reserves", fund_reserve)
    app.router.add_get(f"{p}/partners/{{partner_id}}/token-pool-requests", list_requests)
    app.router.add_post(f"{p}/token-pool-requests/{{request_id}}/approve", approve_request)
    app.router.add_post(f"{p}/token-pool-requests/{{request_id}}/reject", reject_request)
    app.router.add_post(f"{p}/portal-users", create_portal_user)
    app.router.add_get(f"{p}/audit-log", audit_log)
    app.router.add_post(f"{p}/organizations", create_organization)
    app.router.add_get(f"{p}/organizations", list_organizations)
    app.router.add_patch(f"{p}/organizations/{{slug}}", patch_organization)
    app.router.add_post(f"{p}/partners/{{partner_id}}/webhooks", create_webhook)
