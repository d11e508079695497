"""Cursor pagination, newest first. A cursor carries the filters it was made with, so a cursor
reused under other filters is refused (400 INVALID_CURSOR) instead of silently skipping rows."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, literal, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.errors import SirError, ValidationFailed

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class InvalidCursor(SirError):
    name = "ValidationError"
    code = "INVALID_CURSOR"
    status = 400


@dataclass(frozen=True)
class Page:
    limit: int
    after: tuple[datetime, str] | None  # (created_at, id) of the last row already seen
    filters_digest: str


def _digest(filters: Mapping[str, Any]) -> str:
    canonical = json.dumps({k: v for k, v in sorted(filters.items()) if v is not None}, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ValidationFailed({"limit": [f"must be an integer from 1 to {MAX_LIMIT}"]})
    return int(raw)


def read_page(limit: str | None, cursor: str | None, filters: Mapping[str, Any]) -> Page:
    """Parse `?limit=&cursor=` for a listing filtered by `filters`."""
    digest = _digest(filters)
    page_limit = parse_limit(limit)
    if not cursor:
        return Page(page_limit, None, digest)
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode()))
        created, row_id, made_with = decoded["t"], decoded["i"], decoded["f"]
        after = (datetime.fromisoformat(created), str(row_id))
    except (ValueError, KeyError, TypeError, RecursionError, binascii.Error):
        raise InvalidCursor("The cursor is not one this API issued") from None
    if made_with != digest:
        raise InvalidCursor(
            "The filters changed since this cursor was made; start without a cursor"
        )
    return Page(page_limit, after, digest)


def next_cursor(
    page: Page, rows: Sequence[Mapping[Any, Any]], *, time_key: str = "created_at"
) -> str | None:
    """The cursor after `rows` (fetched with limit + 1), or None on the last page."""
    if len(rows) <= page.limit:
        return None
    last = rows[page.limit - 1]
    payload = {"t": last[time_key].isoformat(), "i": last["id"], "f": page.filters_digest}
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


async def fetch_page(
    conn: AsyncConnection, query: Select[Any], created_col: Any, id_col: Any, page: Page
) -> tuple[list[dict[str, Any]], str | None]:
    """Run `query` newest first under `page`'s keyset cursor; returns (rows, nextCursor).

    The cursor is (created_at, id): rows written in one transaction share created_at, so the id
    breaks the tie and no row is skipped or repeated between pages.
    """
    if page.after is not None:
        after_time, after_id = page.after
        typed_id = int(after_id) if issubclass(id_col.type.python_type, int) else after_id
        query = query.where(
            tuple_(created_col, id_col)
            < tuple_(
                literal(after_time, type_=created_col.type), literal(typed_id, type_=id_col.type)
            )
        )
    query = query.order_by(created_col.desc(), id_col.desc()).limit(page.limit + 1)
    rows: list[dict[str, Any]] = [dict(r) for r in (await conn.execute(query)).mappings()]
    return rows[: page.limit], next_cursor(page, rows)
