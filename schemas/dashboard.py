"""Response models of the partner dashboard (`GET /v1/partner/dashboard/...`).

Documentation of what `engine.dashboard` answers, field for field (see `schemas.responses` for
why these are models and not serializers). Token figures are exact decimals; times are UTC.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import Field

from schemas.base import WireModel


class DashboardPoolOut(WireModel):
    pool_id: str
    name: str
    status: Literal["ACTIVE", "EXHAUSTED", "CLOSED"]
    is_default: bool
    balance: Decimal = Field(description="Tokens in the pool now (live, not part of the period)")
    low_balance_threshold: Decimal


class DashboardSummaryOut(WireModel):
    from_: datetime = Field(alias="from", description="Start of the period (a UTC midnight)")
    to: datetime = Field(description="End of the period, exclusive (a UTC midnight)")
    tokens_distributed: Decimal = Field(
        description="Tokens credited to users' and organizations' wallets by actions"
    )
    tokens_reversed: Decimal = Field(description="Tokens taken back by reversals in the period")
    net_tokens: Decimal = Field(description="tokensDistributed - tokensReversed")
    actions: int = Field(description="Actions recorded in the period")
    active_users: int = Field(
        description="Distinct users credited tokens by at least one action in the period"
    )
    pools: list[DashboardPoolOut]


class TopEarnerOut(WireModel):
    rank: int = Field(description="1 for the user credited the most tokens")
    external_user_id: str
    tokens_earned: Decimal = Field(description="Tokens credited to the user in the period")
    tokens_reversed: Decimal = Field(description="Tokens reversed from the user in the period")
    actions: int = Field(description="Actions that credited the user in the period")


class TopEarnersOut(WireModel):
    from_: datetime = Field(alias="from")
    to: datetime
    limit: int
    data: list[TopEarnerOut]


class TrendPointOut(WireModel):
    period_start: datetime = Field(description="The UTC midnight the day or week (Monday) starts")
    value: Decimal = Field(
        description="Tokens (decimal), actions or distinct active users in that day or week"
    )


class TrendsOut(WireModel):
    from_: datetime = Field(alias="from")
    to: datetime
    metric: Literal["tokens", "actions", "users"]
    interval: Literal["day", "week"]
    data: list[TrendPointOut]


class LatencyOut(WireModel):
    p50: int | None = Field(description="Milliseconds; null when no attempt was made")
    p95: int | None
    p99: int | None


class FailingEndpointOut(WireModel):
    endpoint_id: str
    url: str
    is_active: bool
    disabled_reason: str | None
    attempts: int = Field(description="Attempts to this endpoint in the window")
    failures: int = Field(description="Attempts not answered 2xx within 5 s")
    last_status_code: int | None = Field(
        description="Status of its latest attempt in the window (null: no answer)"
    )
    last_failure_at: datetime | None


class WebhookHealthOut(WireModel):
    from_: datetime = Field(alias="from")
    to: datetime
    attempts: int = Field(description="Delivery attempts made in the window")
    succeeded: int
    failed: int
    success_rate: Decimal | None = Field(
        description="succeeded / attempts, 4 decimals; null when no attempt was made"
    )
    latency_ms: LatencyOut
    pending_deliveries: int = Field(description="Deliveries waiting for an attempt or a retry now")
    failing_endpoints: list[FailingEndpointOut]


class ApiUsageRowOut(WireModel):
    route_class: str = Field(description="`partner:<resource>`, e.g. partner:actions")
    status: int = Field(description="HTTP status answered")
    requests: int


class ApiUsageOut(WireModel):
    from_: datetime = Field(alias="from")
    to: datetime
    total_requests: int
    data: list[ApiUsageRowOut]


__all__ = [
    "ApiUsageOut",
    "DashboardSummaryOut",
    "TopEarnersOut",
    "TrendsOut",
    "WebhookHealthOut",
]
