"""Webhooks: the partner's endpoints, and the delivery state machine the workers drive.

Endpoints (contract section 7): a URL, the event types it wants, a `whsec_` secret shown once and
stored encrypted, optional custom headers (stored encrypted, shown masked). Rotating the secret
keeps the old one for 24 hours, during which every delivery carries both signatures.

Deliveries (contract section 9): one row per (event, endpoint). The database is the source of
truth, so a Redis restart loses nothing; queue messages only say "look at delivery X now":

    PENDING --next_attempt--> (in flight) --record_attempt--> SUCCEEDED
       ^                                        |  failure: next_attempt_at by RETRY_SCHEDULE
       |________________________________________|  schedule spent, or 410: FAILED (replayable)

`next_attempt` claims a due delivery by pushing `next_attempt_at` forward by IN_FLIGHT_LEASE in
its own transaction, so a second message for the same delivery finds it not due and sends
nothing; a worker that dies mid-attempt leaves the delivery due again once the lease passes
(at least once). `due_deliveries` (the pick-up tick) hands due rows to queue messages the same
way, marking them `queued_at` so that the message it sends may still claim the row.

No HTTP here: the worker resolves, connects and posts; this module decides.
"""

from __future__ import annotations

import ipaddress
import random
import re
import secrets
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import and_, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit
from engine.crypto import SecretBox
from engine.errors import NotFound, ValidationFailed, WebhookEndpointInactive
from engine.ids import new_id
from engine.outbox import EVENT_TYPES, Event, record_events
from engine.pagination import Page, fetch_page
from engine.scope import Scope
from engine.signing import sign_webhook
from engine.tables import outbox_events, webhook_attempts, webhook_deliveries, webhook_endpoints
from engine.wire import dumps, loads, utc_iso

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
USER_AGENT = "SIRGiving-Webhooks/1.0"
TEST_EVENT = "webhook.test"

# Contract 9: about 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 3 h, 6 h, 12 h (~22.5 h in all), each
# with +-20% jitter so a receiver that comes back is not hit by every retry in the same second.
RETRY_SCHEDULE = (5, 30, 120, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600)
JITTER = 0.2
SUCCESS_WITHIN_MS = 5_000
EXCERPT_CHARS = 500
DISABLE_AFTER = timedelta(days=5)
ROTATION_OVERLAP = timedelta(hours=24)
# Longer than an attempt can take (5 s timeout plus DNS): a claim outlives its attempt.
IN_FLIGHT_LEASE = timedelta(seconds=60)
PICKUP_LEASE = timedelta(seconds=60)

MAX_URL = 2048
MAX_DESCRIPTION = 1000
MAX_HEADERS = 20
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 4096
# RFC 9110 token characters: anything else (CR, LF, ':', spaces) cannot be a header name.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# The engine owns these; the hop-by-hop ones would corrupt the request's framing.
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "user-agent",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
    }
)
_RESERVED_PREFIXES = ("content-", "x-sir-", "proxy-")
# up to four dot-separated decimal, octal (0...) or hex (0x...) parts: inet_aton's grammar
_LEGACY_IPV4 = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)(?:\.(?:0[xX][0-9a-fA-F]*|[0-9]+)){0,3}")


# -- pure rules -----------------------------------------------------------------------------------


def new_secret() -> str:
    """A webhook signing secret, `whsec_<64 hex>` (contract section 2)."""
    return SECRET_PREFIX + secrets.token_hex(32)


def destination_problem(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a delivery may not go to `ip`, or None if it is a public address.

    Private, loopback, link-local (cloud metadata lives at 169.254.169.254), unique-local IPv6,
    IPv4-mapped IPv6 (a way to smuggle any IPv4 address past an IPv6-only check), multicast,
    reserved and other non-global ranges (carrier-grade NAT, documentation) are all refused.
    """
    try:
        address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    except ValueError:
        return "not an IP address"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return "IPv4-mapped IPv6 addresses are not allowed"
        if address in ipaddress.IPv6Network("fc00::/7"):
            return "unique-local IPv6 addresses are not allowed"
    if address.is_loopback:
        return "loopback addresses are not allowed"
    if address.is_link_local:
        return "link-local addresses are not allowed"
    if address.is_unspecified:
        return "the unspecified address is not allowed"
    if address.is_multicast:
        return "multicast addresses are not allowed"
    if address.is_private:
        return "private addresses are not allowed"
    if not address.is_global:
        return "non-public addresses are not allowed"
    return None


def url_problems(url: str, *, allow_private: bool) -> list[str]:
    """What is wrong with a webhook URL (empty when it is fine). Host names are checked again,
    resolved, when each delivery is made."""
    if len(url) > MAX_URL:
        return [f"must be at most {MAX_URL} characters"]
    if any(ch in url for ch in "\r\n\t ") or any(ord(ch) < 0x20 for ch in url):
        return ["must not contain spaces or control characters"]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return ["is not a valid URL"]
    if parts.scheme not in ("https", "http"):
        return ["must start with https:// or http://"]
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return ["must not contain a user name or password"]
    host = parts.hostname
    if not host:
        return ["must name a host"]
    if port == 0:
        return ["must not use port 0"]
    if allow_private:
        return []
    literal = _ip_literal(host)
    if literal is None:
        if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
            return ["must not point to a local or internal host"]
        return []
    problem = destination_problem(literal)
    return [problem] if problem else []


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names literally, or None for a name. Besides the dotted forms, the
    C resolver takes the legacy IPv4 spellings (`127.1`, `2130706433`, `0x7f000001`, octal
    `0177.0.0.1`) as literals without any DNS, so they are read the same way here; otherwise
    they would pass as names and only the delivery-time check would stop them."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not _LEGACY_IPV4.fullmatch(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def header_problems(headers: Mapping[str, Any]) -> dict[str, list[str]]:
    """Problems with custom headers, keyed `headers.<name>`. Refuses what the engine sets itself
    (Host, Content-*, User-Agent, X-SIR-*), hop-by-hop headers, and CR/LF anywhere (a header
    injection)."""
    problems: dict[str, list[str]] = {}
    if len(headers) > MAX_HEADERS:
        return {"headers": [f"at most {MAX_HEADERS} headers"]}
    seen: set[str] = set()
    for name, value in headers.items():
        where = f"headers.{name}"
        lowered = name.lower()
        if not _TOKEN.fullmatch(name) or len(name) > MAX_HEADER_NAME:
            problems.setdefault(where, []).append(
                "is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only)"
            )
        elif lowered in _RESERVED_HEADERS or lowered.startswith(_RESERVED_PREFIXES):
            problems.setdefault(where, []).append("is set by the engine and cannot be overridden")
        elif lowered in seen:
            problems.setdefault(where, []).append("is given twice (names are case-insensitive)")
        seen.add(lowered)
        if not isinstance(value, str):
            problems.setdefault(where, []).append("must be a string")
        elif len(value) > MAX_HEADER_VALUE:
            problems.setdefault(where, []).append(f"must be at most {MAX_HEADER_VALUE} characters")
        elif any(not (ch == "\t" or 0x20 <= ord(ch) < 0x7F) for ch in value):
            problems.setdefault(where, []).append(
                "must be printable ASCII (no CR, LF or other control characters)"
            )
    return problems


def mask_header_value(value: str) -> str:
    """How a custom header value is shown: never whole; the last four characters of a long one
    so a partner can tell which token it set."""
    return "****" + value[-4:] if len(value) >= 16 else "****"


def retry_delay(
    attempts_made: int, *, rng: random.Random | None = None, scale: float = 1.0
) -> float | None:
    """Seconds to wait after the `attempts_made`-th failed attempt of a run, jittered by +-20%
    and multiplied by `scale` (tests shrink it); None when the schedule is spent (FAILED)."""
    if attempts_made < 1 or attempts_made > len(RETRY_SCHEDULE):
        return None
    base = RETRY_SCHEDULE[attempts_made - 1]
    factor = (rng or random).uniform(1 - JITTER, 1 + JITTER)
    return base * factor * scale


def event_body(
    event_id: str, event_type: str, created_at: datetime, environment: str, data: Any
) -> bytes:
    """The raw body a delivery sends, byte for byte (and so what is signed)."""
    return dumps(
        {
            "id": event_id,
            "type": event_type,
            "createdAt": utc_iso(created_at),
            "environment": environment,
            "data": data,
        }
    ).encode()


def signature_header(secrets_in_force: Sequence[str], timestamp: str, body: bytes) -> str:
    """`sha256=<new>[,sha256=<old>]`: one signature per secret in force, newest first."""
    return ",".join(sign_webhook(secret, timestamp, body) for secret in secrets_in_force)


# -- endpoints ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointSpec:
    url: str
    description: str | None = None
    event_types: tuple[str, ...] = ()
    receive_all_events: bool = False
    headers: Mapping[str, str] | None = None
    is_active: bool = True


def _check_event_types(
    event_types: Sequence[str], receive_all: bool, problems: dict[str, list[str]]
) -> None:
    unknown = sorted({t for t in event_types if t not in EVENT_TYPES})
    if unknown:
        problems.setdefault("eventTypes", []).append(f"unknown event types: {', '.join(unknown)}")
    elif not event_types and not receive_all:
        problems.setdefault("eventTypes", []).append(
            "must name at least one event type unless receiveAllEvents is true"
        )


def _check_spec(spec: EndpointSpec, allow_private: bool) -> None:
    problems: dict[str, list[str]] = {}
    url_issues = url_problems(spec.url, allow_private=allow_private)
    if url_issues:
        problems["url"] = url_issues
    if spec.description is not None and len(spec.description) > MAX_DESCRIPTION:
        problems["description"] = [f"must be at most {MAX_DESCRIPTION} characters"]
    _check_event_types(spec.event_types, spec.receive_all_events, problems)
    problems.update(header_problems(spec.headers or {}))
    if problems:
        raise ValidationFailed(problems)


def _encrypt_headers(box: SecretBox, headers: Mapping[str, str] | None) -> bytes | None:
    return box.encrypt(dumps(dict(headers))) if headers else None


def _decrypt_headers(box: SecretBox, blob: bytes | None) -> dict[str, str]:
    return dict(loads(box.decrypt(blob))) if blob else {}


def endpoint_json(row: Mapping[str, Any], box: SecretBox) -> dict[str, Any]:
    """An endpoint as the partner sees it: never a secret, custom header values masked."""
    return {
        "id": row["id"],
        "url": row["url"],
        "description": row["description"],
        "eventTypes": list(row["event_types"]),
        "receiveAllEvents": row["receive_all_events"],
        "headers": {
            k: mask_header_value(v) for k, v in _decrypt_headers(box, row["headers_enc"]).items()
        },
        "isActive": row["is_active"],
        "disabledReason": row["disabled_reason"],
        "environment": row["environment"],
        "previousSecretExpiresAt": row["previous_secret_expires_at"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
    }


def _scoped(scope: Scope) -> Any:
    return and_(
        webhook_endpoints.c.partner_id == scope.partner_id,
        webhook_endpoints.c.environment == scope.environment,
    )


async def create_endpoint(
    conn: AsyncConnection,
    box: SecretBox,
    scope: Scope,
    spec: EndpointSpec,
    *,
    allow_private: bool,
    actor: str | None = None,
) -> tuple[dict[str, Any], str]:
    """Register an endpoint; returns (row, secret). The secret is never readable again.

    `actor` (an operator's label) makes the write audited. Raises ValidationFailed."""
    _check_spec(spec, allow_private)
    secret = new_secret()
    row = (
        (
            await conn.execute(
                webhook_endpoints.insert()
                .values(
                    id=new_id(),
                    partner_id=scope.partner_id,
                    environment=scope.environment,
                    url=spec.url,
                    description=spec.description,
                    event_types=sorted(set(spec.event_types)),
                    receive_all_events=spec.receive_all_events,
                    secret_enc=box.encrypt(secret),
                    headers_enc=_encrypt_headers(box, spec.headers),
                    is_active=spec.is_active,
                )
                .returning(webhook_endpoints)
            )
        )
        .mappings()
        .one()
    )
    if actor is not None:
        await audit.record(
            conn,
            actor=actor,
            action="webhook_endpoint.create",
            target_type="webhook_endpoint",
            target_id=row["id"],
            after=endpoint_json(dict(row), box),
        )
    return dict(row), secret


async def get_endpoint(
    conn: AsyncConnection, scope: Scope, endpoint_id: str, *, for_update: bool = False
) -> dict[str, Any]:
    """One endpoint of the scope. Raises NotFound (also for another partner's or environment's)."""
    query = select(webhook_endpoints).where(_scoped(scope), webhook_endpoints.c.id == endpoint_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        raise NotFound(f"webhook endpoint {endpoint_id} not found")
    return dict(row)


async def list_endpoints(
    conn: AsyncConnection, scope: Scope, page: Page
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the scope's endpoints, newest first, and the next cursor."""
    query = select(webhook_endpoints).where(_scoped(scope))
    return await fetch_page(
        conn, query, webhook_endpoints.c.created_at, webhook_endpoints.c.id, page
    )


async def patch_endpoint(
    conn: AsyncConnection,
    box: SecretBox,
    scope: Scope,
    endpoint_id: str,
    changes: Mapping[str, Any],
    *,
    allow_private: bool,
) -> dict[str, Any]:
    """Change the fields in `changes` (EndpointSpec names; `headers` replaces the whole set,
    None or {} clears it). Re-activating clears the disabled reason. Raises NotFound,
    ValidationFailed."""
    row = await get_endpoint(conn, scope, endpoint_id, for_update=True)
    current_headers = _decrypt_headers(box, row["headers_enc"])
    merged = EndpointSpec(
        url=changes.get("url", row["url"]),
        description=changes.get("description", row["description"]),
        event_types=tuple(changes.get("event_types", row["event_types"])),
        receive_all_events=changes.get("receive_all_events", row["receive_all_events"]),
        headers=changes["headers"] if "headers" in changes else current_headers,
        is_active=changes.get("is_active", row["is_active"]),
    )
    if "url" in changes:
        _check_spec(merged, allow_private)
    else:  # an endpoint registered while private URLs were allowed stays editable
        _check_spec(merged, True)
    values: dict[str, Any] = {
        "url": merged.url,
        "description": merged.description,
        "event_types": sorted(set(merged.event_types)),
        "receive_all_events": merged.receive_all_events,
        "headers_enc": _encrypt_headers(box, merged.headers)
        if "headers" in changes
        else row["headers_enc"],
        "is_active": merged.is_active,
        "updated_at": func.now(),
    }
    if merged.is_active and not row["is_active"]:
        values["disabled_reason"] = None
    elif not merged.is_active and row["is_active"]:
        values["disabled_reason"] = "disabled by the partner"
    updated = (
        (
            await conn.execute(
                update(webhook_endpoints)
                .where(_scoped(scope), webhook_endpoints.c.id == endpoint_id)
                .values(**values)
                .returning(webhook_endpoints)
            )
        )
        .mappings()
        .one()
    )
    return dict(updated)


async def delete_endpoint(conn: AsyncConnection, scope: Scope, endpoint_id: str) -> None:
    """Delete an endpoint with its deliveries and their attempts (nothing more is sent to it;
    an attempt in flight records nothing). Raises NotFound."""
    await get_endpoint(conn, scope, endpoint_id, for_update=True)
    ids = select(webhook_deliveries.c.id).where(
        webhook_deliveries.c.endpoint_id == endpoint_id,
        webhook_deliveries.c.partner_id == scope.partner_id,
        webhook_deliveries.c.environment == scope.environment,
    )
    await conn.execute(delete(webhook_attempts).where(webhook_attempts.c.delivery_id.in_(ids)))
    await conn.execute(
        delete(webhook_deliveries).where(
            webhook_deliveries.c.endpoint_id == endpoint_id,
            webhook_deliveries.c.partner_id == scope.partner_id,
            webhook_deliveries.c.environment == scope.environment,
        )
    )
    await conn.execute(
        delete(webhook_endpoints).where(_scoped(scope), webhook_endpoints.c.id == endpoint_id)
    )


async def rotate_secret(
    conn: AsyncConnection, box: SecretBox, scope: Scope, endpoint_id: str, now: datetime
) -> tuple[dict[str, Any], str]:
    """A new secret (returned once); the current one stays valid for 24 hours, so deliveries
    carry both signatures meanwhile. Rotating again within those 24 hours drops the oldest.
    Raises NotFound."""
    row = await get_endpoint(conn, scope, endpoint_id, for_update=True)
    secret = new_secret()
    updated = (
        (
            await conn.execute(
                update(webhook_endpoints)
                .where(_scoped(scope), webhook_endpoints.c.id == endpoint_id)
                .values(
                    secret_enc=box.encrypt(secret),
                    previous_secret_enc=row["secret_enc"],
                    previous_secret_expires_at=now + ROTATION_OVERLAP,
                    updated_at=func.now(),
                )
                .returning(webhook_endpoints)
            )
        )
        .mappings()
        .one()
    )
    return dict(updated), secret


# -- deliveries: creating them --------------------------------------------------------------------


async def _insert_delivery(
    conn: AsyncConnection, scope: Scope, event_id: str, endpoint_id: str, now: datetime
) -> str:
    delivery_id = new_id()
    await conn.execute(
        webhook_deliveries.insert().values(
            id=delivery_id,
            partner_id=scope.partner_id,
            environment=scope.environment,
            event_id=event_id,
            endpoint_id=endpoint_id,
            status="PENDING",
            next_attempt_at=now,
        )
    )
    return delivery_id


async def send_test(
    conn: AsyncConnection, scope: Scope, endpoint_id: str, now: datetime
) -> dict[str, Any]:
    """Record a `webhook.test` event for this endpoint alone and its delivery, due now.

    The event is marked relayed as it is recorded, so the outbox relay never fans it out to the
    partner's other endpoints. Raises NotFound, WebhookEndpointInactive."""
    endpoint = await get_endpoint(conn, scope, endpoint_id)
    if not endpoint["is_active"]:
        raise WebhookEndpointInactive(f"webhook endpoint {endpoint_id} is disabled")
    data = {"webhookId": endpoint_id, "message": "A test event from SIR"}
    (event_id,) = await record_events(conn, scope, [Event(TEST_EVENT, data)])
    await conn.execute(
        update(outbox_events).where(outbox_events.c.id == event_id).values(relayed_at=now)
    )
    delivery_id = await _insert_delivery(conn, scope, event_id, endpoint_id, now)
    return await get_delivery(conn, scope, delivery_id)


# -- deliveries: reading and replaying ------------------------------------------------------------


_DELIVERY_COLUMNS = (
    webhook_deliveries,
    outbox_events.c.type.label("event_type"),
)


def _delivery_scoped(scope: Scope) -> Any:
    return and_(
        webhook_deliveries.c.partner_id == scope.partner_id,
        webhook_deliveries.c.environment == scope.environment,
    )


async def _attempts_of(conn: AsyncConnection, delivery_ids: list[str]) -> dict[str, list[Any]]:
    if not delivery_ids:
        return {}
    rows = (
        await conn.execute(
            select(webhook_attempts)
            .where(webhook_attempts.c.delivery_id.in_(delivery_ids))
            .order_by(webhook_attempts.c.id)
        )
    ).mappings()
    grouped: dict[str, list[Any]] = {d: [] for d in delivery_ids}
    for row in rows:
        grouped[row["delivery_id"]].append(dict(row))
    return grouped


def attempt_json(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "attemptedAt": row["attempted_at"],
        "statusCode": row["status_code"],
        "latencyMs": row["latency_ms"],
        "error": row["error"],
        "responseExcerpt": row["response_excerpt"],
        "succeeded": _succeeded(row["status_code"], row["error"]),
    }


def delivery_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A delivery with its attempts (oldest first), as `get_delivery`/`list_deliveries` give it."""
    return {
        "id": row["id"],
        "endpointId": row["endpoint_id"],
        "eventId": row["event_id"],
        "eventType": row["event_type"],
        "status": row["status"],
        "attemptCount": row["attempt_count"],
        "nextAttemptAt": row["next_attempt_at"] if row["status"] == "PENDING" else None,
        "lastStatusCode": row["last_status_code"],
        "createdAt": row["created_at"],
        "updatedAt": row["updated_at"],
        "attempts": [attempt_json(a) for a in row.get("attempts", [])],
    }


async def get_delivery(conn: AsyncConnection, scope: Scope, delivery_id: str) -> dict[str, Any]:
    """One delivery of the scope with its attempts. Raises NotFound."""
    row = (
        (
            await conn.execute(
                select(*_DELIVERY_COLUMNS)
                .join(outbox_events, outbox_events.c.id == webhook_deliveries.c.event_id)
                .where(_delivery_scoped(scope), webhook_deliveries.c.id == delivery_id)
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"webhook delivery {delivery_id} not found")
    attempts = await _attempts_of(conn, [delivery_id])
    return {**dict(row), "attempts": attempts[delivery_id]}


DELIVERY_STATUSES = ("PENDING", "SUCCEEDED", "FAILED")


async def list_deliveries(
    conn: AsyncConnection,
    scope: Scope,
    endpoint_id: str,
    page: Page,
    *,
    status: str | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of an endpoint's deliveries, newest first, each with its attempts.
    Raises NotFound, ValidationFailed (unknown status filter)."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise ValidationFailed({"status": [f"must be one of {', '.join(DELIVERY_STATUSES)}"]})
    await get_endpoint(conn, scope, endpoint_id)
    query = (
        select(*_DELIVERY_COLUMNS)
        .join(outbox_events, outbox_events.c.id == webhook_deliveries.c.event_id)
        .where(_delivery_scoped(scope), webhook_deliveries.c.endpoint_id == endpoint_id)
    )
    if status is not None:
        query = query.where(webhook_deliveries.c.status == status)
    rows, cursor = await fetch_page(
        conn, query, webhook_deliveries.c.created_at, webhook_deliveries.c.id, page
    )
    attempts = await _attempts_of(conn, [r["id"] for r in rows])
    return [{**r, "attempts": attempts[r["id"]]} for r in rows], cursor


async def replay_delivery(
    conn: AsyncConnection, scope: Scope, delivery_id: str, now: datetime
) -> dict[str, Any]:
    """Start a new run of a delivery, whatever its status: PENDING, due now, with the whole
    retry schedule ahead of it (`attemptCount` counts the current run; earlier attempts stay
    listed). Raises NotFound, WebhookEndpointInactive."""
    row = (
        (
            await conn.execute(
                select(webhook_deliveries.c.endpoint_id, webhook_endpoints.c.is_active)
                .join(
                    webhook_endpoints,
                    webhook_endpoints.c.id == webhook_deliveries.c.endpoint_id,
                )
                .where(_delivery_scoped(scope), webhook_deliveries.c.id == delivery_id)
                .with_for_update(of=webhook_deliveries)
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound(f"webhook delivery {delivery_id} not found")
    if not row["is_active"]:
        raise WebhookEndpointInactive(f"webhook endpoint {row['endpoint_id']} is disabled")
    await conn.execute(
        update(webhook_deliveries)
        .where(_delivery_scoped(scope), webhook_deliveries.c.id == delivery_id)
        .values(
            status="PENDING",
            attempt_count=0,
            next_attempt_at=now,
            queued_at=None,
            updated_at=func.now(),
        )
    )
    return await get_delivery(conn, scope, delivery_id)


# -- deliveries: the state machine the workers drive ----------------------------------------------


@dataclass(frozen=True)
class AttemptPlan:
    """Everything one attempt sends: POST `body` to `url` with `headers`."""

    delivery_id: str
    endpoint_id: str
    event_id: str
    url: str
    body: bytes
    headers: dict[str, str]
    attempt_number: int  # 1 for the first attempt of the current run


@dataclass(frozen=True)
class AttemptResult:
    """What happened: a status code, or an error (timeout, refused, not allowed) with none."""

    status_code: int | None
    latency_ms: int
    error: str | None = None
    response_excerpt: str | None = None


@dataclass(frozen=True)
class Outcome:
    status: str  # the delivery's status after the attempt
    next_attempt_at: datetime | None
    endpoint_disabled: str | None  # the reason, when this attempt disabled the endpoint


def _succeeded(status_code: int | None, error: str | None) -> bool:
    return status_code is not None and 200 <= status_code < 300 and error is None


async def due_deliveries(
    conn: AsyncConnection, now: datetime, limit: int = 100, *, lease: timedelta = PICKUP_LEASE
) -> list[str]:
    """Claim up to `limit` PENDING deliveries due by `now` for queue messages; returns their ids.

    Rows locked by another claimer are skipped, and each claimed row is leased for PICKUP_LEASE
    (marked `queued_at`), so overlapping pick-ups never hand out the same delivery twice; a
    message lost with Redis is made up for once the lease passes."""
    result = await conn.execute(
        text(
            "WITH due AS ("
            " SELECT d.id FROM webhook_deliveries d"
            " JOIN webhook_endpoints e ON e.id = d.endpoint_id"
            " WHERE d.status = 'PENDING' AND e.is_active"
            " AND (d.next_attempt_at <= :now OR d.next_attempt_at IS NULL)"
            " ORDER BY d.next_attempt_at NULLS FIRST LIMIT :limit"
            " FOR UPDATE OF d SKIP LOCKED)"
            " UPDATE webhook_deliveries d"
            " SET next_attempt_at = :lease_until, queued_at = :now, updated_at = now()"
            " FROM due WHERE d.id = due.id RETURNING d.id"
        ),
        {"now": now, "lease_until": now + lease, "limit": limit},
    )
    return [r[0] for r in result]


async def next_attempt(
    conn: AsyncConnection,
    box: SecretBox,
    delivery_id: str,
    now: datetime,
    *,
    lease: timedelta = IN_FLIGHT_LEASE,
) -> AttemptPlan | None:
    """Claim delivery `delivery_id` for one attempt and plan it; None when there is nothing to
    send now (not PENDING, not due and not handed out by a pick-up, endpoint inactive or gone).

    The claim (IN_FLIGHT_LEASE) commits with the caller's transaction, before anything is sent.
    The plan is signed afresh with `now` as X-SIR-Timestamp, with both secrets during a
    rotation."""
    d, e, o = webhook_deliveries, webhook_endpoints, outbox_events
    row = (
        (
            await conn.execute(
                select(
                    d.c.id,
                    d.c.status,
                    d.c.next_attempt_at,
                    d.c.queued_at,
                    d.c.attempt_count,
                    d.c.endpoint_id,
                    e.c.url,
                    e.c.is_active,
                    e.c.secret_enc,
                    e.c.previous_secret_enc,
                    e.c.previous_secret_expires_at,
                    e.c.headers_enc,
                    o.c.id.label("event_id"),
                    o.c.type.label("event_type"),
                    o.c.created_at.label("event_created_at"),
                    o.c.environment,
                    o.c.payload,
                )
                .join(e, e.c.id == d.c.endpoint_id)
                .join(o, o.c.id == d.c.event_id)
                .where(d.c.id == delivery_id)
                .with_for_update(of=d)
            )
        )
        .mappings()
        .first()
    )
    if row is None or row["status"] != "PENDING" or not row["is_active"]:
        return None
    due = row["next_attempt_at"] is None or row["next_attempt_at"] <= now
    if not due and row["queued_at"] is None:
        return None  # in flight elsewhere, or waiting for its retry time
    await conn.execute(
        update(d)
        .where(d.c.id == delivery_id)
        .values(next_attempt_at=now + lease, queued_at=None, updated_at=func.now())
    )
    body = event_body(
        row["event_id"],
        row["event_type"],
        row["event_created_at"],
        row["environment"],
        row["payload"],
    )
    in_force = [box.decrypt(row["secret_enc"])]
    if (
        row["previous_secret_enc"] is not None
        and row["previous_secret_expires_at"] is not None
        and row["previous_secret_expires_at"] > now
    ):
        in_force.append(box.decrypt(row["previous_secret_enc"]))
    timestamp = str(int(now.timestamp()))
    headers = _decrypt_headers(box, row["headers_enc"])
    headers.update(
        {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-SIR-Timestamp": timestamp,
            "X-SIR-Signature": signature_header(in_force, timestamp, body),
            "X-SIR-Event-Id": row["event_id"],
            "X-SIR-Delivery-Id": delivery_id,
        }
    )
    return AttemptPlan(
        delivery_id=delivery_id,
        endpoint_id=row["endpoint_id"],
        event_id=row["event_id"],
        url=row["url"],
        body=body,
        headers=headers,
        attempt_number=row["attempt_count"] + 1,
    )


async def record_attempt(
    conn: AsyncConnection,
    delivery_id: str,
    result: AttemptResult,
    now: datetime,
    *,
    retry_scale: float = 1.0,
    rng: random.Random | None = None,
) -> Outcome | None:
    """Record one attempt's result and move the delivery on: SUCCEEDED on a 2xx within 5 s;
    otherwise the next retry time by RETRY_SCHEDULE, or FAILED once it is spent. A 410 Gone
    fails the delivery and disables the endpoint; so does failing every attempt for 5 days.
    None when the delivery is gone (its endpoint was deleted meanwhile)."""
    d, e = webhook_deliveries, webhook_endpoints
    row = (
        (
            await conn.execute(
                select(d.c.id, d.c.attempt_count, d.c.endpoint_id, e.c.is_active)
                .join(e, e.c.id == d.c.endpoint_id)
                .where(d.c.id == delivery_id)
                .with_for_update(of=d)
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    error = result.error
    if error is None and result.latency_ms > SUCCESS_WITHIN_MS:
        error = f"answered after {result.latency_ms} ms (more than {SUCCESS_WITHIN_MS} ms)"
    excerpt = result.response_excerpt[:EXCERPT_CHARS] if result.response_excerpt else None
    await conn.execute(
        webhook_attempts.insert().values(
            delivery_id=delivery_id,
            attempted_at=now,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=error,
            response_excerpt=excerpt,
        )
    )
    attempts = row["attempt_count"] + 1
    disabled: str | None = None
    next_at: datetime | None = None
    if _succeeded(result.status_code, error):
        status = "SUCCEEDED"
    elif result.status_code == 410:
        status = "FAILED"
        disabled = "the endpoint answered 410 Gone"
    else:
        delay = retry_delay(attempts, rng=rng, scale=retry_scale)
        if delay is None:
            status = "FAILED"
        else:
            status = "PENDING"
            next_at = now + timedelta(seconds=delay)
        if await _failing_for_days(conn, row["endpoint_id"], now):
            disabled = "every delivery failed for 5 days"
    await conn.execute(
        update(d)
        .where(d.c.id == delivery_id)
        .values(
            status=status,
            attempt_count=attempts,
            next_attempt_at=next_at,
            last_status_code=result.status_code,
            updated_at=func.now(),
        )
    )
    if disabled is not None and row["is_active"]:
        await conn.execute(
            update(e)
            .where(e.c.id == row["endpoint_id"])
            .values(is_active=False, disabled_reason=disabled, updated_at=func.now())
        )
    else:
        disabled = None
    return Outcome(status, next_at, disabled)


async def _failing_for_days(conn: AsyncConnection, endpoint_id: str, now: datetime) -> bool:
    """True when the endpoint has failed every attempt for DISABLE_AFTER: no success since the
    cutoff, and the last attempt before the cutoff failed too (so failing started before it).

    Looks only at deliveries created in the last 7 days (5 days plus the ~1 day schedule and a
    margin), which the (endpoint_id, created_at) index serves."""
    cutoff = now - DISABLE_AFTER
    d, a = webhook_deliveries, webhook_attempts
    ok = and_(a.c.status_code.between(200, 299), a.c.error.is_(None))
    recent = (
        await conn.execute(
            select(func.count())
            .select_from(a.join(d, d.c.id == a.c.delivery_id))
            .where(
                d.c.endpoint_id == endpoint_id,
                d.c.created_at >= now - timedelta(days=7),
                a.c.attempted_at > cutoff,
                ok,
            )
        )
    ).scalar_one()
    if recent:
        return False
    before = (
        (
            await conn.execute(
                select(a.c.status_code, a.c.error)
                .select_from(a.join(d, d.c.id == a.c.delivery_id))
                .where(
                    d.c.endpoint_id == endpoint_id,
                    d.c.created_at >= now - timedelta(days=7),
                    a.c.attempted_at <= cutoff,
                )
                .order_by(a.c.attempted_at.desc())
                .limit(1)
            )
        )
        .mappings()
        .first()
    )
    return before is not None and not _succeeded(before["status_code"], before["error"])


__all__ = [
    "AttemptPlan",
    "AttemptResult",
    "EndpointSpec",
    "Outcome",
    "create_endpoint",
    "delete_endpoint",
    "destination_problem",
    "due_deliveries",
    "endpoint_json",
    "event_body",
    "get_delivery",
    "get_endpoint",
    "header_problems",
    "list_deliveries",
    "list_endpoints",
    "next_attempt",
    "patch_endpoint",
    "record_attempt",
    "replay_delivery",
    "retry_delay",
    "rotate_secret",
    "send_test",
    "url_problems",
]
