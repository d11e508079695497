"""The README's partner-side example runs as written against a real front (so it cannot drift)."""

from __future__ import annotations

import asyncio
import re
import textwrap
import time
from decimal import Decimal

from engine.credentials import issue_keys
from engine.signing import sign_webhook
from tests.conftest import ROOT


def _example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Calling the engine from a partner's server", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


async def test_the_readme_example_runs(db, box, make_partner, front):
    base = front()
    partner = await make_partner(funding="100")
    async with db.begin() as conn:
        keys = await issue_keys(
            conn, box, actor="test", partner_id=partner.partner_id, environment="sandbox", name="k"
        )
    # A real delivery for the webhook part of the example.
    webhook_secret = "whsec_" + "ab" * 32
    raw_body = b'{"id":"evt_1","type":"action.completed","createdAt":"2026-01-01T00:00:00Z","environment":"sandbox","data":{"n":1}}'
    timestamp = str(int(time.time()))
    request_headers = {
        "X-SIR-Timestamp": timestamp,
        "X-SIR-Signature": sign_webhook(webhook_secret, timestamp, raw_body),
    }

    code = _example().replace('"http://127.0.0.1:8080"', "base_url")
    source = "async def example(base_url, secret_key, hmac_secret, webhook_secret, request_headers, raw_body):\n"
    source += textwrap.indent(code, "    ") + "\n    return result, balance, event\n"
    namespace: dict = {}
    exec(compile(source, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    args = (base, keys.secret_key, keys.hmac_secret, webhook_secret, request_headers, raw_body)
    result, balance, event = await namespace["example"](*args)
    assert result["status"] == "COMPLETED" and result["tokensDistributed"] == Decimal("49.99")
    assert balance["available"] == Decimal("49.99")
    assert event["type"] == "action.completed"
    # Run again a second later (a retry is signed afresh, so its bytes differ from the first):
    # the same idempotency key answers 409 IDEMPOTENT and the example takes the original.
    await asyncio.sleep(1.1)
    again, _, _ = await namespace["example"](*args)
    assert again["actionId"] == result["actionId"]
