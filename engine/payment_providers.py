"""Payment providers of donation links: the links we hand donors, and the notices providers send
back when a donation is paid (contract section 8).

Three checkouts complete a donation:

- `every.org`: Every.org's documented Donate Link,
  `https://www.every.org/<slug>#/donate?amount=<dollars>&frequency=ONCE|MONTHLY&first_name=...
  &last_name=...&email=...&partner_donation_id=<id>[&webhook_token=...]`. Source: Every.org's
  developer docs, "Donate Link" (https://docs.every.org/docs/donate-link: `amount` in US
  dollars, `frequency` ONCE or MONTHLY, donor prefill `first_name`/`last_name`/`email`,
  `partner_donation_id` "a unique ID that you want to be associated with this donation",
  `webhook_token` to route the completion to the partner webhook) and "Partner Webhook"
  (https://docs.every.org/docs/webhooks/partner-webhook: a JSON POST carrying `chargeId`,
  `partnerDonationId`, `amount` as a string in the currency's units, `currency`, ...).
  Every.org resolves `<slug>` as its own nonprofit slug or an EIN; ours are our own, so the
  link uses the EIN (digits) when the directory has one. Sandbox links go to Every.org's
  staging site (staging.every.org), production to www.
- `stripe`: with SIR_STRIPE_SECRET_KEY, a Checkout Session made through the official `stripe`
  package (`client_reference_id` = our partnerDonationId); its `checkout.session.completed`
  event, verified with `stripe.Webhook.construct_event` and SIR_STRIPE_WEBHOOK_SECRET,
  completes the donation.
- `test`: without a Stripe key, in sandbox only, the front's hosted test checkout
  (`/v1/checkout/test/<id>?token=...`); its Pay button sends a notice signed like every.org's.

Every.org and test notices are signed by us, not by the provider: header
`X-SIR-Provider-Signature: t=<unix seconds>,v1=<hex>` with
`hex = hmac_sha256(provider secret, "<t>." + raw body)`, accepted for 300 s. Every.org's partner
webhook carries no signature of its own, so an Every.org notice may instead carry the secret in
the URL it was registered with (`?token=<secret>`), compared in constant time. The provider
secret is `SIR_PROVIDER_SECRETS` (`every.org=...,test=...`) or, when not set, derived from the
master key (`provider_secret`): an operator reads it with `sir-engine provider-secret NAME`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote, urlencode

from engine.crypto import derive_key
from engine.errors import InvalidNotification, InvalidProviderSignature, ProviderUnavailable
from engine.settings import Settings
from engine.wire import loads

LINK_PROVIDERS = ("every.org", "stripe")  # what create-link accepts
NOTIFYING = ("every.org", "stripe", "test")  # who may send /v1/providers/{name}/notifications
SIGNATURE_HEADER = "X-SIR-Provider-Signature"
TOLERANCE = 300  # seconds, as for partner signatures (contract 3.1)


# -- secrets ---------------------------------------------------------------------------------------


def provider_secret(settings: Settings, provider: str) -> str:
    """The shared secret of `provider` (every.org, test): configured, else derived from the
    master key, so a deployment works without one more secret to manage and rotating the master
    key rotates it."""
    for name, value in settings.provider_secrets:
        if name == provider:
            return value
    return derive_key(settings.master_key, f"sir-engine/provider/{provider}/v1").hex()


def sign_notice(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The `X-SIR-Provider-Signature` header value for `body`."""
    ts = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={ts},v1={digest}"


def verify_notice(secret: str, header: str, body: bytes, *, now: float | None = None) -> None:
    """Raise InvalidProviderSignature unless `header` signs `body` with `secret`, within 300 s."""
    parts: dict[str, str] = {}
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(name, value.strip())
    ts, given = parts.get("t", ""), parts.get("v1", "")
    if not ts.isdigit() or len(given) != 64:
        raise InvalidProviderSignature(f"{SIGNATURE_HEADER} must be t=<unix seconds>,v1=<hex>")
    current = time.time() if now is None else now
    if abs(current - int(ts)) > TOLERANCE:
        raise InvalidProviderSignature("The notification's timestamp is more than 300 s away")
    expected = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, given.lower()):
        raise InvalidProviderSignature("The notification's signature does not match")


def checkout_token(settings: Settings, donation_id: str) -> str:
    """The token in a test checkout link: only the front can make one, so the link of a
    donation cannot be forged or pointed at another donation."""
    key = derive_key(settings.master_key, "sir-engine/test-checkout/v1")
    return hmac.new(key, donation_id.encode(), hashlib.sha256).hexdigest()


def checkout_token_ok(settings: Settings, donation_id: str, token: str) -> bool:
    return hmac.compare_digest(checkout_token(settings, donation_id), token.strip().lower())


# -- links --------------------------------------------------------------------------------------------


def dollars(cents: int) -> str:
    """12345 -> "123.45" (exact; never through float)."""
    return format(Decimal(cents) / 100, ".2f")


def every_org_link(
    settings: Settings,
    *,
    sandbox: bool,
    slug: str,
    amount_cents: int,
    frequency: str,
    donation_id: str,
    email: str,
    first_name: str,
    last_name: str,
) -> str:
    """Every.org's Donate Link (see the module docstring for the documented parameters)."""
    params = {
        "amount": dollars(amount_cents),
        "frequency": "MONTHLY" if frequency == "monthly" else "ONCE",
        "first_name": first_name,
        "last_name": last_name,
        "email": email,
        "partner_donation_id": donation_id,
    }
    if settings.everyorg_webhook_token:
        params["webhook_token"] = settings.everyorg_webhook_token
    host = "staging.every.org" if sandbox else "www.every.org"
    return f"https://{host}/{quote(slug)}#/donate?{urlencode(params, quote_via=quote)}"


def test_checkout_link(settings: Settings, base_url: str, donation_id: str) -> str:
    base = (settings.public_url or base_url).rstrip("/")
    return f"{base}/v1/checkout/test/{donation_id}?token={checkout_token(settings, donation_id)}"


@dataclass(frozen=True, slots=True)
class StripeSession:
    id: str
    url: str


async def stripe_checkout_session(
    settings: Settings,
    *,
    donation_id: str,
    amount_cents: int,
    tip_cents: int,
    currency: str,
    frequency: str,
    nonprofit_name: str,
    email: str,
    success_url: str,
    cancel_url: str,
) -> StripeSession:
    """A Stripe Checkout Session for the donation (and the tip as its own line).

    Monthly donations are subscriptions (`mode=subscription`, a monthly recurring price); the
    first paid session completes the donation. Raises ProviderUnavailable when Stripe fails.
    """
    import stripe  # imported here: only deployments with a Stripe key need it loaded

    options: dict[str, Any] = {}
    if settings.stripe_api_base:  # a Stripe-compatible endpoint (stripe-mock, tests)
        options["base_addresses"] = {"api": settings.stripe_api_base}
    client = stripe.StripeClient(settings.stripe_secret_key, max_network_retries=2, **options)
    recurring = {"recurring": {"interval": "month"}} if frequency == "monthly" else {}

    def line(name: str, cents: int) -> dict[str, Any]:
        return {
            "quantity": 1,
            "price_data": {
                "currency": currency.lower(),
                "unit_amount": cents,
                "product_data": {"name": name},
                **recurring,
            },
        }

    items = [line(f"Donation to {nonprofit_name}", amount_cents)]
    if tip_cents:
        items.append(line("Tip", tip_cents))
    params: dict[str, Any] = {
        "mode": "subscription" if frequency == "monthly" else "payment",
        "line_items": items,
        "client_reference_id": donation_id,
        "customer_email": email,
        "metadata": {"partnerDonationId": donation_id},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    try:
        # The package's client is synchronous; a thread keeps the event loop free.
        session = await asyncio.to_thread(
            client.v1.checkout.sessions.create,
            params,  # type: ignore[arg-type]
            {"idempotency_key": f"sir-donation-{donation_id}"},
        )
    except stripe.StripeError as exc:
        raise ProviderUnavailable(
            "Stripe did not create the checkout session; the donation was not created",
            details={"provider": "stripe", "reason": type(exc).__name__},
        ) from None
    return StripeSession(id=str(session.id), url=str(session.url))


# -- notifications -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notice:
    """A verified completion notice, whatever provider sent it."""

    provider: str
    partner_donation_id: str
    reference: str | None  # the provider's charge or session id
    amount_cents: int | None  # what was really given, when the provider says
    currency: str | None


STRIPE_COMPLETING = frozenset(
    {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
)


def stripe_notice(settings: Settings, body: bytes, signature: str) -> Notice | None:
    """Verify a Stripe event with the official package; None for events that complete nothing
    (acknowledged, ignored). Raises InvalidProviderSignature or InvalidNotification."""
    import stripe

    if not settings.stripe_webhook_secret:
        raise InvalidProviderSignature("Stripe notifications are not configured here")
    try:
        event = stripe.Webhook.construct_event(body, signature, settings.stripe_webhook_secret)
    except stripe.SignatureVerificationError:
        raise InvalidProviderSignature("The Stripe-Signature does not match") from None
    except ValueError:
        raise InvalidNotification("The Stripe event is not JSON") from None
    data = event.to_dict()  # plain dicts all the way down
    if data["type"] not in STRIPE_COMPLETING:
        return None
    session = data["data"]["object"]
    if session.get("payment_status") not in {"paid", "no_payment_required"}:
        return None  # async payments complete with checkout.session.async_payment_succeeded
    donation_id = session.get("client_reference_id") or (session.get("metadata") or {}).get(
        "partnerDonationId"
    )
    if not donation_id:
        raise InvalidNotification("The Stripe session names no partnerDonationId")
    return Notice(
        provider="stripe",
        partner_donation_id=str(donation_id),
        reference=str(session.get("id") or data["id"]),
        amount_cents=None,  # amount_total includes the tip; the donation keeps its own amount
        currency=str(session["currency"]).upper() if session.get("currency") else None,
    )


def signed_notice(
    settings: Settings, provider: str, body: bytes, signature: str, url_token: str
) -> Notice:
    """Verify an every.org or test notice (our HMAC header, or for every.org the secret in the
    registered URL) and read it. Raises InvalidProviderSignature or InvalidNotification."""
    secret = provider_secret(settings, provider)
    if provider == "every.org" and url_token and not signature:
        if not hmac.compare_digest(secret.encode(), url_token.encode()):
            raise InvalidProviderSignature("The notification's token does not match")
    else:
        verify_notice(secret, signature, body)
    try:
        data = loads(body)
    except ValueError:
        raise InvalidNotification("The notification is not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("partnerDonationId"), str):
        raise InvalidNotification("The notification names no partnerDonationId")
    return Notice(
        provider=provider,
        partner_donation_id=data["partnerDonationId"],
        reference=str(data["chargeId"]) if data.get("chargeId") else None,
        amount_cents=_cents(data.get("amount")),
        currency=str(data["currency"]).upper() if data.get("currency") else None,
    )


def _cents(amount: Any) -> int | None:
    """Every.org's `amount` is a string in currency units ("25.00")."""
    if amount is None:
        return None
    try:
        value = Decimal(str(amount)) * 100
    except InvalidOperation:
        raise InvalidNotification("amount must be a decimal string") from None
    if value <= 0 or value != value.to_integral_value():
        raise InvalidNotification("amount must be positive, in cents precision")
    return int(value)
