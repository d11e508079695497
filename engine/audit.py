"""The operator audit log: who changed what, when, with before and after (secrets redacted)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.pagination import Page, fetch_page
from engine.tables import audit_log
from engine.wire import dumps, loads

# Field names whose values never enter the audit log.
_SECRET_FIELDS = {
    "secretKey",
    "secret_key",
    "hmacSecret",
    "hmac_secret",
    "password",
    "password_hash",
    "secret",
    "headers",
    "code",
    "pin",
    "secret_key_hash",
    "hmac_secret_enc",
}


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("[redacted]" if k in _SECRET_FIELDS else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


async def record(
    conn: AsyncConnection,
    *,
    actor: str,
    action: str,
    target_type: str,
    target_id: str | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Append one audit row in the caller's transaction (so a rolled-back write leaves none)."""

    def _clean(value: dict[str, Any] | None) -> Any:
        # Round-trip through the wire encoder: Tokens, Decimals and datetimes become plain JSON.
        return None if value is None else loads(dumps(redact(value)))

    await conn.execute(
        audit_log.insert().values(
            actor=actor,
            action=action,
            target_type=target_type,
            target_id=target_id,
            before=_clean(before),
            after=_clean(after),
        )
    )


async def list_audit_log(
    conn: AsyncConnection,
    page: Page,
    *,
    action: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """The operator audit log, newest first."""
    query = select(audit_log)
    if action is not None:
        query = query.where(audit_log.c.action == action)
    if target_type is not None:
        query = query.where(audit_log.c.target_type == target_type)
    if target_id is not None:
        query = query.where(audit_log.c.target_id == target_id)
    return await fetch_page(conn, query, audit_log.c.created_at, audit_log.c.id, page)
