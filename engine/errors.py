"""The one error tree. Every error a partner can see has a stable code, defined here once.

`status` is the status the API contract gives the code; the HTTP front copies it onto the wire
but the engine itself never imports HTTP machinery.
"""

from __future__ import annotations

from typing import Any


class SirError(Exception):
    """Base of every error the engine raises on purpose."""

    name = "SirError"
    code = "INTERNAL_ERROR"
    status = 500

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details: dict[str, Any] = details or {}


class ValidationFailed(SirError):
    """Fields are wrong. `details.fields` maps a field path to its problems."""

    name = "ValidationError"
    code = "VALIDATION_FAILED"
    status = 422

    def __init__(self, fields: dict[str, list[str]], message: str = "Validation failed") -> None:
        super().__init__(message, details={"fields": fields})
        self.fields = fields


class NotFound(SirError):
    """Unknown object, or one of another partner or environment (never 403: no leak)."""

    name = "NotFoundError"
    code = "NOT_FOUND"
    status = 404


class Conflict(SirError):
    name = "ConflictError"
    status = 409


class PaymentRequired(SirError):
    """Not enough tokens where they must come from (pool, budget, balance)."""

    name = "InsufficientFundsError"
    status = 402


class Unprocessable(SirError):
    """A well-formed request the rules refuse (unknown type, user, campaign...)."""

    name = "UnprocessableError"
    status = 422


class AuthenticationFailed(SirError):
    name = "AuthenticationError"
    code = "AUTH_REQUIRED"
    status = 401


class Forbidden(SirError):
    name = "AuthorizationError"
    status = 403


class ServiceUnavailable(SirError):
    """A dependency (database, Redis) is unreachable; nothing was applied."""

    name = "ServiceUnavailableError"
    code = "SERVICE_UNAVAILABLE"
    status = 503


class LedgerImbalance(SirError):
    """A journal entry whose postings do not sum to zero. Always a bug, never partner input."""

    name = "LedgerError"
    code = "LEDGER_IMBALANCE"
    status = 500


class ConfigError(Exception):
    """A wrong or missing setting. Its message is one line naming the setting."""


# -- operator API and portal ----------------------------------------------------------------------


class InvalidStatusTransition(Unprocessable):
    """A partner status change the lifecycle does not allow (e.g. DEACTIVATED -> ACTIVE)."""

    code = "INVALID_STATUS_TRANSITION"


class KeyNotUsable(Unprocessable):
    """Rotating or re-activating a key that is revoked or already past its expiry."""

    code = "KEY_NOT_USABLE"


class AlreadyDecided(Conflict):
    """A token pool top-up request that was approved or rejected already."""

    code = "REQUEST_ALREADY_DECIDED"


class EmailTaken(Conflict):
    code = "EMAIL_TAKEN"


class InvalidCredentials(AuthenticationFailed):
    """Portal login with an unknown email or a wrong password (never says which)."""

    code = "INVALID_CREDENTIALS"


class InvalidToken(AuthenticationFailed):
    """A portal JWT that is malformed, forged, of the wrong type, or whose user is gone."""

    code = "INVALID_TOKEN"


class TokenExpired(AuthenticationFailed):
    """A portal JWT past its `exp`: the client should refresh (access) or log in (refresh)."""

    code = "TOKEN_EXPIRED"


class PartnerNotApproved(Forbidden):
    """Production keys need an ACTIVE partner."""

    code = "PARTNER_NOT_APPROVED"


class PartnerInactive(Forbidden):
    """Self-service keys for a SUSPENDED or DEACTIVATED partner."""

    code = "PARTNER_NOT_ACTIVE"


# -- partner API authentication (contract 3.1, 3.2, 3.5) --------------------------------------------
# Raised by the front's key authentication. An instance may carry a `headers` dict (rate-limit
# headers, Retry-After) that the error middleware copies onto the response.


class SecretKeyRequired(Forbidden):
    """A publishable key on an endpoint that needs the secret key and a signature."""

    code = "SECRET_KEY_REQUIRED"


class InvalidApiKey(AuthenticationFailed):
    """Unknown, revoked or deactivated key (never says which)."""

    code = "INVALID_API_KEY"


class ApiKeyExpired(AuthenticationFailed):
    code = "API_KEY_EXPIRED"


class TimestampOutOfRange(AuthenticationFailed):
    """X-Timestamp more than 300 s away from server time."""

    code = "TIMESTAMP_OUT_OF_RANGE"


class InvalidSignature(AuthenticationFailed):
    code = "INVALID_SIGNATURE"


class PartnerSuspended(AuthenticationFailed):
    code = "PARTNER_SUSPENDED"


class PartnerNotActive(AuthenticationFailed):
    """An API-key call for a DEACTIVATED partner, or a PENDING_APPROVAL one with a live key (401).

    Same code as `PartnerInactive`, which is the portal's 403 for key management."""

    code = "PARTNER_NOT_ACTIVE"


class IpNotAllowed(Forbidden):
    code = "IP_NOT_ALLOWED"


class FeatureNotEnabled(Forbidden):
    """An endpoint of a feature (DONATIONS, MARKETPLACE) the partner does not have."""

    code = "FEATURE_NOT_ENABLED"


class RateLimited(SirError):
    """A budget is spent; `headers` carries Retry-After and the X-RateLimit-* headers."""

    name = "RateLimitError"
    code = "RATE_LIMITED"
    status = 429


class ReplayedRequest(AuthenticationFailed):
    """A signed write whose signature was already accepted, or signed before Redis lost state."""

    code = "REPLAYED_REQUEST"


# -- actions (contract section 7) -----------------------------------------------------------------


class Idempotent(Conflict):
    """The same key and body again: nothing is applied twice; the original answer rides along."""

    code = "IDEMPOTENT"

    def __init__(self, original: dict[str, Any]) -> None:
        super().__init__(
            "This idempotency key was already used with this body; nothing was applied again",
            details={"original": original},
        )
        self.headers = {"Idempotent-Replayed": "true"}


class IdempotencyKeyReused(Unprocessable):
    code = "IDEMPOTENCY_KEY_REUSED"


class IdempotencyInProgress(Conflict):
    code = "IDEMPOTENCY_IN_PROGRESS"


class UnknownActionType(Unprocessable):
    code = "UNKNOWN_ACTION_TYPE"


class UnknownStakeholderType(Unprocessable):
    code = "UNKNOWN_STAKEHOLDER_TYPE"


class UnknownUser(Unprocessable):
    code = "UNKNOWN_USER"


class UnknownOrganization(Unprocessable):
    code = "UNKNOWN_ORGANIZATION"


class CampaignNotApplicable(Unprocessable):
    code = "CAMPAIGN_NOT_APPLICABLE"


class CampaignBudgetExhausted(PaymentRequired):
    code = "CAMPAIGN_BUDGET_EXHAUSTED"


class InsufficientPool(PaymentRequired):
    code = "INSUFFICIENT_POOL"


class NoActivePool(PaymentRequired):
    code = "NO_ACTIVE_POOL"


class AlreadyReversed(Conflict):
    code = "ALREADY_REVERSED"


class ReversalExceedsAction(Unprocessable):
    code = "REVERSAL_EXCEEDS_ACTION"


# -- webhooks (contract sections 7 and 9) ---------------------------------------------------------


class WebhookEndpointInactive(Unprocessable):
    """Testing, or replaying a delivery to, an endpoint that is disabled (by the partner, by a
    410 Gone, or after failing every delivery for 5 days): nothing would be sent."""

    code = "WEBHOOK_ENDPOINT_INACTIVE"


# -- marketplace (contract section 10) -----------------------------------------------------------


class BadRequest(SirError):
    name = "ValidationError"
    status = 400


class IdempotencyKeyRequired(BadRequest):
    """An order without an `Idempotency-Key` header: a retry could buy the vouchers twice."""

    code = "IDEMPOTENCY_KEY_REQUIRED"


class IdempotencyKeyTooShort(BadRequest):
    code = "IDEMPOTENCY_KEY_TOO_SHORT"


class IdempotencyKeyTooLong(BadRequest):
    code = "IDEMPOTENCY_KEY_TOO_LONG"


class InsufficientBalance(PaymentRequired):
    """The user's available balance does not cover the order."""

    code = "INSUFFICIENT_BALANCE"


class RedemptionNotAllowed(Unprocessable):
    """A pool redemption rule refuses the order (minimum balance left, allowed categories)."""

    code = "REDEMPTION_NOT_ALLOWED"


class ProductUnavailable(Unprocessable):
    """Unknown or inactive product or denomination, or nothing can fulfil it (out of stock
    with no vendor for the environment)."""

    code = "PRODUCT_UNAVAILABLE"


class OrderNotCancellable(Conflict):
    """Cancelling an order that is no longer PENDING or PROCESSING."""

    code = "ORDER_NOT_CANCELLABLE"


class DuplicateVoucherCode(Conflict):
    """A voucher code already in the inventory of the product (codes are loaded once)."""

    code = "DUPLICATE_VOUCHER_CODE"


# -- donations and payment providers (contract section 8) -----------------------------------------


class ProviderNotConfigured(Unprocessable):
    """A donation provider this deployment cannot serve here (e.g. `stripe` in production with
    no SIR_STRIPE_SECRET_KEY: the test checkout never takes production money)."""

    code = "PROVIDER_NOT_CONFIGURED"


class ProviderUnavailable(SirError):
    """The payment provider did not answer when the link was made; the donation is FAILED."""

    name = "ProviderError"
    code = "PROVIDER_UNAVAILABLE"
    status = 502


class UnknownProvider(NotFound):
    """A notification to `/v1/providers/{provider}/notifications` for a provider we do not know."""

    code = "UNKNOWN_PROVIDER"


class InvalidProviderSignature(AuthenticationFailed):
    """A provider notification whose signature is missing, stale or wrong: nothing changed."""

    code = "INVALID_PROVIDER_SIGNATURE"


class InvalidNotification(Unprocessable):
    """A signed notification that does not fit its donation (other checkout, other currency,
    no partnerDonationId): nothing changed."""

    code = "INVALID_NOTIFICATION"


class InvalidCheckoutToken(Forbidden):
    """The test checkout link's token does not match its donation (forged or altered link)."""

    code = "INVALID_CHECKOUT_TOKEN"
