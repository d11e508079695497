"""Who is calling: the principal an authenticated partner request carries.

The partner authentication (`http_front.auth_partner`) puts one in `request[PRINCIPAL]`; handlers
read it with `principal(request)` and pass `principal.scope` to the engine, so every query they
make is confined to the caller's partner and environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from engine.scope import Scope


@dataclass(frozen=True)
class Principal:
    scope: Scope  # partner_id + environment picked by the key prefix (*_test_ sandbox, *_live_ production)
    key_id: str
    key_kind: Literal["secret", "publishable"]
    partner_id: str
    partner_status: str
    tier: str
    enabled_features: tuple[str, ...]


# request[PRINCIPAL] holds it after authentication (a typed key: aiohttp checks and types it).
PRINCIPAL = web.RequestKey("sir.principal", Principal)


def principal(request: web.Request) -> Principal:
    """The authenticated caller. Raises RuntimeError when the route has no key authentication:
    that is a wiring bug (a handler reading a principal no decorator put there), not a 401."""
    found = request.get(PRINCIPAL)
    if not isinstance(found, Principal):
        raise RuntimeError(
            f"no principal on {request.method} {request.path}: wrap the handler in "
            "secret_key_required or widget_key"
        )
    return found
