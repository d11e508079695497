"""Operator authentication: `Authorization: Bearer <token>` against SIR_OPERATOR_TOKENS.

Tokens are compared through their SHA-256 digests with `hmac.compare_digest`, and every
configured token is compared (no early exit), so neither the length nor the position of a
match leaks through timing. The audit actor is a label derived from the token, never the token.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from engine.errors import AuthenticationFailed
from http_front.keys import SETTINGS

OPERATOR = web.RequestKey("sir.operator", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def operator_label(token: str) -> str:
    """How an operator appears in the audit log: a short digest of its token."""
    return "operator:" + hashlib.sha256(token.encode()).hexdigest()[:6]


def _matching_token(presented: str, configured: tuple[str, ...]) -> str | None:
    digest = hashlib.sha256(presented.encode()).digest()
    found = None
    for token in configured:
        if hmac.compare_digest(digest, hashlib.sha256(token.encode()).digest()):
            found = token
    return found


def operator_required(handler: Handler) -> Handler:
    """Refuse with 401 AUTH_REQUIRED unless the request carries a configured operator token;
    sets `request[OPERATOR]` to the operator's audit label."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        presented = presented.strip()
        token = None
        if scheme.lower() == "bearer" and presented:
            token = _matching_token(presented, request.app[SETTINGS].operator_tokens)
        if token is None:
            raise AuthenticationFailed("A valid operator token is required")
        request[OPERATOR] = operator_label(token)
        return await handler(request)

    return wrapper
