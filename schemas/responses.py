"""Response models: what the handlers answer, for the OpenAPI document (`http_front.openapi`).

The handlers build their answers with the engine's `*_json` / view functions (engine rows to
camelCase dicts); these models mirror those dicts field for field so the document shows what is
really on the wire. They are documentation, not serializers: nothing validates a response
through them, so when a `*_json` function changes, change its model here (the OpenAPI test
checks the shapes of a few live answers against them).

Token amounts and other exact decimals are `Decimal`: the OpenAPI generator renders them as JSON
numbers (the exact encoder writes them so, at most 6 decimals for tokens, trailing zeros
dropped). Fields that may be absent (not just null) have a default of None.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field

from engine.tables import POSTING_TYPES
from schemas.admin import Environment, Feature, IntegrationModel, PartnerStatus, Tier
from schemas.base import WireModel

PoolStatus = Literal["ACTIVE", "EXHAUSTED", "CLOSED"]
TopupStatus = Literal["PENDING", "APPROVED", "REJECTED"]
CampaignStatus = Literal["DRAFT", "ACTIVE", "PAUSED", "ENDED"]
ActionStatus = Literal["COMPLETED", "PARTIALLY_REVERSED", "REVERSED"]


# -- errors ---------------------------------------------------------------------------------------


class ErrorBody(WireModel):
    """One error. Clients branch on `code` (stable); `message` is for humans and may change."""

    name: str = Field(description="A readable class: ValidationError, AuthenticationError, ...")
    code: str = Field(description="The stable code, e.g. VALIDATION_FAILED")
    message: str
    details: dict[str, Any] = Field(
        description="Structured context: `fields` for VALIDATION_FAILED "
        '(`{"amount": ["must be greater than 0"]}`), `original` for IDEMPOTENT, ...'
    )


class ErrorEnvelope(WireModel):
    """Every error response body (contract section 4)."""

    error: ErrorBody


# -- operations -----------------------------------------------------------------------------------


class HealthOut(WireModel):
    status: Literal["ok"]


class ReadinessOut(WireModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(
        description='`{"database": "ok", "redis": "unavailable: TimeoutError"}`'
    )


# -- partners, keys (operator and portal) ---------------------------------------------------------


class RateLimitOut(WireModel):
    per_hour: int
    per_minute: int


class TipConfigOut(WireModel):
    enabled: bool
    default_percent: Decimal


class PartnerOut(WireModel):
    id: str
    slug: str
    name: str
    legal_entity: str | None
    contact_email: str | None
    status: PartnerStatus
    tier: Tier
    enabled_features: list[Feature]
    integration_model: IntegrationModel
    ip_allowlist: list[str]
    action_types: list[str]
    stakeholder_types: list[str]
    tip_config: TipConfigOut
    rate_limit_override: RateLimitOut | None = Field(description="null: the tier's limits apply")
    created_at: datetime
    updated_at: datetime


class PartnerList(WireModel):
    data: list[PartnerOut]
    next_cursor: str | None


class PartnerInfoOut(WireModel):
    """The short partner shape of the portal; `rateLimit` is the effective limit."""

    id: str
    name: str
    slug: str
    status: PartnerStatus
    tier: Tier
    enabled_features: list[Feature]
    rate_limit: RateLimitOut


class IssuedKeyOut(WireModel):
    """A new key pair. `secretKey` and `hmacSecret` are shown in this answer only."""

    id: str
    partner_id: str
    name: str
    environment: Environment
    public_key: str = Field(description="pk_test_<64 hex> / pk_live_<64 hex>")
    secret_key: str = Field(description="sk_test_<64 hex> / sk_live_<64 hex>; shown once")
    hmac_secret: str = Field(description="64 lowercase hex characters; shown once")
    expires_at: datetime | None


class RotatedKeyOut(IssuedKeyOut):
    rotated_from_id: str = Field(description="The old pair, which works until revoked")


class KeyOut(WireModel):
    """A key as listed: never the secret key nor the HMAC secret."""

    id: str
    partner_id: str
    name: str
    environment: Environment
    public_key: str
    secret_key_last4: str
    is_active: bool
    ip_allowlist: list[str] | None = Field(description="null or empty: the partner's applies")
    rotated_from_id: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class KeyList(WireModel):
    data: list[KeyOut]
    next_cursor: str | None


# -- portal ---------------------------------------------------------------------------------------


class SessionOut(WireModel):
    access_token: str
    refresh_token: str
    expires_in: int = Field(description="Seconds the access token lives (900)")
    token_type: Literal["Bearer"]
    partner: PartnerInfoOut | None
    publishable_key: str | None = Field(
        description="The newest usable production key if the partner is ACTIVE, else the "
        "newest sandbox key; null without one"
    )


class MeOut(WireModel):
    id: str
    email: str
    partner_id: str | None
    created_at: datetime
    partner: PartnerInfoOut | None


class PortalUserOut(WireModel):
    id: str
    email: str
    partner_id: str | None
    created_at: datetime


class AuditEntryOut(WireModel):
    id: str
    actor: str = Field(description="operator:<6 hex> (a digest of the token) or portal:<userId>")
    action: str
    target_type: str
    target_id: str | None
    before: dict[str, Any] | None = Field(description="Secrets redacted")
    after: dict[str, Any] | None = Field(description="Secrets redacted")
    created_at: datetime


class AuditList(WireModel):
    data: list[AuditEntryOut]
    next_cursor: str | None


class OrganizationOut(WireModel):
    id: str
    slug: str
    name: str
    ein: str | None
    logo_url: str | None
    status: Literal["ACTIVE", "INACTIVE"]
    created_at: datetime
    updated_at: datetime


class OrganizationList(WireModel):
    data: list[OrganizationOut]
    next_cursor: str | None


# -- token pools ----------------------------------------------------------------------------------


class RedemptionOut(WireModel):
    min_balance: Decimal | None
    allowed_categories: list[str] | None


class RestrictionsOut(WireModel):
    vesting_days: int | None
    expiration_days: int | None
    redemption: RedemptionOut


class AutoRefillOut(WireModel):
    enabled: bool
    threshold: Decimal
    amount: Decimal
    max_per_day: int


class PoolOut(WireModel):
    id: str
    environment: Environment
    name: str
    is_default: bool
    status: PoolStatus
    balance: Decimal
    allocated_total: Decimal = Field(description="Allocations and refills into the pool")
    distributed_total: Decimal = Field(description="allocatedTotal - balance")
    low_balance_threshold: Decimal
    restrictions: RestrictionsOut
    auto_refill: AutoRefillOut
    reserve_balance: Decimal = Field(description="The partner's refill reserve in this environment")
    created_at: datetime
    updated_at: datetime


class PoolList(WireModel):
    data: list[PoolOut]
    next_cursor: str | None


class AllocationOut(WireModel):
    entry_id: str
    amount: Decimal
    memo: str | None
    pool: PoolOut


class ReserveOut(WireModel):
    entry_id: str
    partner_id: str
    environment: Environment
    amount: Decimal
    memo: str | None
    reserve_balance: Decimal


class TopupRequestOut(WireModel):
    """A top-up request as its partner sees it (PENDING until an operator decides)."""

    id: str
    environment: Environment
    pool_id: str
    amount: Decimal
    reason: str | None
    status: TopupStatus
    decided_at: datetime | None
    created_at: datetime


class OperatorTopupRequestOut(WireModel):
    id: str
    partner_id: str
    environment: Environment
    pool_id: str
    amount: Decimal
    reason: str | None
    status: TopupStatus
    decided_by: str | None
    decided_at: datetime | None
    created_at: datetime


class OperatorTopupRequestList(WireModel):
    data: list[OperatorTopupRequestOut]
    next_cursor: str | None


# -- actions --------------------------------------------------------------------------------------


class DistributionOut(WireModel):
    """One credited stakeholder: `partnerUserId`, or `organizationSlug` for ORGANIZATION."""

    stakeholder_type_code: str
    partner_user_id: str | None = None
    organization_slug: str | None = None
    tokens: Decimal
    transaction_id: str
    vests_at: datetime | None = Field(description="null: the pool has no vesting")
    expires_at: datetime | None = Field(description="null: the pool has no expiry")


class _ActionAnswer(WireModel):
    action_id: str
    idempotency_key: str
    tokens_distributed: Decimal
    transaction_ids: list[str]
    campaign_id: str | None = Field(description="null: the default rule applied")
    pool_id: str
    distributions: list[DistributionOut] = Field(
        description="Only stakeholders that received tokens (no zero shares), in request order"
    )


class SubmitResult(_ActionAnswer):
    status: Literal["COMPLETED"]


class ActionOut(_ActionAnswer):
    """The submit answer as stored, with the action's current status and its request."""

    status: ActionStatus  # reversals change it
    action_type: str
    amount: Decimal
    currency: str | None
    occurred_at: datetime | None
    metadata: dict[str, Any]
    created_at: datetime


class ActionList(WireModel):
    data: list[ActionOut]
    next_cursor: str | None


class ReversedShareOut(WireModel):
    transaction_id: str
    stakeholder_type_code: str
    partner_user_id: str | None = None
    organization_slug: str | None = None
    tokens_reversed: Decimal


class ReversalResult(WireModel):
    reversal_id: str
    action_id: str
    status: Literal["REVERSED", "PARTIALLY_REVERSED"]
    tokens_reversed: Decimal
    transaction_ids: list[str]
    distributions: list[ReversedShareOut]
    reason: str | None


class BatchRejection(WireModel):
    index: int = Field(description="Position of the item in `actions` (from 0)")
    error: ErrorBody


class BatchAccepted(WireModel):
    batch_id: str
    accepted: int
    rejected: list[BatchRejection] = Field(description="Items refused up front, by index")


class BatchItemResult(WireModel):
    index: int
    idempotency_key: str
    status: Literal["PENDING", "COMPLETED", "FAILED"]
    action_id: str | None = Field(default=None, description="Present once COMPLETED")
    error: ErrorBody | None = Field(default=None, description="Present when FAILED")


class BatchOut(WireModel):
    batch_id: str
    status: Literal["PENDING", "PROCESSING", "COMPLETED"]
    total: int
    succeeded: int
    failed: int
    created_at: datetime
    completed_at: datetime | None
    results: list[BatchItemResult]


# -- campaigns ------------------------------------------------------------------------------------


class TierOut(WireModel):
    min_amount: Decimal
    multiplier: Decimal


class SplitOut(WireModel):
    stakeholder_type_code: str
    percent: Decimal


class ScheduleOut(WireModel):
    starts_at: datetime | None = Field(description="null: open-ended")
    ends_at: datetime | None = Field(description="null: open-ended")
    days_of_week: list[str] | None = Field(description="null: every day")
    timezone: str


class BudgetOut(WireModel):
    total_tokens: Decimal | None = Field(description="null: no limit")
    per_user_tokens: Decimal | None = Field(description="null: no limit")
    spent_tokens: Decimal


class CampaignOut(WireModel):
    id: str
    name: str
    status: CampaignStatus
    priority: int
    action_types: list[str]
    multiplier: Decimal
    base_tokens: Decimal
    tiers: list[TierOut]
    splits: list[SplitOut]
    schedule: ScheduleOut
    budget: BudgetOut
    pool_id: str | None = Field(description="null: the partner's default pool")
    created_at: datetime
    updated_at: datetime


class CampaignList(WireModel):
    data: list[CampaignOut]
    next_cursor: str | None


class SimulatedShareOut(WireModel):
    stakeholder_type_code: str
    partner_user_id: str | None = None
    organization_slug: str | None = None
    tokens: Decimal


class SimulationBudgetOut(WireModel):
    covered: bool
    exceeded_scope: Literal["campaign", "user"] | None
    remaining_tokens: Decimal | None = Field(description="null: no total budget")
    users_over_limit: list[str]


class SimulationOut(WireModel):
    campaign_id: str
    action_type: str
    amount: Decimal
    multiplier: Decimal
    tokens_total: Decimal
    tokens_distributed: Decimal
    tokens_undistributed: Decimal
    distributions: list[SimulatedShareOut]
    applies: bool
    not_applicable_reasons: list[str]
    budget: SimulationBudgetOut
    simulated_at: datetime


# -- transactions ---------------------------------------------------------------------------------


class LedgerLineOut(WireModel):
    """A ledger line as the partner sees it; optional fields are present with null."""

    id: str
    type: str = Field(json_schema_extra={"enum": list(POSTING_TYPES)})
    amount: Decimal = Field(description="Signed from the line's account side")
    pool_id: str | None
    wallet: Literal["AVAILABLE", "LOCKED"] | None = Field(description="null for pool lines")
    external_user_id: str | None
    organization_slug: str | None
    action_id: str | None
    order_id: str | None
    created_at: datetime
    vests_at: datetime | None
    expires_at: datetime | None


class LedgerLineList(WireModel):
    data: list[LedgerLineOut]
    next_cursor: str | None


# -- webhooks -------------------------------------------------------------------------------------


class WebhookEndpointOut(WireModel):
    id: str
    url: str
    description: str | None
    event_types: list[str]
    receive_all_events: bool
    headers: dict[str, str] = Field(description="Custom headers, values masked (****1234)")
    is_active: bool
    disabled_reason: str | None
    environment: Environment
    previous_secret_expires_at: datetime | None = Field(
        description="While set, deliveries are signed with the new and the previous secret"
    )
    created_at: datetime
    updated_at: datetime


class WebhookEndpointWithSecret(WebhookEndpointOut):
    secret: str = Field(description="whsec_<64 hex>; shown in this answer only")


class OperatorWebhookEndpointOut(WebhookEndpointWithSecret):
    partner_id: str


class WebhookEndpointList(WireModel):
    data: list[WebhookEndpointOut]
    next_cursor: str | None


class DeletedOut(WireModel):
    id: str
    deleted: Literal[True]


class DeliveryAttemptOut(WireModel):
    id: str
    attempted_at: datetime
    status_code: int | None
    latency_ms: int | None
    error: str | None
    response_excerpt: str | None
    succeeded: bool


class DeliveryOut(WireModel):
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: Literal["PENDING", "SUCCEEDED", "FAILED"]
    attempt_count: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    created_at: datetime
    updated_at: datetime
    attempts: list[DeliveryAttemptOut] = Field(description="Oldest first")


class DeliveryList(WireModel):
    data: list[DeliveryOut]
    next_cursor: str | None
