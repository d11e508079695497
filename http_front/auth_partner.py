"""Partner authentication of the front: secret key + HMAC, publishable keys, replays, budgets.

Handlers opt in with a decorator:

    @secret_key_required                  # server-to-server: sk_ key, X-Timestamp, X-Signature
    @requires_feature("DONATIONS")        # optional; checked at its place in the refusal order
    async def handler(request): ...

    @widget_key                           # section 8: a pk_ key alone, or a full signed sk_ call

The checks follow contract 3.5 in its order; the first refusal answers. Refusals are engine
errors (the error middleware renders the envelope) counted in `AUTH_FAILURES` by code.

Redis, one round trip. Once the key, signature, partner, IP and features are good, one Lua
script (the rate-limit library of `http_front.ratelimit` plus the replay rules) checks the
replay epoch, the budget and the replay record, and only if everything passes spends the budget
and records the signature. So a signature counts as accepted only when every check has passed,
and a refused request (429, or a replay) spends nothing: captured requests replayed by someone
else cannot drain a partner's budget. Redis unreachable answers 503 SERVICE_UNAVAILABLE with
Retry-After: replay and rate-limit protection depend on it, so we fail closed.

The replay epoch: `EPOCH_KEY` holds the Redis time at which the current replay state began. The
script sets it whenever it is missing, which is the first request after Redis started with no
state (a restart without persistence, a flush). A write whose X-Timestamp is older than the epoch
may have been accepted before the state was lost, so it is refused as a replay; a partner's client
signs every attempt afresh, so its next attempt passes.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from engine.credentials import environment_of
from engine.crypto import mask
from engine.errors import (
    ApiKeyExpired,
    AuthenticationFailed,
    FeatureNotEnabled,
    InvalidApiKey,
    InvalidSignature,
    IpNotAllowed,
    PartnerNotActive,
    PartnerSuspended,
    RateLimited,
    ReplayedRequest,
    SecretKeyRequired,
    ServiceUnavailable,
    SirError,
    TimestampOutOfRange,
)
from engine.keyring import KeyRecord, Keyring, Network, parse_ip
from engine.scope import Environment, Scope
from engine.signing import sign_request, signatures_match
from http_front.keys import DB, REDIS, SECRET_BOX, SETTINGS
from http_front.metrics import AUTH_FAILURES
from http_front.principal import PRINCIPAL, Principal
from http_front.ratelimit import (
    LUA_LIBRARY,
    WIDGET_PER_MINUTE,
    LuaScript,
    Verdict,
    limit_args,
    partner_bucket,
    partner_limits,
    verdict_of,
    widget_bucket,
)
from http_front.usage import USAGE_SCOPE

log = logging.getLogger("sir.auth")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

TIMESTAMP_TOLERANCE = 300  # seconds either side of server time (contract 3.1)
# A signature must stay recorded while its timestamp can still pass the window check: up to
# 2 x 300 s after it was first seen (signed 300 s ahead, replayed until 300 s behind), plus slack.
REPLAY_TTL = 2 * TIMESTAMP_TOLERANCE + 60
EPOCH_KEY = "sir:replay:epoch"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# request[CLIENT_IP]: the client address the checks used (None for a unix socket peer)
CLIENT_IP = web.RequestKey("sir.client_ip", object)

_TIMESTAMP = re.compile(r"^[0-9]{1,15}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_FEATURES_ATTR = "__sir_features__"
_AUTH_ATTR = "__sir_auth__"
_CHECKED_FEATURES = web.RequestKey("sir.checked_features", tuple)

# Outcomes of the guard script.
_ALLOWED, _RATE_LIMITED, _BEFORE_EPOCH, _REPLAYED = 1, 0, 2, 3

_GUARD = LuaScript(
    LUA_LIBRARY
    + """
-- KEYS: epoch, replay record (a placeholder on reads), one budget base per limit.
-- ARGV: cost, n, max_1, window_1, ..., is_write, X-Timestamp, replay ttl.
local cost = tonumber(ARGV[1])
local bases, limits, nxt = rl_args(3, 2)
local is_write = ARGV[nxt] == '1'
local ts = tonumber(ARGV[nxt + 1])
local now = rl_now()
local epoch = tonumber(redis.call('GET', KEYS[1]) or '')
if epoch == nil then
  -- Redis has no replay state (fresh start or lost): everything older may have been seen.
  epoch = math.floor(now)
  redis.call('SET', KEYS[1], epoch)
end
local allowed, remaining, reset_at, retry, pending = rl_check(bases, limits, now, cost)
if allowed == 0 then return {0, remaining, reset_at, retry} end
if is_write then
  -- refused writes spend nothing, so report what is left without this call
  if ts < epoch then return {2, remaining + cost, reset_at, 0} end
  if redis.call('EXISTS', KEYS[2]) == 1 then return {3, remaining + cost, reset_at, 0} end
  redis.call('SET', KEYS[2], '1', 'EX', tonumber(ARGV[nxt + 2]))
end
rl_commit(pending, cost)
return {1, remaining, reset_at, 0}
"""
)


# -- the decorators ---------------------------------------------------------------------------


@dataclass
class _AuthSpec:
    allow_publishable: bool
    features: list[str] = field(default_factory=list)


def secret_key_required(handler: Handler) -> Handler:
    """Server-to-server endpoints: a secret key with a valid HMAC signature (contract 3.1, 3.5)."""
    return _authenticated(handler, allow_publishable=False)


def widget_key(handler: Handler) -> Handler:
    """Widget endpoints (contract 3.2, 8): a publishable key alone (no signature, no IP
    allowlist, its own budget per key and client IP), or a full secret-key + HMAC call."""
    return _authenticated(handler, allow_publishable=True)


def requires_feature(*features: str) -> Callable[[Handler], Handler]:
    """403 FEATURE_NOT_ENABLED unless the partner has every one of `features`.

    Put it under the authentication decorator; the check then runs at its place in the refusal
    order (after the IP allowlist, before the rate limit). Put above, it joins the same check.
    """

    def decorate(handler: Handler) -> Handler:
        spec: _AuthSpec | None = getattr(handler, _AUTH_ATTR, None)
        if spec is not None:
            spec.features.extend(f for f in features if f not in spec.features)
            return handler

        @functools.wraps(handler)
        async def wrapper(request: web.Request) -> web.StreamResponse:
            # Normally the authentication decorator has checked these already; if something
            # wrapped the handler without copying our marker, check here rather than not at all.
            checked = request.get(_CHECKED_FEATURES, ())
            missing = [f for f in features if f not in checked]
            if missing:
                found = request.get(PRINCIPAL)
                if not isinstance(found, Principal):
                    raise RuntimeError("requires_feature needs secret_key_required or widget_key")
                _check_features(found.enabled_features, missing)
            return await handler(request)

        setattr(wrapper, _FEATURES_ATTR, (*getattr(handler, _FEATURES_ATTR, ()), *features))
        return wrapper

    return decorate


def _authenticated(handler: Handler, *, allow_publishable: bool) -> Handler:
    spec = _AuthSpec(allow_publishable, list(getattr(handler, _FEATURES_ATTR, ())))

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            found, verdict = await _authenticate(request, spec)
        except SirError as exc:
            AUTH_FAILURES.labels(exc.code).inc()
            log.info(
                "refused %s %s: %s (key %s, ip %s)",
                request.method,
                request.path,
                exc.code,
                _masked(request.headers.get("X-Partner-Key")),
                request.get(CLIENT_IP),
            )
            raise
        request[PRINCIPAL] = found
        request[_CHECKED_FEATURES] = tuple(spec.features)
        budget = verdict.headers()
        try:
            response = await handler(request)
        except SirError as exc:
            # An authenticated error response carries the budget headers too.
            exc.headers = {**budget, **getattr(exc, "headers", {})}  # type: ignore[attr-defined]
            raise
        except web.HTTPException as exc:
            exc.headers.update(budget)
            raise
        if not response.prepared:
            response.headers.update(budget)
        return response

    setattr(wrapper, _AUTH_ATTR, spec)
    return wrapper


# -- the checks, in the order of contract 3.5 -----------------------------------------------------


async def _authenticate(request: web.Request, spec: _AuthSpec) -> tuple[Principal, Verdict]:
    key = request.headers.get("X-Partner-Key", "").strip()
    if not key:  # 1
        raise AuthenticationFailed("Send your API key in the X-Partner-Key header")
    if key.startswith("pk_"):
        if not spec.allow_publishable:  # 2
            raise SecretKeyRequired("This endpoint needs your secret key and a signed request")
        return await _publishable(request, key, spec)
    if key.startswith("sk_"):
        return await _secret(request, key, spec)
    raise InvalidApiKey("The API key is not valid")  # 4: neither kind of key


async def _secret(request: web.Request, key: str, spec: _AuthSpec) -> tuple[Principal, Verdict]:
    timestamp = request.headers.get("X-Timestamp", "").strip()
    signature, signed_t = _parse_signature(request.headers.get("X-Signature", ""))
    if not _TIMESTAMP.match(timestamp) or signature is None:  # 3
        raise AuthenticationFailed(
            "Signed requests need X-Timestamp (unix seconds) and X-Signature (hex HMAC-SHA256)"
        )
    prefix_env = environment_of(key)
    found = await keyring(request.app).by_secret_key(key) if prefix_env else None
    record, environment = _usable(found, prefix_env)  # 4
    now = time.time()
    _not_expired(record, now)  # 5
    if abs(now - int(timestamp)) > TIMESTAMP_TOLERANCE:  # 6
        raise TimestampOutOfRange(
            "X-Timestamp is more than 300 seconds away from server time",
            details={"serverTime": int(now)},
        )
    body = await request.read()
    expected = sign_request(record.hmac_secret, timestamp, request.method, request.raw_path, body)
    if (signed_t is not None and signed_t != timestamp) or not signatures_match(
        expected, signature
    ):  # 7
        raise InvalidSignature("The signature does not match the request")
    _partner_may_call(record, environment)  # 8, 9
    request[USAGE_SCOPE] = Scope(record.partner_id, environment)  # counted in API usage from here
    ip = client_ip(request)
    request[CLIENT_IP] = ip
    if not record.ip_allowed(ip):  # 10
        raise IpNotAllowed("This API key may not be used from this IP address")
    _check_features(record.enabled_features, spec.features)  # 11
    is_write = request.method in WRITE_METHODS
    verdict = await _guard(  # 12, 13
        request.app[REDIS],
        bucket=partner_bucket(record.partner_id, environment),
        limits=partner_limits(record.tier, record.rate_limit_override),
        replay_key=f"sir:replay:{record.key_id}:{expected}" if is_write else None,
        timestamp=int(timestamp),
    )
    return _principal(record, environment, "secret"), verdict


async def _publishable(
    request: web.Request, key: str, spec: _AuthSpec
) -> tuple[Principal, Verdict]:
    prefix_env = environment_of(key)
    found = await keyring(request.app).by_publishable_key(key) if prefix_env else None
    record, environment = _usable(found, prefix_env)  # 4
    _not_expired(record, time.time())  # 5
    _partner_may_call(record, environment)  # 8, 9 (no signature, no IP allowlist: 3.2)
    request[USAGE_SCOPE] = Scope(record.partner_id, environment)
    _check_features(record.enabled_features, spec.features)  # 11
    ip = client_ip(request)
    request[CLIENT_IP] = ip
    verdict = await _guard(  # 12; publishable calls are unsigned, so no replay record
        request.app[REDIS],
        bucket=widget_bucket(record.key_id, ip or "unknown"),
        limits=[(WIDGET_PER_MINUTE, 60)],
        replay_key=None,
        timestamp=0,
    )
    return _principal(record, environment, "publishable"), verdict


def _parse_signature(header: str) -> tuple[str | None, str | None]:
    """(hex, t) from `<hex>` or `t=<ts>,v1=<hex>`; (None, None) when malformed."""
    header = header.strip()
    if _HEX64.match(header):
        return header, None
    parts: dict[str, str] = {}
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or name in parts:
            return None, None
        parts[name] = value.strip()
    signature, signed_t = parts.get("v1"), parts.get("t")
    if signature is None or signed_t is None:
        return None, None
    if not _HEX64.match(signature) or not _TIMESTAMP.match(signed_t):
        return None, None
    return signature, signed_t


def _usable(
    record: KeyRecord | None, environment: Environment | None
) -> tuple[KeyRecord, Environment]:
    # The prefix names the environment; a row that disagrees is not this key.
    if record is None or environment is None or record.environment != environment:
        raise InvalidApiKey("The API key is not valid")
    return record, environment


def _not_expired(record: KeyRecord, now: float) -> None:
    if record.expires_at is not None and record.expires_at.timestamp() <= now:
        raise ApiKeyExpired("The API key has expired")


def _partner_may_call(record: KeyRecord, environment: Environment) -> None:
    status = record.partner_status
    if status == "SUSPENDED":
        raise PartnerSuspended("The partner is suspended")
    if status == "ACTIVE" or (status == "PENDING_APPROVAL" and environment == "sandbox"):
        return  # a partner awaiting approval builds and tests with its sandbox keys
    raise PartnerNotActive(
        "Live keys work once the partner is approved"
        if status == "PENDING_APPROVAL"
        else "The partner is not active"
    )


def _check_features(enabled: Iterable[str], required: Iterable[str]) -> None:
    enabled = set(enabled)
    for feature in required:
        if feature not in enabled:
            raise FeatureNotEnabled(
                f"The {feature} feature is not enabled for this partner",
                details={"feature": feature},
            )


def _principal(record: KeyRecord, environment: Environment, kind: str) -> Principal:
    return Principal(
        scope=Scope(record.partner_id, environment),
        key_id=record.key_id,
        key_kind="secret" if kind == "secret" else "publishable",
        partner_id=record.partner_id,
        partner_status=record.partner_status,
        tier=record.tier,
        enabled_features=record.enabled_features,
    )


def _masked(key: str | None) -> str:
    return mask(key) if key and len(key) > 12 else "-"


# -- client IP ------------------------------------------------------------------------------------


def client_ip(request: web.Request) -> str | None:
    """The client address as the partner checks see it (contract 3.5): the socket peer or,
    when the peer is a trusted proxy (SIR_TRUSTED_PROXIES), the client X-Forwarded-For names.

    X-Forwarded-For is read from the right: each trusted proxy appends the address it got the
    request from, so the first untrusted address walking leftwards is the one a trusted proxy
    saw, the left-most address that is not forgeable. Anything further left was written by the
    client itself and could name any address (an allowlisted one, say). When every hop is a
    trusted proxy, the left-most hop is the client.
    """
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    host = peer[0] if isinstance(peer, tuple) and peer else None
    trusted = request.app[SETTINGS].trusted_proxies
    if host is None or not trusted or not _trusted(host, trusted):
        return host
    hops = [
        hop.strip()
        for value in request.headers.getall("X-Forwarded-For", [])
        for hop in value.split(",")
        if hop.strip()
    ]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop
    return hops[0] if hops else host


def _trusted(address: str, networks: Iterable[Network]) -> bool:
    ip = parse_ip(address)
    return ip is not None and any(ip in net for net in networks)


# -- Redis ------------------------------------------------------------------------------------------


async def _guard(
    redis: aioredis.Redis,
    *,
    bucket: str,
    limits: list[tuple[int, int]],
    replay_key: str | None,
    timestamp: int,
) -> Verdict:
    keys = [EPOCH_KEY, replay_key or "sir:replay:-", *([bucket] * len(limits))]
    args = [1, *limit_args(limits), "1" if replay_key else "0", timestamp, REPLAY_TTL]
    try:
        reply = await _GUARD(redis, keys, args)
    except RedisError as exc:
        # Fail closed: without Redis there is no replay or rate-limit protection.
        log.warning("redis unavailable for authentication: %s", type(exc).__name__)
        raise ServiceUnavailable(
            "Authentication is unavailable for a moment; nothing was applied"
        ) from None
    verdict = verdict_of(reply, limits)
    outcome = int(reply[0])
    if outcome == _RATE_LIMITED:
        raise _with_headers(
            RateLimited(
                "Rate limit exceeded; retry after the number of seconds in Retry-After",
                details={"retryAfter": verdict.retry_after},
            ),
            verdict,
        )
    if outcome == _REPLAYED:
        raise _with_headers(
            ReplayedRequest("This signed request was already received; sign every request afresh"),
            verdict,
        )
    if outcome == _BEFORE_EPOCH:
        raise _with_headers(
            ReplayedRequest(
                "This request was signed before the server's replay state was reset; sign it afresh"
            ),
            verdict,
        )
    return verdict


def _with_headers(error: SirError, verdict: Verdict) -> SirError:
    """Refusals after authentication still carry the budget headers (the error middleware
    copies an exception's `headers` onto the response)."""
    error.headers = verdict.headers()  # type: ignore[attr-defined]
    return error


async def ensure_replay_epoch(redis: aioredis.Redis) -> int:
    """Set the replay epoch if Redis has none (e.g. at startup); returns it."""
    now = int((await redis.time())[0])
    await redis.set(EPOCH_KEY, now, nx=True)
    return int(await redis.get(EPOCH_KEY) or now)


# -- the keyring of an application ---------------------------------------------------------------

_KEYRINGS: weakref.WeakKeyDictionary[web.Application, Keyring] = weakref.WeakKeyDictionary()


def keyring(app: web.Application) -> Keyring:
    """The application's keyring; call `.invalidate()` after changing a key in this process.

    One per application (its cache is per process), made on first use because the database
    engine only exists once the application has started."""
    found = _KEYRINGS.get(app)
    if found is None:
        found = _KEYRINGS[app] = Keyring(app[DB], app[SECRET_BOX])
    return found
