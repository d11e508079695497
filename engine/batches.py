"""Batches of actions (`POST /actions/batch`): stored when accepted, distributed by workers.

A batch is a row in `action_batches` and one `action_batch_items` row per accepted action
(its index in the partner's request, its idempotency key, the parsed action as JSON). Workers
distribute the items through `engine.submit.apply_actions`, the one distribution code path,
in chunks of at most CHUNK_SIZE:

- a chunk is claimed with `FOR UPDATE SKIP LOCKED`, so any number of workers share one batch and
  the items of a worker that died (its transaction rolled back) are simply PENDING again;
- the chunk's actions, its items' new status, `actions.batch_id` and the batch's counters commit
  in ONE transaction: no item is COMPLETED without its action, no action exists without its
  item marked, and re-running a batch never applies an item twice (its key would replay anyway);
- a refused item is FAILED with the contract's error object and emits `action.failed`; a
  replayed key (the action exists already) is COMPLETED with the original action's id.

Duplicate idempotency keys inside one batch are refused up front (`duplicate_keys`): the later
item is rejected with a field error, so every accepted item of a batch names a distinct key and
its result is never "whichever worker came first".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ARRAY, Integer, Text, bindparam, insert, select, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine.action_request import ActionRequest, StakeholderRequest, to_wire
from engine.errors import (
    IdempotencyInProgress,
    NotFound,
    ServiceUnavailable,
    SirError,
    ValidationFailed,
)
from engine.ids import new_id
from engine.outbox import Event, record_events
from engine.scope import Scope
from engine.submit import STATEMENT_DEADLINE, Applied, Outcome, Refused, Replayed, apply_actions
from engine.tables import action_batch_items, action_batches
from engine.wire import dumps

log = logging.getLogger("sir.batches")

MAX_ITEMS = 1000  # contract: up to 1,000 submit bodies per batch
# The group-commit measurement: a transaction should finish in a few ms; 64 beat 256.
CHUNK_SIZE = 64

# Database faults worth retrying the whole message later rather than isolating items: the
# connection is gone, or the server is too busy (a timeout, a lock we could not get).
_TRANSIENT_DB = {
    "DeadlockDetectedError",
    "SerializationError",
    "LockNotAvailableError",
    "QueryCanceledError",
}


# -- the stored form of an action -----------------------------------------------------------------


def request_from_payload(payload: dict[str, Any]) -> ActionRequest:
    occurred = payload.get("occurredAt")
    return ActionRequest(
        idempotency_key=payload["idempotencyKey"],
        action_type=payload["actionType"],
        amount=Decimal(str(payload["amount"])),
        currency=payload.get("currency"),
        campaign_id=payload.get("campaignId"),
        auto_create_users=bool(payload.get("autoCreateUsers", True)),
        occurred_at=datetime.fromisoformat(occurred) if occurred else None,
        metadata=dict(payload.get("metadata") or {}),
        stakeholders=tuple(
            StakeholderRequest(
                stakeholder_type=s["stakeholderTypeCode"],
                partner_user_id=s.get("partnerUserId"),
                organization_slug=s.get("organizationSlug"),
                email=s.get("userEmail"),
                first_name=s.get("userFirstName"),
                last_name=s.get("userLastName"),
            )
            for s in payload["stakeholders"]
        ),
    )


def error_json(error: SirError) -> dict[str, Any]:
    """The contract's error object, as `rejected[].error` and `results[].error` carry it."""
    return {
        "name": error.name,
        "code": error.code,
        "message": error.message,
        "details": error.details,
    }


def duplicate_keys(keys: Sequence[tuple[int, str]]) -> dict[int, ValidationFailed]:
    """For (index, idempotencyKey) pairs in request order: the later uses of a key already used
    earlier in the same batch, each with its field error (the first use stays accepted)."""
    first: dict[str, int] = {}
    refused: dict[int, ValidationFailed] = {}
    for index, key in keys:
        if key in first:
            refused[index] = ValidationFailed(
                {
                    "idempotencyKey": [
                        f"repeats the idempotencyKey of item {first[key]} of this batch"
                    ]
                }
            )
        else:
            first[key] = index
    return refused


# -- accepting a batch ----------------------------------------------------------------------------


async def create_batch(
    conn: AsyncConnection,
    scope: Scope,
    items: Sequence[ActionRequest],
    *,
    indexes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Store a batch of validated actions in the caller's transaction; returns its row.

    `indexes` are the items' positions in the partner's request (default 0..n-1): rejected
    items leave gaps, and results answer with the original positions. A batch with no item is
    COMPLETED at once. Raises ValueError for a repeated idempotency key (see `duplicate_keys`).
    """
    positions = list(range(len(items))) if indexes is None else list(indexes)
    if len(positions) != len(items):
        raise ValueError("one index per item")
    if duplicate_keys([(i, r.idempotency_key) for i, r in zip(positions, items, strict=True)]):
        raise ValueError("idempotency keys repeat within the batch")
    batch_id = new_id()
    empty = not items
    row = (
        (
            await conn.execute(
                insert(action_batches)
                .values(
                    id=batch_id,
                    partner_id=scope.partner_id,
                    environment=scope.environment,
                    status="COMPLETED" if empty else "PENDING",
                    total=len(items),
                    completed_at=datetime.now(UTC) if empty else None,
                )
                .returning(action_batches)
            )
        )
        .mappings()
        .one()
    )
    if items:
        await conn.execute(
            insert(action_batch_items),
            [
                {
                    "batch_id": batch_id,
                    "index": position,
                    "idempotency_key": request.idempotency_key,
                    "payload": to_wire(request),
                }
                for position, request in zip(positions, items, strict=True)
            ],
        )
    return dict(row)


# -- reading a batch ------------------------------------------------------------------------------


async def get_batch(conn: AsyncConnection, scope: Scope, batch_id: str) -> dict[str, Any]:
    """`GET /actions/batches/:batchId`. Raises NotFound, also for another partner's or
    environment's batch."""
    batch = (
        (
            await conn.execute(
                select(action_batches).where(
                    action_batches.c.id == batch_id,
                    action_batches.c.partner_id == scope.partner_id,
                    action_batches.c.environment == scope.environment,
                )
            )
        )
        .mappings()
        .first()
    )
    if batch is None:
        raise NotFound(f"batch {batch_id} not found")
    items = await conn.execute(
        select(
            action_batch_items.c.index,
            action_batch_items.c.idempotency_key,
            action_batch_items.c.status,
            action_batch_items.c.action_id,
            action_batch_items.c.error,
        )
        .where(action_batch_items.c.batch_id == batch_id)
        .order_by(action_batch_items.c.index)
    )
    results = []
    for index, key, status, action_id, error in items:
        result: dict[str, Any] = {"index": index, "idempotencyKey": key, "status": status}
        if action_id is not None:
            result["actionId"] = action_id
        if error is not None:
            result["error"] = error
        results.append(result)
    return {
        "batchId": batch["id"],
        "status": batch["status"],
        "total": batch["total"],
        "succeeded": batch["succeeded"],
        "failed": batch["failed"],
        "createdAt": batch["created_at"],
        "completedAt": batch["completed_at"],
        "results": results,
    }


async def stalled_batches(conn: AsyncConnection, *, older_than: timedelta) -> list[str]:
    """Batches not COMPLETED that were accepted more than `older_than` ago: their message was
    lost, or their worker died. Processing them again is safe (items are claimed, not assumed)."""
    rows = await conn.execute(
        select(action_batches.c.id)
        .where(
            action_batches.c.status != "COMPLETED",
            action_batches.c.created_at < datetime.now(UTC) - older_than,
        )
        .order_by(action_batches.c.created_at)
        .limit(1000)
    )
    return [batch_id for (batch_id,) in rows]


# -- processing a batch ---------------------------------------------------------------------------


@dataclass
class Progress:
    """What one `process_batch` call did (a second worker may have done the rest)."""

    succeeded: int = 0
    failed: int = 0
    completed: bool = False

    def add(self, other: Progress) -> None:
        self.succeeded += other.succeeded
        self.failed += other.failed


def _claim(batch_id: str, size: int) -> Any:
    # Ordered by index so the items of one chunk are neighbours; SKIP LOCKED so a second
    # worker takes the next chunk instead of waiting for this one.
    return (
        select(action_batch_items.c.index, action_batch_items.c.payload)
        .where(action_batch_items.c.batch_id == batch_id, action_batch_items.c.status == "PENDING")
        .order_by(action_batch_items.c.index)
        .limit(size)
        .with_for_update(skip_locked=True)
    )


_MARK = text(
    "UPDATE action_batch_items i SET status = m.status, action_id = m.action_id, error = m.error "
    "FROM (SELECT unnest(:indexes) AS index, unnest(:statuses) AS status, "
    "unnest(:action_ids) AS action_id, CAST(unnest(:errors) AS jsonb) AS error) m "
    "WHERE i.batch_id = :batch_id AND i.index = m.index"
).bindparams(
    bindparam("indexes", type_=ARRAY(Integer)),
    bindparam("statuses", type_=ARRAY(Text)),
    bindparam("action_ids", type_=ARRAY(Text)),
    bindparam("errors", type_=ARRAY(Text)),
)

_LINK = text(
    "UPDATE actions SET batch_id = :batch_id "
    "WHERE id = ANY(:ids) AND partner_id = :partner_id AND environment = :environment"
).bindparams(bindparam("ids", type_=ARRAY(Text)))

_COUNT = text(
    "UPDATE action_batches SET succeeded = succeeded + :succeeded, failed = failed + :failed, "
    "status = 'PROCESSING' WHERE id = :batch_id"
)

_FINISH = text(
    "UPDATE action_batches SET status = 'COMPLETED', completed_at = now() "
    "WHERE id = :batch_id AND status <> 'COMPLETED' AND NOT EXISTS "
    "(SELECT 1 FROM action_batch_items WHERE batch_id = :batch_id AND status = 'PENDING')"
)


async def process_batch(
    db: AsyncEngine, batch_id: str, *, chunk_size: int = CHUNK_SIZE
) -> Progress:
    """Distribute the batch's PENDING items, chunk by chunk, until none is left to claim; then
    mark the batch COMPLETED if no item is PENDING (another worker may still hold some).

    Safe to run any number of times and concurrently. Raises NotFound for an unknown batch,
    ServiceUnavailable (or the database's own connection errors) for faults worth retrying
    later: every committed chunk stays committed and the rest stays PENDING.
    """
    async with db.begin() as conn:
        row = (
            await conn.execute(
                text(
                    "UPDATE action_batches SET status = CASE WHEN status = 'PENDING' "
                    "THEN 'PROCESSING' ELSE status END WHERE id = :batch_id "
                    "RETURNING partner_id, environment, status"
                ),
                {"batch_id": batch_id},
            )
        ).first()
    if row is None:
        raise NotFound(f"batch {batch_id} not found")
    progress = Progress()
    if row.status == "COMPLETED":
        progress.completed = True
        return progress
    scope = Scope(row.partner_id, row.environment)
    while True:
        done = await _chunk_or_isolate(db, scope, batch_id, chunk_size)
        if done is None:
            break
        progress.add(done)
    async with db.begin() as conn:
        await conn.execute(_FINISH, {"batch_id": batch_id})
        status = (
            await conn.execute(
                select(action_batches.c.status).where(action_batches.c.id == batch_id)
            )
        ).scalar_one()
    progress.completed = status == "COMPLETED"
    return progress


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    if isinstance(exc, DBAPIError):
        name = type(exc.orig).__name__ if exc.orig is not None else ""
        return exc.connection_invalidated or name in _TRANSIENT_DB
    return False


async def _chunk_or_isolate(
    db: AsyncEngine, scope: Scope, batch_id: str, size: int
) -> Progress | None:
    """One chunk. If it fails for a reason that is not transient (a bug tripped by one odd
    action), its items are retried one per transaction, and an item that fails alone is FAILED
    with INTERNAL_ERROR: one poisoned item must not stall the batch forever."""
    try:
        return await _chunk(db, scope, batch_id, size)
    except IdempotencyInProgress:
        # The same key is in flight elsewhere (a submit, another batch): retry the message later.
        raise ServiceUnavailable(
            "An idempotency key of this batch is in flight elsewhere"
        ) from None
    except DBAPIError as exc:
        if _transient(exc):
            raise
        log.warning("chunk of batch %s failed (%s); isolating its items", batch_id, exc)
    progress = Progress()
    claimed_any = False
    for _ in range(size):
        single = await _isolated(db, scope, batch_id)
        if single is None:
            break
        claimed_any = True
        progress.add(single)
    return progress if claimed_any else None


async def _isolated(db: AsyncEngine, scope: Scope, batch_id: str) -> Progress | None:
    attempted: list[int] = []
    try:
        return await _chunk(db, scope, batch_id, 1, attempted=attempted)
    except IdempotencyInProgress:
        raise ServiceUnavailable(
            "An idempotency key of this batch is in flight elsewhere"
        ) from None
    except DBAPIError as exc:
        if _transient(exc) or not attempted:
            raise
        log.error("item %s of batch %s failed alone: %s", attempted[0], batch_id, exc)
    error = SirError("The engine could not process this action")  # never leaks internals
    async with db.begin() as conn:
        claimed = (
            await conn.execute(
                text(
                    "SELECT index FROM action_batch_items WHERE batch_id = :batch_id "
                    "AND index = :index AND status = 'PENDING' FOR UPDATE SKIP LOCKED"
                ),
                {"batch_id": batch_id, "index": attempted[0]},
            )
        ).first()
        if claimed is None:
            return Progress()
        key = (
            await conn.execute(
                select(action_batch_items.c.idempotency_key).where(
                    action_batch_items.c.batch_id == batch_id,
                    action_batch_items.c.index == attempted[0],
                )
            )
        ).scalar_one()
        await _record(conn, scope, batch_id, [(attempted[0], key)], [Refused(error)])
    return Progress(failed=1)


async def _chunk(
    db: AsyncEngine,
    scope: Scope,
    batch_id: str,
    size: int,
    *,
    attempted: list[int] | None = None,
) -> Progress | None:
    """Claim up to `size` PENDING items, apply them and mark them, in one transaction.
    None when there was nothing left to claim."""
    async with db.begin() as conn:
        await conn.execute(text(f"SET LOCAL statement_timeout = '{STATEMENT_DEADLINE}'"))
        rows = (await conn.execute(_claim(batch_id, size))).all()
        if not rows:
            return None
        if attempted is not None:
            attempted.extend(index for index, _ in rows)
        requests = [request_from_payload(payload) for _, payload in rows]
        outcomes = await apply_actions(conn, scope, requests)
        items = [
            (index, request.idempotency_key)
            for (index, _), request in zip(rows, requests, strict=True)
        ]
        return await _record(conn, scope, batch_id, items, outcomes)


async def _record(
    conn: AsyncConnection,
    scope: Scope,
    batch_id: str,
    items: Sequence[tuple[int, str]],
    outcomes: Sequence[Outcome],
) -> Progress:
    """Write the items' results, link applied actions to the batch, emit `action.failed` and
    bump the batch's counters, in the caller's (the chunk's) transaction."""
    statuses: list[str] = []
    action_ids: list[str | None] = []
    errors: list[str | None] = []  # JSON text; None stays SQL NULL
    applied: list[str] = []
    events: list[Event] = []
    for (index, key), outcome in zip(items, outcomes, strict=True):
        if isinstance(outcome, Applied):
            statuses.append("COMPLETED")
            action_ids.append(outcome.response["actionId"])
            errors.append(None)
            applied.append(outcome.response["actionId"])
        elif isinstance(outcome, Replayed):
            # Already applied (an earlier run of this batch, or a submit with the same key and
            # body): the item succeeded, and its action is the original one.
            statuses.append("COMPLETED")
            action_ids.append(outcome.original["actionId"])
            errors.append(None)
        else:
            error = error_json(outcome.error)
            statuses.append("FAILED")
            action_ids.append(None)
            errors.append(dumps(error))
            events.append(
                Event(
                    "action.failed",
                    {"batchId": batch_id, "index": index, "idempotencyKey": key, "error": error},
                )
            )
    await conn.execute(
        _MARK,
        {
            "batch_id": batch_id,
            "indexes": [index for index, _ in items],
            "statuses": statuses,
            "action_ids": action_ids,
            "errors": errors,
        },
    )
    if applied:
        await conn.execute(_LINK, {**scope.params, "batch_id": batch_id, "ids": applied})
    await record_events(conn, scope, events)
    progress = Progress(succeeded=statuses.count("COMPLETED"), failed=statuses.count("FAILED"))
    await conn.execute(
        _COUNT,
        {"batch_id": batch_id, "succeeded": progress.succeeded, "failed": progress.failed},
    )
    return progress
