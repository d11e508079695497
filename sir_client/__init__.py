"""The partner-side SDK of the SIR rewards engine: a signing HTTP client and webhook checks.

async with SirClient("https://api.example.com", secret_key, hmac_secret) as sir:
    user, created = await sir.upsert_user("user_42", email="jane@example.com")
    balance = await sir.get_balance("user_42")
"""

from __future__ import annotations

from sir_client.client import OMIT, SirApiError, SirClient, SirResponse, build_query, segment
from sir_client.webhooks import WebhookSignatureError, parse_event, verify_webhook

__all__ = [
    "OMIT",
    "SirApiError",
    "SirClient",
    "SirResponse",
    "WebhookSignatureError",
    "build_query",
    "parse_event",
    "segment",
    "verify_webhook",
]
