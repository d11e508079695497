"""Portal authentication: `Authorization: Bearer <access JWT>` for `/v1/partner/auth/me` and the
self-service key endpoints.

Refusals, all 401: no or non-Bearer header -> AUTH_REQUIRED; forged, malformed, `alg: none`,
refresh-instead-of-access or user gone -> INVALID_TOKEN; expired -> TOKEN_EXPIRED (refresh).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from engine.errors import AuthenticationFailed
from engine.portal import TokenSigner, user_for_token
from http_front.keys import DB, SETTINGS

PORTAL_USER = web.RequestKey("sir.portal_user", dict)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@functools.lru_cache(maxsize=4)
def _signer(master_key: bytes) -> TokenSigner:
    return TokenSigner.from_master_key(master_key)


def signer(request: web.Request) -> TokenSigner:
    """The JWT signer of this app (its key is derived from the master key once per process)."""
    return _signer(request.app[SETTINGS].master_key)


def bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationFailed("Send Authorization: Bearer <accessToken>")
    return token


def portal_user(request: web.Request) -> dict[str, Any]:
    """The portal user `portal_required` authenticated."""
    user: dict[str, Any] = request[PORTAL_USER]
    return user


def portal_required(handler: Handler) -> Handler:
    """Authenticate the access token and load its user into `request[PORTAL_USER]`."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        token = bearer(request)
        async with request.app[DB].connect() as conn:
            request[PORTAL_USER] = await user_for_token(conn, signer(request), token, "access")
        return await handler(request)

    return wrapper
