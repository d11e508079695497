"""Widget endpoints (contract 3.2 and 8): the partner's configuration and the nonprofit
directory for a browser holding only a publishable key, the CORS rules of the widget endpoints,
and the embeddable `widget.js` (the donation endpoints are in `http_front.donations`).

CORS is open on the widget endpoints only (`WIDGET_PATHS`): any origin may call them, because a
publishable key is public by design and no cookie or ambient credential is involved
(`Access-Control-Allow-Origin: *`, never with credentials). A preflight `OPTIONS` needs no key
and answers 204 with the methods and headers a widget may send. Every other route sends no CORS
header at all, so a browser on another origin cannot read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web

from engine import organizations
from engine.errors import NotFound
from engine.pagination import read_page
from engine.widget_config import widget_config
from http_front.auth_partner import widget_key
from http_front.body import json_response
from http_front.keys import DB
from http_front.openapi import PAGE, Query, documented
from http_front.principal import principal
from schemas.donations import WidgetConfigOut, WidgetOrganizationList, WidgetOrganizationOut

BASE = "/v1/partner"
# Path prefixes of the widget endpoints: the only ones with CORS headers.
WIDGET_PATHS = (f"{BASE}/config", f"{BASE}/organizations", f"{BASE}/donations/")
STATIC = Path(__file__).resolve().parent / "static"

CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    # What a widget may read from an answer besides the simple headers.
    "Access-Control-Expose-Headers": "X-Request-Id, X-Trace-ID, X-RateLimit-Limit, "
    "X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After",
}
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "X-Partner-Key, X-Timestamp, X-Signature, Content-Type, "
    "X-Request-Id",
    "Access-Control-Max-Age": "600",
}


def is_widget_path(path: str) -> bool:
    return any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in WIDGET_PATHS)


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer of a widget endpoint, errors included (a widget must read a 429's
    Retry-After), carries the CORS headers; nothing else does."""
    if is_widget_path(request.path):
        for name, value in CORS_HEADERS.items():
            response.headers.setdefault(name, value)


async def preflight(request: web.Request) -> web.Response:
    """CORS preflight of a widget endpoint: no key needed (browsers send none)."""
    return web.Response(status=204, headers=PREFLIGHT_HEADERS)


def organization_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "slug": row["slug"],
        "name": row["name"],
        "logoUrl": row["logo_url"],
        "ein": row["ein"],
        "status": row["status"],
    }


@documented(
    "The partner's widget configuration",
    auth="widget",
    responses={200: WidgetConfigOut},
    description="CORS is open on the widget endpoints (`Access-Control-Allow-Origin: *`, no "
    "credentials; preflight OPTIONS needs no key). `webhookUrl` is the newest active webhook "
    "endpoint of the key's environment. `rateLimit` is the partner's (secret-key) budget; "
    "publishable-key calls have their own, 60 per minute per key and client IP.",
)
@widget_key
async def get_config(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        body = await widget_config(conn, principal(request).scope)
    return json_response(body)


@documented(
    "Look up a nonprofit",
    auth="widget",
    responses={200: WidgetOrganizationOut},
    errors=[NotFound],
    description="The shared nonprofit directory (operators and `sir-engine admin organizations "
    "import` fill it). INACTIVE organizations are shown with their status; donations to them "
    "are refused (422 UNKNOWN_ORGANIZATION).",
)
@widget_key
async def get_organization(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        row = await organizations.get_organization(conn, request.match_info["slug"])
    return json_response(organization_view(row))


@documented(
    "Search nonprofits",
    auth="widget",
    responses={200: WidgetOrganizationList},
    query=[*PAGE, Query("q", "Name or slug contains (case-insensitive)")],
    description="ACTIVE organizations only, newest first, cursor-paginated.",
)
@widget_key
async def search_organizations(request: web.Request) -> web.Response:
    q = request.query.get("q", "").strip() or None
    page = read_page(
        request.query.get("limit"), request.query.get("cursor"), {"q": q, "active": True}
    )
    async with request.app[DB].connect() as conn:
        rows, cursor = await organizations.list_organizations(conn, page, q=q, status="ACTIVE")
    return json_response({"data": [organization_view(r) for r in rows], "nextCursor": cursor})


@documented(
    "The embeddable donate widget (JavaScript)",
    auth="none",
    responses={200: "application/javascript"},
    description="""\
Put a donate button on any page with only a publishable key:

```html
<div data-sir-donate data-key="pk_test_..." data-nonprofit="american-red-cross"
     data-amount="2500" data-provider="stripe" data-api="https://sir.example.com"></div>
<script src="https://sir.example.com/widget.js" async></script>
```

Attributes: `data-key` (publishable key), `data-nonprofit` (slug), `data-amount` (cents),
optional `data-currency` (USD), `data-frequency` (once|monthly), `data-provider`
(every.org|stripe), `data-api` (this server's origin; default: where widget.js came from),
`data-email`/`data-first-name`/`data-last-name` to prefill the donor form, `data-user` (a
partnerUserId, honoured only for an existing user with the same email). The button asks for the
donor's name and email, calls `POST /v1/partner/donations/create-link`, opens the link in a new
window, polls `GET /v1/partner/donations/status/{id}` every 2 s and shows the tokens earned.""",
)
async def widget_js(request: web.Request) -> web.FileResponse:
    return web.FileResponse(
        STATIC / "widget.js",
        headers={
            "Content-Type": "application/javascript; charset=utf-8",
            "Cache-Control": "public, max-age=300",
            "Access-Control-Allow-Origin": "*",
        },
    )


def add_routes(app: web.Application) -> None:
    app.on_response_prepare.append(_cors)
    app.router.add_get(f"{BASE}/config", get_config)
    app.router.add_get(f"{BASE}/organizations", search_organizations)
    app.router.add_get(f"{BASE}/organizations/{{slug}}", get_organization)
    for path in (f"{BASE}/config", f"{BASE}/organizations", f"{BASE}/organizations/{{slug}}"):
        app.router.add_route("OPTIONS", path, preflight)
    app.router.add_get("/widget.js", widget_js)
