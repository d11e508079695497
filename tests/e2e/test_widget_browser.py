"""Real-browser tests: headless Chromium (Debian's `chromium`, installed by `.ci/run`) driven by
Playwright for Python against a real `sir-engine serve` process.

- Swagger UI at /partner-api loads and lists the endpoints.
- A partner's page on ANOTHER origin (its own loopback server, so CORS is really exercised)
  embeds widget.js with a sandbox publishable key; the donor fills the form, the widget creates
  the donation link, the hosted test checkout opens in a popup, Pay completes the donation
  through the provider-notification path, the widget shows the reward, and the donor's balance
  read through the signed API equals it. All offline.

Screenshots are written under artifacts/screenshots/ (gitignored) and their paths printed.
No skip: without /usr/bin/chromium these tests fail.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, async_playwright

from engine.organization_import import upsert_organizations
from tests.conftest import ROOT
from tests.support.donations import make_donation_partner, signed

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "artifacts" / "screenshots"


def shot_path(name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS / name


async def launch(playwright) -> Browser:
    assert CHROMIUM.exists(), "chromium is missing: .ci/run installs Debian's chromium"
    return await playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
    )


@pytest.fixture
def partner_page() -> Iterator[tuple[dict[str, str], str]]:
    """A loopback web server standing for the partner's site; the test fills `page["html"]`."""
    page = {"html": ""}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            body = page["html"].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield page, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_swagger_ui_loads_and_lists_the_endpoints(front):
    base = front()
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            await page.goto(f"{base}/partner-api")
            await page.wait_for_selector(".opblock", timeout=30_000)
            paths = await page.locator(".opblock-summary-path").all_inner_texts()
            title = await page.locator(".info .title").inner_text()
            path = shot_path("swagger-ui.png")
            await page.screenshot(path=str(path), full_page=False)
            print(f"\nscreenshot: {path}")
        finally:
            await browser.close()
    assert "SIR rewards engine API" in title
    cleaned = {p.replace("\u200b", "").strip() for p in paths}
    assert len(cleaned) > 50
    for expected in (
        "/v1/partner/actions/submit",
        "/v1/partner/donations/create-link",
        "/v1/partner/donations/status/{donationId}",
        "/v1/partner/organizations",
        "/v1/providers/{provider}/notifications",
    ):
        assert expected in cleaned, expected


async def test_widget_donation_completes_in_the_browser_and_rewards_the_donor(
    front, db, box, partner_page
):
    # Given a partner with DONATIONS and a sandbox publishable key, and a real front
    async with db.begin() as conn:
        await upsert_organizations(
            conn,
            [{"slug": "american-red-cross", "name": "American Red Cross", "ein": "53-0196605"}],
            actor="test",
        )
    partner = await make_donation_partner(db, box)
    base = front()
    page_state, site = partner_page
    page_state["html"] = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Partner shop</title></head>
<body style="font-family: sans-serif; padding: 24px">
<h1>Thanks for shopping with us</h1>
<div data-sir-donate data-key="{html.escape(partner.pk)}" data-nonprofit="american-red-cross"
     data-amount="2500" data-provider="stripe" data-api="{base}" data-poll-ms="300"></div>
<script src="{base}/widget.js"></script>
</body></html>"""
    email = "widget.donor@example.com"

    async with async_playwright() as playwright:
        browser = await launch(playwright)
        try:
            context = await browser.new_context(viewport={"width": 900, "height": 700})
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(site)
            # the widget looked the nonprofit up across origins (CORS) with the publishable key
            await page.wait_for_function(
                "document.querySelector('.sir-title').textContent.includes('American Red Cross')",
                timeout=15_000,
            )
            await page.fill(".sir-first-name", "Wanda")
            await page.fill(".sir-last-name", "Donor")
            await page.fill(".sir-email", email)
            # When the donor clicks Donate, the test checkout opens in a popup
            async with page.expect_popup() as popup_info:
                await page.click(".sir-donate")
            checkout = await popup_info.value
            await checkout.wait_for_selector("#pay", timeout=15_000)
            assert "/v1/checkout/test/" in checkout.url
            assert "25.00 USD" in await checkout.inner_text("#total")
            path = shot_path("widget-test-checkout.png")
            await checkout.screenshot(path=str(path))
            print(f"\nscreenshot: {path}")
            await checkout.click("#pay")
            await checkout.wait_for_selector("#paid", timeout=15_000)
            # Then the widget shows the reward
            reward = page.locator(".sir-reward")
            await reward.wait_for(timeout=15_000)
            tokens = await reward.get_attribute("data-tokens")
            status_text = await page.inner_text(".sir-status")
            donation_id = await page.get_attribute("[data-sir-donate]", "data-donation-id")
            path = shot_path("widget-reward.png")
            await page.screenshot(path=str(path))
            print(f"screenshot: {path}")
        finally:
            await browser.close()
    assert errors == []
    assert tokens == "12.5"  # 25.00 shared by DONOR and ORGANIZATION (no campaign)
    assert "You earned 12.5 SIR tokens" in status_text

    # And the donor's balance, read through the signed API, holds the reward
    user_path = f"/v1/partner/users/email:{email}/balance"
    status_path = f"/v1/partner/donations/status/{donation_id}"
    async with aiohttp.ClientSession() as http:
        async with http.get(base + user_path, headers=signed(partner, "GET", user_path)) as r:
            assert r.status == 200
            balance = await r.json()
        async with http.get(base + status_path, headers={"X-Partner-Key": partner.pk}) as r:
            donation = await r.json()
    assert balance["available"] == 12.5 and balance["lifetimeEarned"] == 12.5
    assert donation["status"] == "COMPLETED" and donation["actionId"]
