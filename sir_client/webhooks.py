"""Verifying the engine's webhooks on the partner's side (contract section 9).

`X-SIR-Signature: sha256=<hex>` is HMAC-SHA256 keyed with the whole `whsec_` secret over
`X-SIR-Timestamp + "." + rawBody`. During a secret rotation the header carries both signatures
(`sha256=<new>,sha256=<old>`); either matching is enough. Verify the raw bytes as received,
before any JSON parsing, and refuse stale timestamps so a captured delivery cannot be replayed.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from typing import Any

from engine.signing import sign_webhook
from engine.wire import loads

DEFAULT_TOLERANCE = 300  # seconds, as the request signatures of section 3.1
_SCHEME = "sha256="


class WebhookSignatureError(Exception):
    """The delivery is not provably from the engine (bad signature or stale timestamp)."""


def verify_webhook(
    secret: str,
    timestamp: str | int,
    raw_body: bytes | str,
    signature_header: str,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """True if `signature_header` holds a valid signature of this body and timestamp.

    `timestamp` is the X-SIR-Timestamp header; it must be within `tolerance` seconds of `now`
    (default: the current time). Every candidate signature is compared in constant time.
    """
    stamp = str(timestamp).strip()
    if not stamp.isdigit():
        return False
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance:
        return False
    body = raw_body.encode() if isinstance(raw_body, str) else raw_body
    expected = sign_webhook(secret, stamp, body).removeprefix(_SCHEME).encode()
    matched = False
    for candidate in signature_header.split(","):
        candidate = candidate.strip()
        if not candidate.lower().startswith(_SCHEME):
            continue
        given = candidate[len(_SCHEME) :].lower().encode()
        # No early exit: each candidate costs the same whether or not an earlier one matched.
        matched |= hmac.compare_digest(expected, given)
    return matched


def parse_event(
    secret: str,
    headers: Mapping[str, str],
    raw_body: bytes | str,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify a delivery from its headers and return the event, decimals exact.

    `headers` must look names up case-insensitively (aiohttp, Starlette and Django's request
    headers all do). Raises WebhookSignatureError.
    """
    timestamp = headers.get("X-SIR-Timestamp")
    signature = headers.get("X-SIR-Signature")
    if not timestamp or not signature:
        raise WebhookSignatureError("missing X-SIR-Timestamp or X-SIR-Signature")
    if not verify_webhook(secret, timestamp, raw_body, signature, tolerance=tolerance, now=now):
        raise WebhookSignatureError("signature does not match, or the timestamp is too old")
    event: dict[str, Any] = loads(raw_body)
    return event
