"""Rate limits: budgets held in Redis, shared by every front process, checked by one Lua script.

The algorithm is the sliding-window counter: each limit of N requests per T seconds keeps one
counter per fixed slot of T seconds, and the requests "in the last T seconds" are estimated as
`previous slot * (part of it still inside the window) + current slot`. It needs two small keys
per limit (not one entry per request, as an exact log would: 20,000 per hour for an ENTERPRISE
partner), never lets more than N through within one slot, and smooths the boundary where a fixed
window would let 2N through in a moment. A token bucket (GCRA) was the alternative; it admits a
full burst *plus* the refill, close to 2N in the first hour, which is not what "1,000 per hour"
reads as to a partner.

Check and consume happen in one script, so concurrent processes can never both spend the last
request, and the clock is Redis's (`TIME`), so front hosts with drifting clocks share one
window. A refused call consumes nothing.

The script body is also a small Lua library (`LUA_LIBRARY`): the partner authentication adds its
replay and epoch checks to the same script, so the hot path costs one round trip to Redis.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from engine.partners import TIERS

HOUR = 3600
MINUTE = 60
WIDGET_PER_MINUTE = 60  # contract 3.2: publishable keys, per key and client IP


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int  # the first (hourly) limit, for X-RateLimit-Limit
    remaining: int  # the lowest remaining across windows
    reset_at: int  # unix time the binding window resets
    retry_after: int  # seconds, 0 when allowed

    def headers(self) -> dict[str, str]:
        """The X-RateLimit-* headers every authenticated response carries (+ retry on a 429)."""
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }
        if not self.allowed and self.retry_after:
            out["Retry-After"] = str(self.retry_after)
            out["X-RateLimit-RetryAfter"] = str(self.retry_after)
        return out


# rl_check(bases, limits, now, cost) -> allowed, remaining, reset_at, retry_after, pending
#   bases: one key prefix per limit; limits: {{max, window}, ...}; nothing is written.
# rl_commit(pending, cost): spend `cost` in every window rl_check looked at.
#
# "reset": when allowed, the end of the current slot of the binding window (the one with the
# least left); when refused, the moment the call would be allowed (now + retry_after).
LUA_LIBRARY = """
local function rl_check(bases, limits, now, cost)
  local allowed = 1
  local remaining, reset_at, retry, unpaid_min = nil, 0, 0, nil
  local pending = {}
  for i, base in ipairs(bases) do
    local max, window = limits[i][1], limits[i][2]
    local slot = math.floor(now / window)
    local cur_key = base .. ':' .. window .. ':' .. slot
    local cur = tonumber(redis.call('GET', cur_key) or '0')
    local prev = tonumber(redis.call('GET', base .. ':' .. window .. ':' .. (slot - 1)) or '0')
    local slot_end = (slot + 1) * window
    local used = prev * (slot_end - now) / window + cur
    pending[i] = {cur_key, window}
    local ok = used + cost <= max + 1e-9
    -- what is left once this call is paid for (reported if it is allowed), and without it
    local left = math.max(0, math.floor(max - used - cost + 1e-9))
    if remaining == nil or left < remaining or (left == remaining and slot_end > reset_at) then
      remaining, reset_at = left, slot_end
    end
    local unpaid = math.max(0, math.floor(max - used + 1e-9))
    if unpaid_min == nil or unpaid < unpaid_min then unpaid_min = unpaid end
    if not ok then
      allowed = 0
      local wait
      if cost > max then
        wait = window
      elseif cur + cost <= max then
        -- the previous slot's share decays enough before this slot ends
        wait = window * (used + cost - max) / prev
      else
        -- only once this slot has become the previous one and decayed enough
        wait = (slot_end - now) + window * math.max(0, 1 - (max - cost) / cur)
      end
      if wait > retry then retry = wait end
    end
  end
  if allowed == 0 then
    remaining = unpaid_min
    retry = math.max(1, math.ceil(retry))
    reset_at = math.ceil(now) + retry
  end
  return allowed, remaining or 0, math.ceil(reset_at), retry, pending
end

local function rl_commit(pending, cost)
  for _, p in ipairs(pending) do
    redis.call('INCRBY', p[1], cost)
    -- a slot is read as "previous" until the end of the next one
    redis.call('EXPIRE', p[1], 2 * p[2] + 1)
  end
end

local function rl_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- ARGV from `first`: n, then max_1, window_1, ..., max_n, window_n. KEYS from `first_key`.
local function rl_args(first_key, first)
  local n = tonumber(ARGV[first])
  local bases, limits = {}, {}
  for i = 1, n do
    bases[i] = KEYS[first_key + i - 1]
    limits[i] = {tonumber(ARGV[first + 2 * i - 1]), tonumber(ARGV[first + 2 * i])}
  end
  return bases, limits, first + 2 * n + 1
end
"""

_CONSUME = (
    LUA_LIBRARY
    + """
-- KEYS: one base per limit. ARGV: cost, n, limits...
local cost = tonumber(ARGV[1])
local bases, limits = rl_args(1, 2)
local allowed, remaining, reset_at, retry, pending = rl_check(bases, limits, rl_now(), cost)
if allowed == 1 then rl_commit(pending, cost) end
return {allowed, remaining, reset_at, retry}
"""
)


class LuaScript:
    """A script run by EVALSHA, loaded again after a Redis restart flushed the script cache."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(
        self, redis: aioredis.Redis, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await redis.eval(self.source, len(keys), *keys, *args)


_consume = LuaScript(_CONSUME)


def limit_args(limits: Sequence[tuple[int, int]]) -> list[int]:
    """`n, max_1, window_1, ...` as the Lua library's `rl_args` reads them."""
    if not limits:
        raise ValueError("at least one limit is needed")
    out = [len(limits)]
    for max_requests, window in limits:
        if max_requests < 0 or window <= 0:
            raise ValueError(f"bad limit {(max_requests, window)}")
        out += [int(max_requests), int(window)]
    return out


def verdict_of(reply: Sequence[Any], limits: Sequence[tuple[int, int]]) -> Verdict:
    allowed, remaining, reset_at, retry = (int(x) for x in reply[:4])
    return Verdict(
        allowed=allowed == 1,
        limit=limits[0][0],
        remaining=remaining,
        reset_at=reset_at,
        retry_after=0 if allowed == 1 else retry,
    )


async def consume(
    redis: aioredis.Redis, key: str, limits: Sequence[tuple[int, int]], cost: int = 1
) -> Verdict:
    """Spend `cost` from the budget `key` if every window of `limits` allows it.

    `limits` is `[(max_requests, window_seconds), ...]`; the first one is reported as the limit.
    A refused call consumes nothing. Raises redis errors as they come (the caller fails closed).
    """
    reply = await _consume(redis, [key] * len(limits), [cost, *limit_args(limits)])
    return verdict_of(reply, limits)


def partner_limits(tier: str, override: Mapping[str, Any] | None) -> list[tuple[int, int]]:
    """The partner's budget: its tier's (per hour, per minute), each replaced by the override's
    `perHour` / `perMinute` when that is a positive integer."""
    per_hour, per_minute = TIERS.get(tier, TIERS["STANDARD"])
    if override:
        per_hour = _positive(override.get("perHour"), per_hour)
        per_minute = _positive(override.get("perMinute"), per_minute)
    return [(per_hour, HOUR), (per_minute, MINUTE)]


def _positive(value: Any, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return default


def partner_bucket(partner_id: str, environment: str) -> str:
    """Every key of a partner in one environment shares this budget (contract section 5)."""
    return f"sir:rl:partner:{partner_id}:{environment}"


def widget_bucket(key_id: str, client_ip: str) -> str:
    return f"sir:rl:widget:{key_id}:{client_ip}"
