"""Cross-cutting request handling: request ids, metrics and the one error envelope.

Handlers raise engine errors (or aiohttp's HTTP exceptions for routing problems); only the
error middleware builds error bodies, so every failure has the contract's shape.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from engine.db import CONNECT_REFUSED
from engine.errors import NotFound, ServiceUnavailable, SirError, ValidationFailed
from engine.faults import dependency_of
from engine.wire import dumps
from http_front.metrics import DEPENDENCY_ERRORS, LATENCY, REQUESTS, route_class

log = logging.getLogger("sir.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_ID = web.RequestKey("request_id", str)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

_HTTP_CODES = {
    400: ("BadRequestError", "BAD_REQUEST"),
    401: ("AuthenticationError", "AUTH_REQUIRED"),
    403: ("AuthorizationError", "FORBIDDEN"),
    404: ("NotFoundError", "NOT_FOUND"),
    405: ("MethodNotAllowedError", "METHOD_NOT_ALLOWED"),
    413: ("PayloadTooLargeError", "PAYLOAD_TOO_LARGE"),
    415: ("UnsupportedMediaTypeError", "UNSUPPORTED_MEDIA_TYPE"),
    429: ("RateLimitError", "RATE_LIMITED"),
}


def error_response(
    status: int, name: str, code: str, message: str, details: dict[str, Any] | None = None
) -> web.Response:
    body = {"error": {"name": name, "code": code, "message": message, "details": details or {}}}
    return web.Response(status=status, text=dumps(body), content_type="application/json")


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Echo a safe caller `X-Request-Id` or make one; every response carries it and a trace id."""
    supplied = request.headers.get("X-Request-Id", "")
    request_id = supplied if _SAFE_ID.match(supplied) else f"req_{secrets.token_hex(12)}"
    trace_id = secrets.token_hex(16)
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    klass = route_class(request.path)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers["X-Request-Id"] = request_id
        exc.headers["X-Trace-ID"] = trace_id
        REQUESTS.labels(klass, request.method, str(exc.status)).inc()
        raise
    response.headers["X-Request-Id"] = request_id
    response.headers["X-Trace-ID"] = trace_id
    REQUESTS.labels(klass, request.method, str(response.status)).inc()
    LATENCY.labels(klass).observe(time.perf_counter() - started)
    return response


def _count_dependency_error(exc: BaseException) -> None:
    """Database and Redis failures feed `sir_http_dependency_errors_total` (the DB-errors alert)."""
    dependency = dependency_of(exc)
    if dependency is not None:
        DEPENDENCY_ERRORS.labels(dependency).inc()


# A dependency down for a moment: 503 with Retry-After, nothing applied.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    OSError,
    RedisConnectionError,
    RedisTimeoutError,
    *CONNECT_REFUSED,
)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every failure to `{"error": {name, code, message, details}}`; never leak internals."""
    try:
        return await handler(request)
    except SirError as exc:
        if isinstance(exc, ServiceUnavailable):
            _count_dependency_error(exc)
        response = error_response(exc.status, exc.name, exc.code, exc.message, exc.details)
        if isinstance(exc, ServiceUnavailable):
            response.headers["Retry-After"] = "5"
        for header, value in getattr(exc, "headers", {}).items():
            response.headers[header] = value
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        name, code = _HTTP_CODES.get(exc.status, ("HttpError", f"HTTP_{exc.status}"))
        message = exc.reason or code
        if exc.status == 413:
            message = "Request body is too large"
        response = error_response(exc.status, name, code, message)
        # Keep what the exception carried (Allow on a 405, rate-limit headers), but never its
        # content headers: the body is ours now.
        for header, value in exc.headers.items():
            if not header.lower().startswith("content-"):
                response.headers[header] = value
        return response
    except _UNREACHABLE as exc:
        _count_dependency_error(exc)
        log.warning("dependency unreachable: %s", type(exc).__name__)
        response = error_response(
            503,
            "ServiceUnavailableError",
            "SERVICE_UNAVAILABLE",
            "A dependency is unavailable; nothing was applied",
        )
        response.headers["Retry-After"] = "5"
        return response
    except DBAPIError as exc:
        _count_dependency_error(exc)
        if exc.connection_invalidated:
            response = error_response(
                503,
                "ServiceUnavailableError",
                "SERVICE_UNAVAILABLE",
                "The database is unavailable; nothing was applied",
            )
            response.headers["Retry-After"] = "5"
            return response
        log.exception("database error on %s %s", request.method, request.path)
        return error_response(500, "InternalError", "INTERNAL_ERROR", "Internal error")
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "InternalError", "INTERNAL_ERROR", "Internal error")


@web.middleware
async def nul_guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """PostgreSQL stores no NUL character in text, so a NUL in a path or query parameter would
    fail deep in a query (500). A path parameter with a NUL names no object that can exist
    (404); a query parameter with one is a field error (422). Bodies are checked where parsed."""
    if any("\x00" in value for value in request.match_info.values()):
        raise NotFound("No such object")
    bad = sorted({name for name, value in request.query.items() if "\x00" in name + value})
    if bad:
        raise ValidationFailed({name: ["must not contain NUL characters"] for name in bad})
    return await handler(request)
