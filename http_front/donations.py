"""Donation endpoints of the widget (contract 8): create a donation link, read its status.

Both take a publishable key (from a browser) or a signed secret-key call, need the partner's
DONATIONS feature, and work in the key's scope: another partner's or environment's donation
answers 404.
"""

from __future__ import annotations

from aiohttp import web

from engine import donations
from engine.errors import (
    NotFound,
    ProviderNotConfigured,
    ProviderUnavailable,
    UnknownActionType,
    UnknownOrganization,
    UnknownStakeholderType,
)
from http_front.auth_partner import requires_feature, widget_key
from http_front.body import json_response, read_model
from http_front.keys import DB, SETTINGS
from http_front.openapi import documented
from http_front.principal import principal
from http_front.widget import preflight
from schemas.donations import CreateDonationLink, DonationLinkOut, DonationStatusOut

BASE = "/v1/partner/donations"


def base_url(request: web.Request) -> str:
    """This server's origin as the caller reached it (SIR_PUBLIC_URL overrides it in links)."""
    return f"{request.scheme}://{request.host}"


@documented(
    "Create a donation link",
    auth="widget",
    request=CreateDonationLink,
    responses={201: DonationLinkOut},
    errors=[
        UnknownOrganization,
        UnknownActionType,
        UnknownStakeholderType,
        ProviderNotConfigured,
        ProviderUnavailable,
    ],
    description="""\
Answers 201 with the link to open. Decisions where the contract is silent:

- `amount` in cents, tip excluded, 50 to 99,999,999 (Stripe's bounds); `currency` defaults to
  USD, `frequency` to `once`. Every.org links take USD only.
- The partner must have registered the DONATION action type and the DONOR and ORGANIZATION
  stakeholder types: refused now (422) rather than after the donor has paid.
- **Links.** `every.org`: Every.org's Donate Link (`https://www.every.org/<EIN or slug>#/donate?
  amount=25.00&frequency=ONCE|MONTHLY&first_name&last_name&email&partner_donation_id`;
  staging.every.org for sandbox keys). `stripe`: a Stripe Checkout Session when the deployment
  has a Stripe key (`client_reference_id` = partnerDonationId; the tip is its own line; monthly
  = a subscription); without one, sandbox gets the hosted test checkout and production is
  refused (422 PROVIDER_NOT_CONFIGURED). If Stripe fails, 502 PROVIDER_UNAVAILABLE and the
  donation is FAILED.
- **Tips** need the partner's `tipConfig.enabled` (else 422); `tipAmount` (cents) or
  `tipPercent` (0-100, 2 decimals), not both; neither: `defaultPercent`. Tips earn no tokens.
- **The DONOR** is decided now: `partnerUserId` from a signed secret-key call; from a
  publishable key only if that user exists with the donor's email (case-insensitive);
  otherwise the user `email:<donorEmail lower-cased>`, created at completion.
- `referralCode` is stored and echoed in `donation.completed`; it rewards no one.
- A monthly donation is rewarded once, for the payment that completes it.""",
)
@widget_key
@requires_feature("DONATIONS")
async def create_link(request: web.Request) -> web.Response:
    body = await read_model(request, CreateDonationLink)
    who = principal(request)
    created = await donations.create_link(
        request.app[DB],
        who.scope,
        request.app[SETTINGS],
        body.to_request(),
        kind="secret" if who.key_kind == "secret" else "publishable",
        base_url=base_url(request),
    )
    return json_response(
        {"donationLink": created.donation_link, "partnerDonationId": created.partner_donation_id},
        status=201,
    )


@documented(
    "Get a donation's status",
    auth="widget",
    responses={200: DonationStatusOut},
    errors=[NotFound],
)
@widget_key
@requires_feature("DONATIONS")
async def get_status(request: web.Request) -> web.Response:
    async with request.app[DB].connect() as conn:
        body = await donations.get_status(
            conn, principal(request).scope, request.match_info["donation_id"]
        )
    return json_response(body)


def add_routes(app: web.Application) -> None:
    app.router.add_post(f"{BASE}/create-link", create_link)
    app.router.add_get(f"{BASE}/status/{{donation_id}}", get_status)
    app.router.add_route("OPTIONS", f"{BASE}/create-link", preflight)
    app.router.add_route("OPTIONS", f"{BASE}/status/{{donation_id}}", preflight)
