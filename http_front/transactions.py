"""`GET /transactions` (contract section 7 "Transactions"): the partner's ledger lines.

Translates the query string to `engine.transactions.Filters`; what a line is, and its sign, is
documented there.
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from engine import transactions
from engine.errors import ValidationFailed
from engine.tables import POSTING_TYPES
from http_front.auth_partner import secret_key_required
from http_front.body import json_response
from http_front.keys import DB
from http_front.openapi import FROM, PAGE, TO, Query, documented
from http_front.principal import principal
from schemas.responses import LedgerLineList

PATH = "/v1/partner/transactions"


def _filters(request: web.Request) -> transactions.Filters:
    """The query's filters. Raises ValidationFailed listing every bad parameter at once."""
    problems: dict[str, list[str]] = {}
    times: dict[str, datetime | None] = {}
    for name in ("from", "to"):
        try:
            times[name] = transactions.parse_time(name, request.query.get(name))
        except ValidationFailed as exc:
            problems.update(exc.fields)
            times[name] = None
    filters = transactions.Filters(
        type=request.query.get("type") or None,
        external_user_id=request.query.get("externalUserId") or None,
        action_id=request.query.get("actionId") or None,
        created_from=times["from"],
        created_to=times["to"],
    )
    problems = {**transactions.filter_problems(filters), **problems}
    if problems:
        raise ValidationFailed(problems)
    return filters


@documented(
    "List ledger lines",
    auth="secret",
    responses={200: LedgerLineList},
    query=[
        *PAGE,
        Query("type", "Only this line type", enum=POSTING_TYPES),
        Query("externalUserId", "Only this user's lines"),
        Query("actionId", "Only this action's lines"),
        FROM,
        TO,
    ],
)
@secret_key_required
async def list_transactions(request: web.Request) -> web.Response:
    filters = _filters(request)
    async with request.app[DB].connect() as conn:
        lines, cursor = await transactions.list_lines(
            conn,
            principal(request).scope,
            filters,
            limit=request.query.get("limit"),
            cursor=request.query.get("cursor"),
        )
    return json_response({"data": lines, "nextCursor": cursor})


def add_routes(app: web.Application) -> None:
    app.router.add_get(PATH, list_transactions)
