"""The OpenAPI 3.1 document, generated from the code, and the Swagger UI that shows it.

Nothing here is a hand-kept copy of the API. The document is built once, at startup, from:

- the application's router: every route (method + path) that is registered is in the document;
  a route whose handler has no `@documented(...)` still appears, flagged `x-sir-undocumented`
  (the OpenAPI test fails on it), so a new route cannot silently go missing;
- `@documented(...)` on each handler: summary, auth mode, request and response models, the
  domain errors it can answer, its query parameters. The decorator only attaches metadata
  (an attribute); the handler is returned unchanged, so it may sit anywhere in a stack of
  decorators: the builder finds it through the `functools.wraps` `__wrapped__` chain;
- the pydantic wire models of `schemas/` (requests validated as they are, responses mirrored
  in `schemas.responses`), through `pydantic.json_schema.models_json_schema`;
- the engine's error classes (`code`, `status`, `name`), plus the refusals each auth mode can
  give (contract 3.5) and the common ones (malformed JSON, body size, validation, 5xx);
- the partner decorator's own marker (`__sir_auth__`), for required features.

Served at `GET /partner-api/openapi.json`; Swagger UI at `GET /partner-api`, its assets from the
`swagger-ui-py` package (Swagger UI 5, which renders OpenAPI 3.1; no CDN).

`python -m http_front.openapi > openapi.json` writes the document without starting anything.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import core_schema

from engine.errors import (
    ApiKeyExpired,
    AuthenticationFailed,
    FeatureNotEnabled,
    InvalidApiKey,
    InvalidSignature,
    InvalidToken,
    IpNotAllowed,
    PartnerNotActive,
    PartnerSuspended,
    RateLimited,
    ReplayedRequest,
    SecretKeyRequired,
    ServiceUnavailable,
    SirError,
    TimestampOutOfRange,
    TokenExpired,
    ValidationFailed,
)
from engine.money import Tokens
from engine.pagination import DEFAULT_LIMIT, MAX_LIMIT, InvalidCursor
from http_front.body import MalformedJson, UnsupportedMediaType
from schemas.responses import ErrorEnvelope

log = logging.getLogger("sir.http")

AuthMode = Literal["secret", "publishable", "widget", "portal", "operator", "none"]
ResponseBody = type[BaseModel] | str | None  # a model, a media type (text), or any JSON
H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])

DOCS_PATH = "/partner-api"
DOCUMENT_PATH = f"{DOCS_PATH}/openapi.json"
ASSETS_PATH = f"{DOCS_PATH}/assets"
OPENAPI_TEXT = web.AppKey("sir.openapi_text", str)
_DOC_ATTR = "__sir_openapi__"
_AUTH_ATTR = "__sir_auth__"  # set by http_front.auth_partner's decorators (features live there)


# -- the metadata handlers carry ---------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """One error answer an operation documents: status, stable code, readable name, when."""

    status: int
    code: str
    name: str
    when: str = ""

    @classmethod
    def of(cls, error: type[SirError] | Refusal) -> Refusal:
        if isinstance(error, Refusal):
            return error
        return cls(error.status, error.code, error.name, _CODE_NOTES.get(error.code, ""))


@dataclass(frozen=True)
class Query:
    """A query parameter (always optional: every filter of the API is)."""

    name: str
    description: str
    enum: tuple[str, ...] | None = None
    type: Literal["string", "integer"] = "string"
    format: str | None = None


@dataclass(frozen=True)
class Doc:
    summary: str
    auth: AuthMode
    request: type[BaseModel] | None
    responses: Mapping[int, ResponseBody]
    errors: tuple[Refusal, ...]
    query: tuple[Query, ...]
    description: str
    hidden: bool


def documented(
    summary: str,
    *,
    auth: AuthMode,
    request: type[BaseModel] | None = None,
    responses: Mapping[int, ResponseBody] | None = None,
    errors: Iterable[type[SirError] | Refusal] = (),
    query: Iterable[Query] = (),
    description: str = "",
    hidden: bool = False,
) -> Callable[[H], H]:
    """Attach OpenAPI metadata to a handler; returns the handler itself, behaviour untouched.

    `errors` are the domain errors of the operation; the auth refusals of `auth`, 422 for a body
    or query, the body errors and 5xx are added by the builder. `hidden` keeps a route (the
    docs' own pages) out of the document."""
    doc = Doc(
        summary=summary,
        auth=auth,
        request=request,
        responses=dict(responses or {200: None}),
        errors=tuple(Refusal.of(e) for e in errors),
        query=tuple(query),
        description=description,
        hidden=hidden,
    )

    def attach(handler: H) -> H:
        setattr(handler, _DOC_ATTR, doc)
        return handler

    return attach


def doc_of(handler: Any) -> Doc | None:
    """The handler's `Doc`, wherever `@documented` sat among its decorators."""
    seen = 0
    while handler is not None and seen < 32:
        found = getattr(handler, _DOC_ATTR, None)
        if isinstance(found, Doc):
            return found
        handler, seen = getattr(handler, "__wrapped__", None), seen + 1
    return None


def _required_features(handler: Any) -> tuple[str, ...]:
    while handler is not None:
        spec = handler.__dict__.get(_AUTH_ATTR) if hasattr(handler, "__dict__") else None
        if spec is not None:
            return tuple(getattr(spec, "features", ()))
        handler = getattr(handler, "__wrapped__", None)
    return ()


# -- shared vocabulary for the decorators --------------------------------------------------------------

LIMIT = Query(
    "limit", f"Page size, 1-{MAX_LIMIT} (default {DEFAULT_LIMIT}); outside: 422", type="integer"
)
CURSOR = Query(
    "cursor",
    "`nextCursor` of the previous page. A cursor carries the filters it was made with: "
    "reusing it with other filters is 400 INVALID_CURSOR",
)
PAGE = (LIMIT, CURSOR)
FROM = Query("from", "Created at or after (inclusive), RFC 3339 with an offset", format="date-time")
TO = Query("to", "Created before (exclusive), RFC 3339 with an offset", format="date-time")
ENVIRONMENT = Query("environment", "Only this environment", enum=("sandbox", "production"))
SLUG_TAKEN = Refusal(409, "SLUG_TAKEN", "ConflictError", "The slug is used already")
PAYLOAD_TOO_LARGE = Refusal(
    413, "PAYLOAD_TOO_LARGE", "PayloadTooLargeError", "Body over 1 MiB (8 MiB on /actions/batch)"
)
INTERNAL_ERROR = Refusal(
    500, "INTERNAL_ERROR", "InternalError", "A bug; the body never leaks internals"
)

# What each code means, for the error responses' descriptions (contract sections 3.5, 4, 7).
_CODE_NOTES = {
    "AUTH_REQUIRED": "No credentials, or malformed ones (a signed call without a valid "
    "X-Timestamp and X-Signature; no Bearer token)",
    "SECRET_KEY_REQUIRED": "A publishable key on an endpoint that needs the secret key",
    "INVALID_API_KEY": "Unknown, revoked or deactivated key",
    "API_KEY_EXPIRED": "The key is past its expiresAt",
    "TIMESTAMP_OUT_OF_RANGE": "X-Timestamp more than 300 s from server time (details.serverTime)",
    "INVALID_SIGNATURE": "The signature does not match the request",
    "PARTNER_SUSPENDED": "The partner is SUSPENDED",
    "PARTNER_NOT_ACTIVE": "The partner is DEACTIVATED, or PENDING_APPROVAL with a live key "
    "(401); in the portal: no keys for a SUSPENDED or DEACTIVATED partner (403)",
    "IP_NOT_ALLOWED": "Secret-key call from an IP outside the allowlist",
    "FEATURE_NOT_ENABLED": "The feature is not enabled for the partner (details.feature)",
    "RATE_LIMITED": "Budget spent; retry after Retry-After seconds (details.retryAfter)",
    "REPLAYED_REQUEST": "This signature was accepted already, or signed before the server's "
    "replay state was reset: sign every request afresh",
    "INVALID_TOKEN": "Forged, malformed, alg none, wrong token type, or the user is gone",
    "TOKEN_EXPIRED": "The token is past its exp: refresh (access) or log in again (refresh)",
    "INVALID_CREDENTIALS": "Unknown email or wrong password (never says which)",
    "MALFORMED_JSON": "The body is not JSON",
    "UNSUPPORTED_MEDIA_TYPE": "A body that is not application/json",
    "VALIDATION_FAILED": 'Fields wrong: details.fields = {"amount": ["must be greater than 0"]}; '
    "unknown fields are refused, a NUL character anywhere is refused",
    "INVALID_CURSOR": "Unknown cursor, or filters changed under a cursor",
    "NOT_FOUND": "Unknown object, or one of another partner or environment (never 403)",
    "SERVICE_UNAVAILABLE": "Database or Redis unreachable; Retry-After set; nothing applied",
    "IDEMPOTENT": "Same idempotency key and same body: nothing applied again; the original "
    "answer is in details.original, with header Idempotent-Replayed: true",
    "IDEMPOTENCY_KEY_REUSED": "Same idempotency key with a different body",
    "IDEMPOTENCY_IN_PROGRESS": "A duplicate still in flight after 5 seconds",
    "UNKNOWN_ACTION_TYPE": "An action type the partner has not registered",
    "UNKNOWN_STAKEHOLDER_TYPE": "A stakeholder type the partner has not registered",
    "UNKNOWN_USER": "Unknown partnerUserId with autoCreateUsers: false",
    "UNKNOWN_ORGANIZATION": "Unknown or INACTIVE organizationSlug",
    "CAMPAIGN_NOT_APPLICABLE": "The named campaignId does not exist here, or does not apply "
    "(status, schedule, action type)",
    "CAMPAIGN_BUDGET_EXHAUSTED": "A campaign budget cannot cover the action "
    "(details.scope: campaign or user)",
    "INSUFFICIENT_POOL": "The pool holds too few tokens",
    "NO_ACTIVE_POOL": "No usable pool in the key's environment",
    "ALREADY_REVERSED": "Nothing of the action is left to reverse",
    "REVERSAL_EXCEEDS_ACTION": "More than what remains (details.remainingAmount)",
    "INVALID_STATUS_TRANSITION": "A status change the lifecycle does not allow "
    "(details: from, to, allowed)",
    "KEY_NOT_USABLE": "The key is revoked, deactivated or expired: issue a new one",
    "REQUEST_ALREADY_DECIDED": "The top-up request was approved or rejected already",
    "EMAIL_TAKEN": "A portal user with this email exists",
    "PARTNER_NOT_APPROVED": "Production keys need an ACTIVE partner",
    "WEBHOOK_ENDPOINT_INACTIVE": "The endpoint is disabled: nothing would be sent",
    "PROVIDER_NOT_CONFIGURED": "This provider cannot take donations here (stripe in production "
    "without a Stripe key)",
    "PROVIDER_UNAVAILABLE": "The payment provider failed to make the link; the donation is FAILED",
    "UNKNOWN_PROVIDER": "Not stripe, every.org or test",
    "INVALID_PROVIDER_SIGNATURE": "Missing, stale (over 300 s) or wrong provider signature",
    "INVALID_NOTIFICATION": "The notice does not fit its donation (other checkout, other "
    "currency, no partnerDonationId)",
    "INVALID_CHECKOUT_TOKEN": "The test checkout link's token does not match its donation",
}

_SECRET_REFUSALS: tuple[type[SirError], ...] = (
    AuthenticationFailed,
    SecretKeyRequired,
    InvalidApiKey,
    ApiKeyExpired,
    TimestampOutOfRange,
    InvalidSignature,
    PartnerSuspended,
    PartnerNotActive,
    IpNotAllowed,
    RateLimited,
)
_PUBLISHABLE_REFUSALS: tuple[type[SirError], ...] = (
    AuthenticationFailed,
    InvalidApiKey,
    ApiKeyExpired,
    PartnerSuspended,
    PartnerNotActive,
    RateLimited,
)
_WIDGET_REFUSALS = tuple(e for e in _SECRET_REFUSALS if e is not SecretKeyRequired)
_AUTH_REFUSALS: dict[str, tuple[type[SirError], ...]] = {
    "secret": _SECRET_REFUSALS,
    "publishable": _PUBLISHABLE_REFUSALS,
    "widget": _WIDGET_REFUSALS,
    "portal": (AuthenticationFailed, InvalidToken, TokenExpired),
    "operator": (AuthenticationFailed,),
    "none": (),
}
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "secret": [{"secretKey": [], "signatureTimestamp": [], "signature": []}],
    "publishable": [{"publishableKey": []}],
    "widget": [
        {"publishableKey": []},
        {"secretKey": [], "signatureTimestamp": [], "signature": []},
    ],
    "portal": [{"portalJwt": []}],
    "operator": [{"operatorToken": []}],
    "none": [],
}
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# Tag per handler module; the order is the order of the tags in Swagger UI.
_TAGS = {
    "actions": "Actions",
    "batches": "Actions",
    "users": "Users",
    "campaigns": "Campaigns",
    "pools": "Token pools",
    "transactions": "Transactions",
    "webhooks": "Webhooks",
    "widget": "Widget",
    "donations": "Widget",
    "providers": "Payment providers",
    "portal": "Portal",
    "admin": "Operator",
    "marketplace": "Marketplace",
    "admin_marketplace": "Operator",
    "health": "Operations",
    "openapi": "Documentation",
}

_PATH_PARAMS = {
    "action_id": "The action's id (24 hex)",
    "batch_id": "The batch's id",
    "external_id": "The partner's own id for the user (externalUserId); percent-encode a '/'",
    "campaign_id": "The campaign's id",
    "pool_id": "The token pool's id",
    "endpoint_id": "The webhook endpoint's id",
    "delivery_id": "The webhook delivery's id",
    "partner_id": "The partner's id (24 hex)",
    "key_id": "The API key's id",
    "request_id": "The top-up request's id",
    "slug": "The organization's slug",
    "product_id": "The catalog product's id",
    "order_id": "The order's id",
    "day": "A UTC day, YYYY-MM-DD",
    "drift_id": "The reconciliation finding's id",
    "donation_id": "The partnerDonationId create-link answered",
    "provider": "stripe, every.org or test",
}


# -- text of the document -----------------------------------------------------------------------------

_INFO = """\
The SIR rewards engine: partners reward their users' actions with SIR tokens.

**Hosts and prefixes.** Partner endpoints live under `/v1/partner`, operator endpoints under
`/api/v1/admin`; `/healthz`, `/readyz` and `/metrics` are for operations.

**Environments.** `sandbox` and `production` live side by side; the key prefix picks one
(`pk_test_`/`sk_test_` sandbox, `pk_live_`/`sk_live_` production). Every object belongs to
one environment and is invisible (404) from the other.

**Authentication.** Each operation lists its mode under *Authorize* and in `x-sir-auth`:
`secret` (secret key + HMAC signature, server to server), `widget` (a publishable key alone,
or a signed secret-key call), `portal` (portal JWT), `operator` (operator token), `none`.
Refusals are checked in the contract's order; the first that applies answers. A PENDING_APPROVAL
partner may use its sandbox keys; its live keys are refused. Key and partner state is cached
per process for at most 1 second: a revocation or status change takes effect everywhere within 1 s.
The client IP behind `SIR_TRUSTED_PROXIES` is read from `X-Forwarded-For` from the right, skipping
trusted proxies (the left-most untrusted address, read so it cannot be forged).

**Errors.** Every error body is `{"error": {"name", "code", "message", "details"}}`; branch on
`code`. Each operation lists the codes it can answer. Unknown fields in a body are refused
(422, "is not a known field": typos surface); a NUL character anywhere in a body is a 422 field
error. With the database or Redis unreachable the answer is 503 SERVICE_UNAVAILABLE with
`Retry-After`, and nothing was applied.

**Headers.** Every response carries `X-Request-Id` (yours, if you sent at most 128 safe
characters) and `X-Trace-ID`. Authenticated partner responses carry `X-RateLimit-Limit`,
`X-RateLimit-Remaining` and `X-RateLimit-Reset`. Limits are per partner and environment (every
key shares them), sliding windows per hour and per minute by tier (STANDARD 1,000/100,
PROFESSIONAL 5,000/500, ENTERPRISE 20,000/2,000); `X-RateLimit-Reset` is the end of the binding
window's current slot, on a 429 it is now + `Retry-After`. Publishable-key calls have their own
budget: 60 per minute per key and client IP.

**Pagination.** Lists take `?limit=` (1-200, default 50) and `?cursor=`, answer
`{"data": [...], "nextCursor": "..." | null}`, newest first. A cursor carries its filters:
reusing it with other filters is 400 INVALID_CURSOR. Time filters `from` (inclusive) and `to`
(exclusive) need an offset; `to` not after `from` is 422.

**Numbers and times.** Token amounts are fixed-point with 6 decimals, answered as JSON numbers
(trailing zeros trimmed), accepted as numbers or decimal strings and parsed exactly; more than 6
decimals in a token field is refused, never rounded. Action `amount` is in currency units. Times
are RFC 3339; any offset is accepted, answers are UTC with `Z`.
"""

_SIGNING_TEXT = """\
Server-to-server calls: `X-Partner-Key: sk_test_...` (or `sk_live_...`) **and** the two signature
headers `X-Timestamp` and `X-Signature`:

```
bodyHash      = lowercase hex(sha256(raw request body bytes))      # empty body: sha256 of ""
signedPayload = X-Timestamp + METHOD + pathWithQuery + bodyHash     # plain concatenation
X-Signature   = lowercase hex(hmac_sha256(key = UTF-8 bytes of the HMAC secret as issued,
                                          message = UTF-8 bytes of signedPayload))
```

`METHOD` is upper case; `pathWithQuery` is the request target exactly as sent
(`/v1/partner/users?limit=10`). `X-Signature: t=<ts>,v1=<hex>` is accepted too (then `t` must
equal `X-Timestamp`). The timestamp must be within 300 s of server time.

Test vector: HMAC secret `9f` x 32, `X-Timestamp: 1767225600`, `GET /v1/partner/users?limit=10`
with no body gives `037ab9e644b638c748ea8f78d5068b34795997ca17a7f6cd90fcd4774e0674a0`.

**Replays.** A signed POST, PUT, PATCH or DELETE whose signature was already accepted is refused
with `401 REPLAYED_REQUEST` until its timestamp leaves the window. Sign every request, retries
included, afresh: identical signed bytes within the same second carry the same signature, so
wait a second (or use a new timestamp) before repeating a bodiless write. A retried action is
recognised by its idempotency key, not refused as a replay.

Swagger UI cannot compute signatures: use the package's client or your own signer."""


def _security_schemes() -> dict[str, Any]:
    return {
        "secretKey": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Partner-Key",
            "description": _SIGNING_TEXT,
        },
        "signatureTimestamp": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Timestamp",
            "description": "Unix seconds; part of the secret-key signature (see secretKey)",
        },
        "signature": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Signature",
            "description": "Lowercase hex HMAC-SHA256 of the request (see secretKey)",
        },
        "publishableKey": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Partner-Key",
            "description": "Browser widget: `X-Partner-Key: pk_test_...` alone, only on widget "
            "endpoints (CORS open there; preflight needs no key). The IP allowlist does not "
            "apply; the budget is 60 calls per minute per key and client IP.",
        },
        "portalJwt": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "Partner portal: `Authorization: Bearer <accessToken>` from "
            "`POST /v1/partner/auth/login` (HS256; access 900 s, refresh 7 days).",
        },
        "operatorToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "Operators: `Authorization: Bearer <token>`, tokens from "
            "configuration (SIR_OPERATOR_TOKENS). Every operator write is audited.",
        },
    }


def _headers() -> dict[str, Any]:
    def header(description: str, kind: str = "string") -> dict[str, Any]:
        return {"description": description, "schema": {"type": kind}}

    return {
        "X-Request-Id": header("Yours if you sent a safe one (at most 128 characters), else new"),
        "X-Trace-ID": header("Trace id of this request"),
        "X-RateLimit-Limit": header("The hourly cap", "integer"),
        "X-RateLimit-Remaining": header(
            "The lower of what is left in the hour and the minute", "integer"
        ),
        "X-RateLimit-Reset": header("Unix time at which the binding window resets", "integer"),
        "Retry-After": header("Seconds to wait before retrying", "integer"),
        "Idempotent-Replayed": header("`true` on the replay of an idempotent request"),
    }


# -- JSON Schemas from the wire models ----------------------------------------------------------------


class _Generator(GenerateJsonSchema):
    """Responses write exact decimals as JSON numbers (engine.wire), not strings; property
    titles ("Stakeholdertypecode") add nothing to camelCase names."""

    def decimal_schema(self, schema: core_schema.DecimalSchema) -> dict[str, Any]:
        if self.mode == "serialization":
            return {"type": "number"}
        return super().decimal_schema(schema)

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def encode_default(self, dft: Any) -> Any:
        # Defaults as the wire writes them: Tokens(0) is 0, Decimal("1") is 1 (not a string).
        if isinstance(dft, Tokens):
            dft = dft.to_decimal()
        if isinstance(dft, Decimal):
            return int(dft) if dft == dft.to_integral_value() else float(dft)
        if isinstance(dft, BaseModel):  # field by field, so nested Tokens are numbers too
            return {
                info.alias or name: self.encode_default(getattr(dft, name))
                for name, info in type(dft).model_fields.items()
            }
        if isinstance(dft, list | tuple):
            return [self.encode_default(item) for item in dft]
        return super().encode_default(dft)


def _reachable(components: Mapping[str, Any], roots: Iterable[dict[str, Any]]) -> set[str]:
    """Names of the component schemas `roots` refer to, directly or through others."""
    prefix = "#/components/schemas/"
    found: set[str] = set()
    pending = [json.dumps(r) for r in roots]
    while pending:
        for name in re.findall(re.escape(prefix) + r'([^"]+)"', pending.pop()):
            if name not in found and name in components:
                found.add(name)
                pending.append(json.dumps(components[name]))
    return found


def _patch_semantics(
    components: dict[str, Any], patches: list[dict[str, Any]], others: list[dict[str, Any]]
) -> None:
    """PATCH bodies change only the fields sent: a field's Python default is a "not sent"
    marker (`""`, `0`, `[]`), not a value the engine applies, so it is left out of the schema
    (of the models only PATCH bodies use; a model shared with a create keeps its defaults)."""
    for name in _reachable(components, patches) - _reachable(components, others):
        schema = components[name]
        for prop in schema.get("properties", {}).values():
            prop.pop("default", None)
        note = "Only the fields sent change; absent fields are left as they are."
        schema["description"] = f"{schema.get('description', '')}\n\n{note}".strip()


def _schemas(
    requests: Iterable[type[BaseModel]], responses: Iterable[type[BaseModel]]
) -> tuple[dict[tuple[type[BaseModel], str], dict[str, Any]], dict[str, Any]]:
    pairs: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for model in requests:
        if (model, "validation") not in pairs:
            pairs.append((model, "validation"))
    for model in responses:
        if (model, "serialization") not in pairs:
            pairs.append((model, "serialization"))
    refs, top = models_json_schema(
        pairs,
        by_alias=True,
        ref_template="#/components/schemas/{model}",
        schema_generator=_Generator,
    )
    by_model: dict[tuple[type[BaseModel], str], dict[str, Any]] = {}
    for (key, mode), schema in refs.items():
        if isinstance(key, type) and issubclass(key, BaseModel):
            by_model[(key, mode)] = dict(schema)
    return by_model, dict(top.get("$defs", {}))


# -- building the document -------------------------------------------------------------------------------


@dataclass
class _Route:
    method: str
    path: str  # OpenAPI form: /v1/partner/users/{externalId}
    params: list[str]  # aiohttp names, in order
    handler: Any
    module: str
    doc: Doc | None
    features: tuple[str, ...] = field(default_factory=tuple)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")


def routes_of(app: web.Application) -> list[_Route]:
    """Every (method, path) the app answers, HEAD and OPTIONS aside; static files skipped."""
    found: list[_Route] = []
    for resource in app.router.resources():
        if isinstance(resource, web.StaticResource):
            continue
        info = resource.get_info()
        raw = info.get("path") or info.get("formatter")
        if not isinstance(raw, str):
            continue
        params = _PARAM.findall(raw)
        path = _PARAM.sub(lambda m: "{" + _camel(m.group(1)) + "}", raw)
        for route in resource:
            if route.method in {"HEAD", "OPTIONS", "*"}:
                continue
            handler = route.handler
            module = getattr(handler, "__module__", "") or ""
            found.append(
                _Route(
                    method=route.method,
                    path=path,
                    params=params,
                    handler=handler,
                    module=module.rsplit(".", 1)[-1],
                    doc=doc_of(handler),
                    features=_required_features(handler),
                )
            )
    return found


def _operation_id(route: _Route) -> str:
    name = getattr(route.handler, "__name__", "handler")
    return f"{route.module}_{name}"


def _refusals(route: _Route, doc: Doc) -> list[Refusal]:
    """The operation's errors: its own, its auth mode's, and the common ones, in that order."""
    found = [*doc.errors]
    for error in _AUTH_REFUSALS[doc.auth]:
        found.append(Refusal.of(error))
    if doc.auth in {"secret", "widget"} and route.method in _WRITES:
        found.append(Refusal.of(ReplayedRequest))
    if route.features:
        found.append(
            Refusal(
                403,
                FeatureNotEnabled.code,
                FeatureNotEnabled.name,
                f"Needs the partner feature {', '.join(route.features)}",
            )
        )
    if doc.request is not None:
        found += [
            Refusal.of(MalformedJson),
            PAYLOAD_TOO_LARGE,
            Refusal.of(UnsupportedMediaType),
            Refusal.of(ValidationFailed),
        ]
    elif doc.query:
        found.append(Refusal.of(ValidationFailed))
    if any(q.name == "cursor" for q in doc.query):
        found.append(Refusal.of(InvalidCursor))
    found += [INTERNAL_ERROR, Refusal.of(ServiceUnavailable)]
    unique: dict[tuple[int, str], Refusal] = {}
    for refusal in found:
        unique.setdefault((refusal.status, refusal.code), refusal)
    return list(unique.values())


def _error_example(refusal: Refusal) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if refusal.code == "VALIDATION_FAILED":
        details = {"fields": {"amount": ["must be greater than 0"]}}
    elif refusal.code == "RATE_LIMITED":
        details = {"retryAfter": 12}
    return {
        "error": {
            "name": refusal.name,
            "code": refusal.code,
            "message": refusal.when or refusal.code,
            "details": details,
        }
    }


def _header_refs(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _responses(
    route: _Route,
    doc: Doc,
    refs: Mapping[tuple[type[BaseModel], str], dict[str, Any]],
    examples: Mapping[Any, Any],
) -> dict[str, Any]:
    partner = doc.auth in {"secret", "publishable", "widget"}
    common = ("X-Request-Id", "X-Trace-ID")
    budget = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset") if partner else ()
    out: dict[str, Any] = {}
    for status, body in sorted(doc.responses.items()):
        response: dict[str, Any] = {
            "description": _REASONS.get(status, "Answer"),
            "headers": _header_refs(*common, *budget),
        }
        if isinstance(body, str):
            response["content"] = {body: {"schema": {"type": "string"}}}
        else:
            schema = refs[(body, "serialization")] if body is not None else {}
            media: dict[str, Any] = {"schema": schema}
            if status in examples:
                media["example"] = examples[status]
            response["content"] = {"application/json": media}
        out[str(status)] = response
    by_status: dict[int, list[Refusal]] = {}
    for refusal in _refusals(route, doc):
        if refusal.status in doc.responses:
            continue  # the operation documents that status with its own body (e.g. /readyz 503)
        by_status.setdefault(refusal.status, []).append(refusal)
    envelope = refs[(ErrorEnvelope, "serialization")]
    for status, refusals in sorted(by_status.items()):
        lines = "\n".join(
            f"- `{r.code}`: {r.when}" if r.when else f"- `{r.code}`" for r in refusals
        )
        headers = [*common, *budget]
        if status in {429, 503}:
            headers.append("Retry-After")
        if any(r.code == "IDEMPOTENT" for r in refusals):
            headers.append("Idempotent-Replayed")
        error_examples = {
            r.code: {"summary": r.code, "value": examples.get(r.code) or _error_example(r)}
            for r in refusals
        }
        out[str(status)] = {
            "description": f"{_REASONS.get(status, 'Error')}. Codes:\n{lines}",
            "headers": _header_refs(*headers),
            "content": {"application/json": {"schema": envelope, "examples": error_examples}},
        }
    return out


_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "Bad request",
    401: "Not authenticated",
    402: "Not enough tokens",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable",
    429: "Rate limited",
    500: "Internal error",
    503: "Service unavailable",
}


def _parameters(route: _Route, doc: Doc) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {
            "name": _camel(name),
            "in": "path",
            "required": True,
            "description": _PATH_PARAMS.get(name, name),
            "schema": {"type": "string"},
        }
        for name in route.params
    ]
    for query in doc.query:
        schema: dict[str, Any] = {"type": query.type}
        if query.enum:
            schema["enum"] = list(query.enum)
        if query.format:
            schema["format"] = query.format
        if query.name == "limit":
            schema.update(minimum=1, maximum=MAX_LIMIT, default=DEFAULT_LIMIT)
        params.append(
            {
                "name": query.name,
                "in": "query",
                "required": False,
                "description": query.description,
                "schema": schema,
            }
        )
    return params


def _operation(
    route: _Route, refs: Mapping[tuple[type[BaseModel], str], dict[str, Any]]
) -> dict[str, Any]:
    doc = route.doc
    if doc is None:
        log.warning("route %s %s has no @documented metadata", route.method, route.path)
        return {
            "operationId": _operation_id(route),
            "summary": "(undocumented)",
            "x-sir-undocumented": True,
            "responses": {"default": {"description": "Not documented yet"}},
        }
    examples = EXAMPLES.get((route.method, route.path), {})
    notes = [doc.description, NOTES.get(_operation_id(route), "")]
    if route.features:
        notes.append(f"Needs the partner feature(s): {', '.join(route.features)}.")
    operation: dict[str, Any] = {
        "operationId": _operation_id(route),
        "summary": doc.summary,
        "tags": [_TAGS.get(route.module, route.module.title())],
        "x-sir-auth": doc.auth,
        "security": _SECURITY[doc.auth],
    }
    description = "\n\n".join(n for n in notes if n)
    if description:
        operation["description"] = description
    parameters = _parameters(route, doc)
    if parameters:
        operation["parameters"] = parameters
    if doc.request is not None:
        required = any(f.is_required() for f in doc.request.model_fields.values())
        media: dict[str, Any] = {"schema": refs[(doc.request, "validation")]}
        if "request" in examples:
            media["example"] = examples["request"]
        operation["requestBody"] = {"required": required, "content": {"application/json": media}}
    operation["responses"] = _responses(route, doc, refs, examples)
    return operation


def _version() -> str:
    try:
        return importlib.metadata.version("sir-engine")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def build_document(app: web.Application) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`'s routes."""
    routes = [r for r in routes_of(app) if r.doc is None or not r.doc.hidden]
    requests = [r.doc.request for r in routes if r.doc and r.doc.request]
    responses: list[type[BaseModel]] = [ErrorEnvelope]
    for route in routes:
        if route.doc:
            responses += [b for b in route.doc.responses.values() if isinstance(b, type)]
    refs, components = _schemas(requests, responses)
    bodies = [
        (r.method, refs[(r.doc.request, "validation")]) for r in routes if r.doc and r.doc.request
    ]
    _patch_semantics(
        components,
        [ref for method, ref in bodies if method == "PATCH"],
        [ref for method, ref in bodies if method != "PATCH"],
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, refs)
    # Only what the operations use (pydantic may emit defs no operation reaches).
    used = _reachable(components, [paths])
    components = {name: schema for name, schema in components.items() if name in used}
    used_tags = {t for ops in paths.values() for op in ops.values() for t in op.get("tags", ())}
    return {
        "openapi": "3.1.0",
        "info": {"title": "SIR rewards engine API", "version": _version(), "description": _INFO},
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "tags": [{"name": t} for t in dict.fromkeys(_TAGS.values()) if t in used_tags],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": _security_schemes(),
            "headers": _headers(),
        },
    }


# -- operation notes: the engine's decisions where the contract is silent ----------------------------

NOTES: dict[str, str] = {}  # filled below the examples; keyed by operationId

# -- examples (contract sections 7 and 9), keyed by (METHOD, OpenAPI path) ----------------------------

_SUBMIT_EXAMPLE = {
    "idempotencyKey": "purchase_98765",
    "actionType": "PURCHASE",
    "amount": 49.99,
    "currency": "USD",
    "campaignId": None,
    "stakeholders": [
        {
            "stakeholderTypeCode": "CUSTOMER",
            "partnerUserId": "user_42",
            "userEmail": "jane@example.com",
            "userFirstName": "Jane",
            "userLastName": "Doe",
        },
        {"stakeholderTypeCode": "ORGANIZATION", "organizationSlug": "american-red-cross"},
    ],
    "autoCreateUsers": True,
    "occurredAt": "2026-11-20T10:00:00Z",
    "metadata": {"orderId": "98765"},
}
_SUBMIT_ANSWER = {
    "actionId": "65f1a2b3c4d5e6f708192a3b",
    "idempotencyKey": "purchase_98765",
    "status": "COMPLETED",
    "tokensDistributed": 49.99,
    "transactionIds": ["65f1a2b3c4d5e6f708192a3c", "65f1a2b3c4d5e6f708192a3d"],
    "campaignId": None,
    "poolId": "65f1a2b3c4d5e6f708192a01",
    "distributions": [
        {
            "stakeholderTypeCode": "CUSTOMER",
            "partnerUserId": "user_42",
            "tokens": 24.995,
            "transactionId": "65f1a2b3c4d5e6f708192a3c",
            "vestsAt": None,
            "expiresAt": "2027-11-20T10:00:01Z",
        },
        {
            "stakeholderTypeCode": "ORGANIZATION",
            "organizationSlug": "american-red-cross",
            "tokens": 24.995,
            "transactionId": "65f1a2b3c4d5e6f708192a3d",
            "vestsAt": None,
            "expiresAt": "2027-11-20T10:00:01Z",
        },
    ],
}
EXAMPLES: dict[tuple[str, str], dict[Any, Any]] = {
    ("POST", "/v1/partner/actions/submit"): {
        "request": _SUBMIT_EXAMPLE,
        200: _SUBMIT_ANSWER,
        "IDEMPOTENT": {
            "error": {
                "name": "ConflictError",
                "code": "IDEMPOTENT",
                "message": "This idempotency key was already used with this body; "
                "nothing was applied again",
                "details": {"original": _SUBMIT_ANSWER},
            }
        },
    },
    ("POST", "/v1/partner/actions/{actionId}/reverse"): {
        "request": {"idempotencyKey": "refund_98765", "reason": "order refunded", "amount": 20.00},
        200: {
            "reversalId": "65f1a2b3c4d5e6f708192b10",
            "actionId": "65f1a2b3c4d5e6f708192a3b",
            "status": "PARTIALLY_REVERSED",
            "tokensReversed": 20,
            "transactionIds": ["65f1a2b3c4d5e6f708192b11", "65f1a2b3c4d5e6f708192b12"],
            "distributions": [
                {
                    "transactionId": "65f1a2b3c4d5e6f708192a3c",
                    "stakeholderTypeCode": "CUSTOMER",
                    "partnerUserId": "user_42",
                    "tokensReversed": 10,
                },
                {
                    "transactionId": "65f1a2b3c4d5e6f708192a3d",
                    "stakeholderTypeCode": "ORGANIZATION",
                    "organizationSlug": "american-red-cross",
                    "tokensReversed": 10,
                },
            ],
            "reason": "order refunded",
        },
    },
    ("POST", "/v1/partner/webhooks"): {
        "request": {
            "url": "https://partner.example.com/sir/webhooks",
            "description": "Production listener",
            "eventTypes": ["action.completed", "action.reversed", "token_pool.low_balance"],
            "receiveAllEvents": False,
            "headers": {"X-Partner-Env": "production"},
        },
    },
    ("GET", "/v1/partner/users/{externalId}/balance"): {
        200: {
            "externalUserId": "user_42",
            "available": 120.5,
            "locked": 24.995,
            "total": 145.495,
            "lifetimeEarned": 170.495,
            "lifetimeRedeemed": 25,
            "lifetimeExpired": 0,
            "lifetimeReversed": 0,
            "nextVesting": {"amount": 24.995, "at": "2026-12-20T10:00:00Z"},
            "expiringSoon": [{"amount": 10, "expiresAt": "2026-12-01T00:00:00Z"}],
        },
    },
}


EXAMPLES.update(  # widget and donations (contract 8)
    {
        ("POST", "/v1/partner/donations/create-link"): {
            "request": {
                "nonprofitSlug": "american-red-cross",
                "amount": 2500,
                "currency": "USD",
                "frequency": "once",
                "provider": "every.org",
                "donorEmail": "jane@example.com",
                "firstName": "Jane",
                "lastName": "Doe",
                "partnerUserId": "user_42",
            },
            201: {
                "donationLink": "https://www.every.org/530196605#/donate?amount=25.00"
                "&frequency=ONCE&first_name=Jane&last_name=Doe&email=jane%40example.com"
                "&partner_donation_id=65f1a2b3c4d5e6f708192a3b",
                "partnerDonationId": "65f1a2b3c4d5e6f708192a3b",
            },
        },
        ("GET", "/v1/partner/donations/status/{donationId}"): {
            200: {
                "partnerDonationId": "65f1a2b3c4d5e6f708192a3b",
                "status": "COMPLETED",
                "amount": 2500,
                "currency": "USD",
                "frequency": "once",
                "provider": "every.org",
                "nonprofitSlug": "american-red-cross",
                "tipAmount": 0,
                "createdAt": "2026-12-03T10:00:00Z",
                "completedAt": "2026-12-03T10:02:11Z",
                "actionId": "65f1a2b3c4d5e6f708192a40",
                "donorTokens": 12.5,
                "rewardError": None,
            },
        },
    }
)

NOTES.update(
    {
        # actions
        "actions_submit": """\
Distribution is synchronous: `200 COMPLETED` with everything applied, or an error with nothing
applied. Checks run in this order: validation (422), idempotency, registered types, users and
organizations (422), campaign and budget (402/422), pool (402).

- `amount` > 0, < 10^15, at most 12 decimals; `currency` optional, 3 capital letters;
  `campaignId` 24 hex; 1-100 stakeholders; `metadata` at most 50 keys; `occurredAt` needs an offset.
- **Idempotency**: keys 1-255 characters, unique per partner and environment, kept at least 30
  days; only a COMPLETED action uses its key. The same key with the same body (compared after
  parsing, defaults applied: `autoCreateUsers` omitted equals `true`) answers `409 IDEMPOTENT`
  with the original answer in `error.details.original`; a different body is
  `422 IDEMPOTENCY_KEY_REUSED`.
- A named `campaignId` that does not exist, belongs to another partner or environment, or does
  not apply is `422 CAMPAIGN_NOT_APPLICABLE`. An INACTIVE organization is refused like an
  unknown one (`422 UNKNOWN_ORGANIZATION`).
- `distributions` lists only stakeholders that received tokens; `vestsAt`/`expiresAt` are null
  when the pool has no such restriction. An action whose distribution rounds to 0 tokens is
  COMPLETED with `tokensDistributed: 0` and no transactions.
- The default rule (no campaign) shares T equally by largest remainder, ties in request order:
  amount 1.000001 among three gives 0.333334 / 0.333334 / 0.333333 (the contract's worked
  example contradicts its own steps; the engine follows the steps).
- Concurrent submissions of one partner and environment are committed together (group
  commit); each keeps its own result.""",
        "actions_reverse": """\
Idempotency works like submit's. Without `amount`, everything not yet reversed is reversed.
With `amount` (the action's currency units) `tokensReversed = floor6(tokensDistributed x
amount / action.amount)`, shared in proportion to what each stakeholder still holds of the
action (largest remainder), so nobody gives back more than received; the reversal that
brings the reversed amount to the action's amount takes exactly what remains. Nothing left:
`409 ALREADY_REVERSED`; more than remains: `422 REVERSAL_EXCEEDS_ACTION`
(`details.remainingAmount`). `reason` is optional (at most 500 characters).""",
        "actions_list_actions": "Newest first; filters `actionType`, `status`, `from`, `to`.",
        "batches_submit_batch": """\
`{"actions": [...]}` with 1 to 1,000 submit bodies (body up to 8 MiB). Each item is validated as
`POST /actions/submit` would; invalid items (and a later repeat of an idempotency key within the
batch) are rejected up front under `rejected` by index, the others are stored and distributed by
workers through the same code. A NUL character rejects only the item that holds it. Poll
`GET /actions/batches/{batchId}`; an item that fails in processing emits `action.failed`.""",
        # users
        "users_upsert_user": """\
Upsert by `externalUserId` (1-255 characters, no control characters; "/" allowed, send it as
%2F in paths): 201 created, 200 otherwise (even when nothing changed). Only the fields sent
change; null or "" clears email and names. Metadata (Stripe-style): at most 50 keys, keys 1-40
characters, string values at most 500 characters (numbers refused); updates merge, a key set
to null or "" is removed, `metadata: null` clears all.""",
        "users_update_user": "Only the fields sent change; same rules as the upsert.",
        "users_list_users": "`email` matches case-insensitively.",
        "users_get_balance": """\
Read in one consistent snapshot. `available` may be negative (a debt left by a reversal, repaid
first by later credits). `lifetimeRedeemed` is redemptions minus refunds. `nextVesting` sums the
open locked lots with the earliest vesting date; `expiringSoon` lists open lots expiring within
30 days grouped by `expiresAt`, at most 100 groups.""",
        "users_list_transactions": """\
Every posting on the user's two wallets (AVAILABLE and LOCKED), signed from the wallet's side,
with a `wallet` field; a vesting shows as two lines.""",
        # campaigns
        "campaigns_create_campaign": """\
Any status may be given (default DRAFT). `splits` is required and adds up to exactly 100;
`multiplier` at most 6 decimals (refused, not rounded); `daysOfWeek` null means every day, []
is refused; null `startsAt`/`endsAt` is open-ended; null budgets mean no limit; `poolId` must be
of the same partner and environment and not CLOSED. All problems are reported at once, keyed by
wire paths (`splits`, `schedule.timezone`, `budget.totalTokens`).""",
        "campaigns_patch_campaign": """\
Only the fields sent change, inside `schedule` and `budget` too; the whole campaign is then
validated again. `spentTokens` cannot be sent. Transitions: DRAFT -> ACTIVE|ENDED, ACTIVE ->
PAUSED|ENDED, PAUSED -> ACTIVE|ENDED, ENDED final; anything else is
`422 INVALID_STATUS_TRANSITION` (`details`: from, to, allowed). The same status again changes
nothing and emits no event.""",
        "campaigns_simulate": """\
What an action would get under this campaign, nothing applied. Applicability is checked at the
server's current time and reported, not refused: `applies`, `notApplicableReasons`, and `budget`
{covered, exceededScope, remainingTokens, usersOverLimit}. Users and organizations are not
checked to exist.""",
        # pools
        "pools_request_topup": "A request an operator approves or rejects. A CLOSED pool is "
        "`422 VALIDATION_FAILED` (`poolId`); another partner's or environment's pool is 404.",
        # transactions
        "transactions_list_transactions": """\
Ledger lines of the partner's pools and wallets (issuance, reserve and sinks are the other
side), `amount` signed from the line's account side; `wallet` is AVAILABLE, LOCKED, or null
for pool lines; optional fields are present with null. An unknown `externalUserId` gives an
empty page.""",
        # webhooks
        "webhooks_create_endpoint": """\
The secret (`whsec_...`) is shown in this answer only. `eventTypes` needs at least one type
unless `receiveAllEvents`. URL at most 2,048 characters; localhost, .local and .internal are
refused (IP literals checked now, host names at every delivery). Custom headers: at most 20,
names HTTP tokens of at most 256 characters, values printable ASCII of at most 4,096; `Host`,
`Content-*`, `User-Agent`, `X-SIR-*`, hop-by-hop and `Proxy-*` refused, duplicates
(case-insensitive) refused; stored encrypted and shown masked (`****` + last 4 if 16 characters
or more).

Delivery: every attempt is signed afresh (`X-SIR-Timestamp`, `X-SIR-Signature:
sha256=<hex>` of `timestamp + "." + rawBody`) and carries `X-SIR-Event-Id` and
`X-SIR-Delivery-Id`. 10 attempts in all (about 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 3 h, 6 h,
12 h, +-20% jitter), then FAILED. A 3xx, or a 2xx after more than 5 s, is a failure; 410 Gone
disables the endpoint.""",
        "webhooks_patch_endpoint": "Only the fields sent change; `headers` replaces the whole "
        "set (null or {} clears); `description: null` clears it. Re-enabling clears "
        "`disabledReason`.",
        "webhooks_delete_endpoint": "A hard delete, with its deliveries and attempts.",
        "webhooks_rotate_secret": "Answers the endpoint with the new secret (shown once). For "
        "24 hours deliveries carry both signatures; rotating again within 24 h drops the "
        "oldest secret.",
        "webhooks_send_test": "Records a `webhook.test` delivery due now; a worker sends it.",
        "webhooks_retry_delivery": "Replays a delivery from any status: a new run "
        "(`attemptCount` 0), earlier attempts stay listed.",
        # portal
        "portal_login": """\
5 attempts per minute per email and per client IP, successful or not (`429 RATE_LIMITED`;
`Retry-After` may exceed 60 s: sliding window). Unknown email and wrong password both answer
`401 INVALID_CREDENTIALS`. Emails are compared lower-case.""",
        "portal_refresh": "Stateless: a new access and refresh pair.",
        "portal_create_key": """\
A portal user with no partner yet gets a new PENDING_APPROVAL partner, linked by this first key
(sandbox only: a production key with no partner is `403 PARTNER_NOT_APPROVED` and creates
nothing). Production keys need an ACTIVE partner; a SUSPENDED or DEACTIVATED partner gets
`403 PARTNER_NOT_ACTIVE`. Only `keyType: "secret"` exists: each issuance is a pair
(publishable + secret + HMAC secret), secrets shown once.""",
        "portal_list_keys": "Never shows secrets. With no partner yet: an empty list.",
        "portal_partner_info": "404 while the user has no partner yet.",
        "portal_patch_key": "`expiresAt: null` clears the expiry; a revoked key cannot be "
        "re-activated (`422 KEY_NOT_USABLE`).",
        "portal_revoke_key": "Revoked at once (every process within 1 s).",
        # operator
        "admin_create_partner": """\
Status lifecycle: PENDING_APPROVAL -> ACTIVE <-> SUSPENDED; DEACTIVATED from any, final. Bare IPs
in allowlists are stored as /32 or /128; type codes are upper-cased, `[A-Z][A-Z0-9_]{0,63}`;
`perMinute` may not exceed `perHour`; `tipConfig.defaultPercent` 0-100 with at most 2 decimals.
A duplicate slug is `409 SLUG_TAKEN`.""",
        "admin_patch_partner": """\
Changes only the fields sent; null clears `rateLimitOverride`, `legalEntity` and `contactEmail`.
A status change the lifecycle does not allow is `422 INVALID_STATUS_TRANSITION` (`details`:
from, to, allowed); the same status again does nothing. A change emits `partner.status_changed`
once in each environment ({id, slug, previousStatus, status, changedAt}). Takes effect for API
keys within 1 s.""",
        "admin_create_keys": "`expiresAt` must be in the future, with an offset. An empty key "
        "allowlist means the partner's applies. Secrets shown once.",
        "admin_rotate_keys": "A new pair (new id) with the same environment, allowlist and "
        "expiry, plus `rotatedFromId`; the old pair works until revoked. A revoked, deactivated "
        "or expired key is `422 KEY_NOT_USABLE`.",
        "admin_revoke_key": "Revoked at once; revoking twice changes nothing. Emits "
        "`api_key.revoked`.",
        "admin_create_pool": "`expirationDays` must exceed `vestingDays` when both are set. "
        "A positive `allocation` is posted from the issuance account.",
        "admin_allocate": "A ledger entry from the issuance account into the pool.",
        "admin_fund_reserve": "Funds the partner's refill reserve (for auto-refill) from the "
        "issuance account.",
        "admin_approve_request": "Optional body; deciding twice is `409 REQUEST_ALREADY_DECIDED`.",
        "admin_reject_request": "Optional body (`reason`, audited); deciding twice is "
        "`409 REQUEST_ALREADY_DECIDED`.",
        "admin_create_portal_user": "Emails are stored lower-case; passwords 10-256 characters; "
        "an unknown `partnerId` is 422.",
        "admin_create_organization": "`slug`: lowercase letters, digits and dashes, at most "
        "128; `ein` like 53-0196605; `logoUrl` https://. A duplicate slug is `409 SLUG_TAKEN`.",
        "admin_list_organizations": "`q` matches name or slug, case-insensitively.",
    }
)


# -- serving ---------------------------------------------------------------------------------------------


def swagger_ui_dir() -> Path | None:
    """The Swagger UI 5 distribution shipped by the `swagger-ui-py` package (module
    `swagger_ui`), found without importing it. None when the package is not installed."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    return static if (static / "swagger-ui-bundle.js").is_file() else None


_UI_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>SIR rewards engine API</title>
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
  <link rel="icon" type="image/png" href="{assets}/favicon-32x32.png" sizes="32x32">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script src="{assets}/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "{document}",
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout"
    }});
  </script>
</body>
</html>
"""


async def _build(app: web.Application) -> None:
    # At startup: the router is complete, and a document that cannot be built fails loudly now.
    app[OPENAPI_TEXT] = json.dumps(build_document(app), separators=(",", ":"))


@documented(
    "The OpenAPI 3.1 document",
    auth="none",
    description="This document, generated from the code at startup.",
)
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(text=request.app[OPENAPI_TEXT], content_type="application/json")


@documented("Swagger UI", auth="none", hidden=True)
async def swagger_ui(request: web.Request) -> web.Response:
    if swagger_ui_dir() is None:
        raise ServiceUnavailable("Swagger UI assets are not installed (package swagger-ui-py)")
    page = _UI_PAGE.format(assets=ASSETS_PATH, document=DOCUMENT_PATH)
    return web.Response(text=page, content_type="text/html")


def add_routes(app: web.Application) -> None:
    app.on_startup.append(_build)
    app.router.add_get(DOCUMENT_PATH, openapi_json)
    app.router.add_get(DOCS_PATH, swagger_ui)
    assets = swagger_ui_dir()
    if assets is not None:
        app.router.add_static(ASSETS_PATH, assets, follow_symlinks=False)
    else:
        log.warning("swagger-ui-py is not installed: %s answers 503", DOCS_PATH)


if __name__ == "__main__":  # python -m http_front.openapi > openapi.json
    import sys

    from engine.settings import Settings
    from http_front.app import create_app

    # The app's modules decorate with `http_front.openapi`, not this `__main__` copy of it.
    from http_front.openapi import build_document as build

    dummy = Settings(
        database_url="postgresql://unused", redis_url="redis://unused", master_key=bytes(32)
    )
    json.dump(build(create_app(dummy)), sys.stdout, indent=2)
    sys.stdout.write("\n")
