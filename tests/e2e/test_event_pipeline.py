"""The event pipeline end to end, with no scheduler: a signed submit commits its events, the
front nudges the relay, a real worker fans them out and delivers them to a loopback receiver,
signed so the package's verifier accepts them."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

from aiohttp import web

from engine.credentials import issue_keys
from engine.wire import loads
from sir_client import SirClient
from sir_client.webhooks import verify_webhook
from tests.conftest import ROOT, free_port


async def _receiver(received: list[tuple[dict[str, str], bytes]]) -> tuple[web.AppRunner, str]:
    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/hook"


async def test_a_submit_reaches_the_receiver_signed(
    db, box, make_partner, front, services, tmp_path
):
    received: list[tuple[dict[str, str], bytes]] = []
    runner, url = await _receiver(received)
    base = front()
    partner = await make_partner(funding="100")
    async with db.begin() as conn:
        keys = await issue_keys(
            conn, box, actor="test", partner_id=partner.partner_id, environment="sandbox", name="k"
        )
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ops.cli",
            "worker",
            "--processes",
            "1",
            "--threads",
            "4",
            "--queues",
            "webhooks",
        ],
        env=services.env(),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        async with SirClient(base, keys.secret_key, keys.hmac_secret) as sir:
            endpoint = await sir.request(
                "POST",
                "/v1/partner/webhooks",
                {"url": url, "eventTypes": ["action.completed"], "description": "e2e"},
            )
            result = await sir.request(
                "POST",
                "/v1/partner/actions/submit",
                {
                    "idempotencyKey": "pipeline-1",
                    "actionType": "PURCHASE",
                    "amount": "12.5",
                    "stakeholders": [{"stakeholderTypeCode": "CUSTOMER", "partnerUserId": "u1"}],
                },
            )
        for _ in range(200):  # bounded: up to 20 s
            if received:
                break
            await asyncio.sleep(0.1)
        assert received, (tmp_path / "worker.log").read_text()[-3000:]
        headers, body = received[0]
        event = loads(body)
        assert event["type"] == "action.completed" and event["environment"] == "sandbox"
        assert event["id"].startswith("evt_") and event["data"]["actionId"] == result["actionId"]
        assert headers["User-Agent"] == "SIRGiving-Webhooks/1.0"
        assert verify_webhook(
            endpoint["secret"], headers["X-SIR-Timestamp"], body, headers["X-SIR-Signature"]
        )
        assert not verify_webhook(
            "whsec_" + "0" * 64, headers["X-SIR-Timestamp"], body, headers["X-SIR-Signature"]
        )
        # Only the subscribed type: transaction.completed was recorded too but not wanted here.
        await asyncio.sleep(1)
        assert [loads(b)["type"] for _, b in received] == ["action.completed"]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
        log.close()
        await runner.cleanup()
