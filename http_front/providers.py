"""Payment providers talking back (contract 8): their completion notices, and the hosted test
checkout that stands in for Stripe where no Stripe key is configured (sandbox, dev, tests).

`POST /v1/providers/{provider}/notifications` takes no partner key: the provider proves itself
with its shared secret (`engine.payment_providers` says how for each). A notice completes the
donation it names exactly once; duplicates answer 200 with `changed: false` and change nothing.

The test checkout (`GET /v1/checkout/test/{id}?token=...`) is a page with a Pay button. The
token in the link is an HMAC of the donation id under a key derived from the master key, so a
link cannot be forged or pointed at another donation. Pay sends a notice signed with the `test`
provider's secret through the very function the notification route uses, so the whole flow
(link, payment, notice, reward) runs offline exactly as it would with a provider.
"""

from __future__ import annotations

import html
import logging
import secrets
from typing import Any

from aiohttp import web

from engine import donations
from engine import payment_providers as providers
from engine.errors import (
    InvalidCheckoutToken,
    InvalidNotification,
    InvalidProviderSignature,
    NotFound,
    UnknownProvider,
)
from engine.wire import dumps
from http_front.body import json_response
from http_front.keys import DB, NUDGE, SETTINGS
from http_front.openapi import documented
from schemas.donations import NotificationAck

log = logging.getLogger("sir.providers")


async def receive_notice(
    app: web.Application, provider: str, body: bytes, headers: Any, url_token: str = ""
) -> dict[str, Any]:
    """Verify a provider's notice and complete its donation; the acknowledgement body."""
    settings = app[SETTINGS]
    if provider not in providers.NOTIFYING:
        raise UnknownProvider(
            f"unknown provider {provider!r}", details={"known": list(providers.NOTIFYING)}
        )
    if provider == "stripe":
        notice = providers.stripe_notice(settings, body, headers.get("Stripe-Signature", ""))
    else:
        notice = providers.signed_notice(
            settings, provider, body, headers.get(providers.SIGNATURE_HEADER, ""), url_token
        )
    if notice is None:  # an event that completes nothing (another Stripe event type)
        return {"received": True, "changed": False, "partnerDonationId": None, "status": None}
    completion = await donations.complete_donation(app[DB], notice)
    if completion.changed:
        nudge = app.get(NUDGE)
        if nudge is not None:
            nudge()  # donation.completed and action.completed out to webhooks now
        log.info(
            "donation %s completed by %s (reward error: %s)",
            notice.partner_donation_id,
            provider,
            completion.status["rewardError"],
        )
    return {
        "received": True,
        "changed": completion.changed,
        "partnerDonationId": completion.status["partnerDonationId"],
        "status": completion.status["status"],
    }


@documented(
    "A payment provider's completion notice",
    auth="none",
    responses={200: NotificationAck},
    errors=[UnknownProvider, InvalidProviderSignature, InvalidNotification, NotFound],
    description="""\
Called by payment providers, not partners. `provider` is `stripe`, `every.org` or `test`.

- **stripe**: the raw Stripe event, verified with the official package's
  `stripe.Webhook.construct_event` against `Stripe-Signature` and SIR_STRIPE_WEBHOOK_SECRET.
  `checkout.session.completed` (paid) and `checkout.session.async_payment_succeeded` complete
  the donation named by the session's `client_reference_id`; other events are acknowledged
  and change nothing.
- **every.org** and **test**: Every.org's partner-webhook JSON (`partnerDonationId`,
  `chargeId`, `amount` as a decimal string, `currency`) with header
  `X-SIR-Provider-Signature: t=<unix seconds>,v1=<hex>`, `hex = hmac_sha256(secret, t + "." +
  rawBody)`, within 300 s. Every.org itself does not sign its webhook, so for every.org the
  secret may instead be in the registered URL (`?token=<secret>`). Secrets: SIR_PROVIDER_SECRETS
  (`every.org=...,test=...`), else derived from the master key (`sir-engine provider-secret
  NAME` prints it).

The notice completes the donation once: the DONATION action is applied (idempotency key
`donation:<partnerDonationId>`, stakeholders DONOR and ORGANIZATION, amount = cents / 100) and
`donation.completed` is recorded in the same transaction. A duplicate answers `changed: false`
and changes nothing. When the provider reports another amount than the link's (an Every.org
donor may change it), the reward follows what was given. A refused action does not undo the
donation: it is COMPLETED with `rewardError`. A 503 means nothing changed: retry.""",
)
async def notification(request: web.Request) -> web.Response:
    body = await request.read()
    ack = await receive_notice(
        request.app,
        request.match_info["provider"],
        body,
        request.headers,
        request.query.get("token", ""),
    )
    return json_response(ack)


# -- the hosted test checkout ---------------------------------------------------------------------

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: system-ui, sans-serif; background: #f4f5f7; margin: 0; }}
main {{ max-width: 420px; margin: 48px auto; background: #fff; border-radius: 12px;
        padding: 28px; box-shadow: 0 2px 12px rgba(0,0,0,.08); }}
.badge {{ background: #fff3cd; color: #7a5b00; padding: 4px 8px; border-radius: 6px;
          font-size: 12px; }}
.total {{ font-size: 32px; font-weight: 600; margin: 12px 0; }}
button {{ width: 100%; padding: 14px; font-size: 16px; border: 0; border-radius: 8px;
          background: #635bff; color: #fff; cursor: pointer; }}
.done {{ color: #0a7d38; font-weight: 600; }}
</style></head><body><main>
<span class="badge">TEST CHECKOUT: no money moves</span>
{content}
</main></body></html>
"""


def _money(cents: int, currency: str) -> str:
    return f"{providers.dollars(cents)} {html.escape(currency)}"


def _checkout_html(row: dict[str, Any], token: str, *, paid: bool) -> str:
    tip = row["tip_amount_cents"] or 0
    lines = [
        f"<h1>Donate to {html.escape(row['org_name'])}</h1>",
        f"<p>Donation: {_money(row['amount_cents'], row['currency'])}"
        f"{' monthly' if row['frequency'] == 'monthly' else ''}</p>",
    ]
    if tip:
        lines.append(f"<p>Tip: {_money(tip, row['currency'])}</p>")
    lines.append(
        f'<div class="total" id="total">{_money(row["amount_cents"] + tip, row["currency"])}</div>'
    )
    if paid or row["status"] == "COMPLETED":
        lines.append(
            '<p class="done" id="paid">Payment complete. Thank you! You can close this window.</p>'
        )
    else:
        lines.append(
            f'<form method="post" action="/v1/checkout/test/{html.escape(row["id"])}">'
            f'<input type="hidden" name="token" value="{html.escape(token)}">'
            '<button id="pay" type="submit">Pay (test)</button></form>'
        )
    return _PAGE.format(title="Test checkout", content="\n".join(lines))


async def _checked_donation(request: web.Request, token: str) -> dict[str, Any]:
    donation_id = request.match_info["donation_id"]
    if not providers.checkout_token_ok(request.app[SETTINGS], donation_id, token):
        raise InvalidCheckoutToken("This checkout link is not valid")
    async with request.app[DB].connect() as conn:
        row = await donations.checkout_view(conn, donation_id)
    if row["checkout"] != "test":
        raise InvalidCheckoutToken("This donation is not paid through the test checkout")
    return row


@documented(
    "The hosted test checkout page (sandbox)",
    auth="none",
    responses={200: "text/html"},
    errors=[InvalidCheckoutToken, NotFound],
    description="The link `create-link` answers for `provider: stripe` when no Stripe key is "
    "configured (sandbox only; production refuses with 422 PROVIDER_NOT_CONFIGURED). `token` "
    "is an HMAC of the donation id under a key derived from the master key: links cannot be "
    "forged or pointed at another donation.",
)
async def checkout_page(request: web.Request) -> web.Response:
    token = request.query.get("token", "")
    row = await _checked_donation(request, token)
    return web.Response(text=_checkout_html(row, token, paid=False), content_type="text/html")


@documented(
    "Pay on the hosted test checkout (sandbox)",
    auth="none",
    responses={200: "text/html"},
    errors=[InvalidCheckoutToken, NotFound],
    description="The page's Pay button (form field `token`). Sends the `test` provider's "
    "signed completion notice through the same code as `POST /v1/providers/test/"
    "notifications`; paying twice changes nothing.",
)
async def checkout_pay(request: web.Request) -> web.Response:
    form = await request.post()
    token = str(form.get("token", ""))
    row = await _checked_donation(request, token)
    notice = dumps(
        {
            "partnerDonationId": row["id"],
            "chargeId": f"test_{secrets.token_hex(8)}",
            "amount": providers.dollars(row["amount_cents"]),
            "currency": row["currency"],
        }
    ).encode()
    secret = providers.provider_secret(request.app[SETTINGS], "test")
    headers = {providers.SIGNATURE_HEADER: providers.sign_notice(secret, notice)}
    await receive_notice(request.app, "test", notice, headers)
    return web.Response(text=_checkout_html(row, token, paid=True), content_type="text/html")


@documented(
    "Where Stripe Checkout returns the donor",
    auth="none",
    responses={200: "text/html"},
    description="Stripe's success and cancel URL. It only thanks the donor: the donation "
    "completes with Stripe's signed notification, never with this page.",
)
async def checkout_done(request: web.Request) -> web.Response:
    cancelled = request.query.get("cancelled") == "1"
    text = (
        "<h1>Donation cancelled</h1><p>Nothing was charged.</p>"
        if cancelled
        else "<h1>Thank you!</h1><p>Your donation is being confirmed. You can close this window.</p>"
    )
    return web.Response(
        text=_PAGE.format(title="Donation", content=text).replace(
            '<span class="badge">TEST CHECKOUT: no money moves</span>', ""
        ),
        content_type="text/html",
    )


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/providers/{provider}/notifications", notification)
    app.router.add_get("/v1/checkout/test/{donation_id}", checkout_page)
    app.router.add_post("/v1/checkout/test/{donation_id}", checkout_pay)
    app.router.add_get("/v1/checkout/done", checkout_done)
