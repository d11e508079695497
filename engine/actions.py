"""Reading actions back: one action, and the newest-first list."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.errors import NotFound
from engine.pagination import fetch_page, read_page
from engine.scope import Scope
from engine.tables import actions


def action_json(row: Any) -> dict[str, Any]:
    """The stored response, with the action's current status and reversal figure."""
    body = dict(row["response"])
    body["status"] = row["status"]
    body["actionType"] = row["action_type"]
    body["amount"] = row["amount"]
    body["currency"] = row["currency"]
    body["occurredAt"] = row["occurred_at"]
    body["metadata"] = row["metadata"]
    body["createdAt"] = row["created_at"]
    return body


async def get_action(conn: AsyncConnection, scope: Scope, action_id: str) -> dict[str, Any]:
    """Raises NotFound, also for an action of another partner or environment."""
    row = (
        (
            await conn.execute(
                select(actions).where(
                    actions.c.id == action_id,
                    actions.c.partner_id == scope.partner_id,
                    actions.c.environment == scope.environment,
                )
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"action {action_id} not found")
    return action_json(row)


async def list_actions(
    conn: AsyncConnection,
    scope: Scope,
    *,
    limit: str | None,
    cursor: str | None,
    action_type: str | None = None,
    status: str | None = None,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    filters = {"actionType": action_type, "status": status, "from": created_from, "to": created_to}
    page = read_page(limit, cursor, filters)
    query = select(actions).where(
        actions.c.partner_id == scope.partner_id, actions.c.environment == scope.environment
    )
    if action_type:
        query = query.where(actions.c.action_type == action_type)
    if status:
        query = query.where(actions.c.status == status)
    if created_from:
        query = query.where(actions.c.created_at >= created_from)
    if created_to:
        query = query.where(actions.c.created_at < created_to)
    rows, cursor = await fetch_page(conn, query, actions.c.created_at, actions.c.id, page)
    return [action_json(r) for r in rows], cursor
