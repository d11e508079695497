"""Batch action endpoints (contract section 7, "Actions"): `POST /actions/batch` accepts up to
1,000 submit bodies, stores the valid ones and answers 202; workers distribute them
(`workers.batch_actors`); `GET /actions/batches/:batchId` reports per-item results.

Bodies here may be up to 8 MiB (contract section 4), while the application refuses anything
over 1 MiB: the route reads its body through a clone of the request with the larger limit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from aiohttp import web

from engine import batches
from engine.action_request import ActionRequest
from engine.errors import NotFound, ValidationFailed
from engine.wire import MAX_DEPTH, TooDeep, loads
from http_front.auth_partner import secret_key_required
from http_front.body import MalformedJson, UnsupportedMediaType, json_response
from http_front.keys import DB, DISPATCH
from http_front.middlewares import Handler
from http_front.openapi import documented
from http_front.principal import principal
from schemas.actions import BatchSubmit, SubmitAction
from schemas.base import parse
from schemas.responses import BatchAccepted, BatchOut

BASE = "/v1/partner/actions"
BATCH_MAX_BODY = 8 * 1024 * 1024  # contract section 4: 8 MiB on /actions/batch, 1 MiB elsewhere


def larger_body(limit: int) -> Callable[[Handler], Handler]:
    """Let one route read a body of up to `limit` bytes (the app's `client_max_size` stays
    1 MiB). aiohttp enforces the limit in `request.read()` against the request's own
    `client_max_size`; `clone` is its public way to change it. Put this OUTSIDE the
    authentication decorator, whose signature check is what reads the body: a larger body still
    answers 413 PAYLOAD_TOO_LARGE (through the error middleware)."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(request: web.Request) -> web.StreamResponse:
            return await handler(request.clone(client_max_size=limit))

        return wrapper

    return decorate


async def _read_body(request: web.Request) -> Any:
    """As `http_front.body.read_json`, except for NUL characters, checked per item later:
    one item's NUL must not refuse the whole batch."""
    raw = await request.read()
    if not raw:
        return {}
    if request.content_type != "application/json":
        raise UnsupportedMediaType("Send the body as application/json")
    try:
        return loads(raw, max_depth=MAX_DEPTH)
    except TooDeep:
        raise MalformedJson(f"The request body nests JSON more than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise MalformedJson("The request body is not valid JSON") from None


def _nul_fields(value: Any, path: str, found: dict[str, list[str]]) -> None:
    """PostgreSQL stores no NUL in text or jsonb: each item is checked by itself, and an item
    with a NUL is rejected with the field that holds it."""
    if isinstance(value, str):
        if "\x00" in value:
            found.setdefault(path or "body", []).append("must not contain NUL characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                found.setdefault(where, []).append("must not contain NUL characters")
            _nul_fields(item, where, found)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _nul_fields(item, f"{path}[{index}]", found)


def _envelope(body: Any) -> list[Any]:
    """The `actions` list, or 422 for the batch as a whole."""
    if not isinstance(body, dict):
        raise ValidationFailed({"body": ["must be a JSON object with an actions list"]})
    unknown = {key: ["is not a known field"] for key in body if key != "actions"}
    items = body.get("actions")
    if not isinstance(items, list):
        problem = "is required" if items is None else "must be a list of submit bodies"
        raise ValidationFailed({"actions": [problem], **unknown})
    if not 1 <= len(items) <= batches.MAX_ITEMS:
        raise ValidationFailed(
            {"actions": [f"must have 1 to {batches.MAX_ITEMS} items (got {len(items)})"], **unknown}
        )
    if unknown:
        raise ValidationFailed(unknown)
    return items


def _validate(items: list[Any]) -> tuple[list[int], list[ActionRequest], list[dict[str, Any]]]:
    """Each item as `POST /actions/submit` would validate it; then a key repeated within the
    batch is rejected at its later uses. Returns accepted indexes, their requests, rejections."""
    accepted: dict[int, ActionRequest] = {}
    rejected: dict[int, ValidationFailed] = {}
    for index, item in enumerate(items):
        found: dict[str, list[str]] = {}
        _nul_fields(item, "", found)
        if found:
            rejected[index] = ValidationFailed(found)
            continue
        try:
            accepted[index] = parse(SubmitAction, item).to_request()
        except ValidationFailed as exc:
            rejected[index] = exc
    repeats = batches.duplicate_keys([(i, r.idempotency_key) for i, r in accepted.items()])
    for index, error in repeats.items():
        del accepted[index]
        rejected[index] = error
    return (
        list(accepted),
        list(accepted.values()),
        [
            {"index": index, "error": batches.error_json(error)}
            for index, error in sorted(rejected.items())
        ],
    )


@documented(
    "Submit up to 1,000 actions", auth="secret", request=BatchSubmit, responses={202: BatchAccepted}
)
@larger_body(BATCH_MAX_BODY)
@secret_key_required
async def submit_batch(request: web.Request) -> web.Response:
    items = _envelope(await _read_body(request))
    indexes, accepted, rejected = _validate(items)
    async with request.app[DB].begin() as conn:
        batch = await batches.create_batch(
            conn, principal(request).scope, accepted, indexes=indexes
        )
    if accepted:
        # A nudge, not a promise: if Redis refuses it, the resume tick finds the batch.
        await request.app[DISPATCH].send_soon("distribution", "process_batch", batch["id"])
    return json_response(
        {"batchId": batch["id"], "accepted": len(accepted), "rejected": rejected}, status=202
    )


@documented(
    "Get a batch and its per-item results",
    auth="secret",
    responses={200: BatchOut},
    errors=[NotFound],
)
@secret_key_required
async def get_batch(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        body = await batches.get_batch(
            conn, principal(request).scope, request.match_info["batch_id"]
        )
    return json_response(body)


def add_routes(app: web.Application) -> None:
    # POST /actions/batch cannot meet GET /actions/{action_id} (other method) nor
    # POST /actions/{action_id}/reverse (other depth); GET /actions/batches/{id} is two segments
    # deep, where only .../reverse (POST) lives. The routes test pins this down.
    app.router.add_post(f"{BASE}/batch", submit_batch)
    app.router.add_get(f"{BASE}/batches/{{batch_id}}", get_batch)
