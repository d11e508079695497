"""Request and webhook signatures, exactly as the API contract (sections 3.1 and 9) defines.

These are the one canonical-string functions: the partner-side client signs with them and the
front verifies with them, so the two can never disagree about a byte.
"""

from __future__ import annotations

import hashlib
import hmac


def body_hash(body: bytes) -> str:
    """Lowercase hex sha256 of the raw body (sha256 of b"" when there is none)."""
    return hashlib.sha256(body).hexdigest()


def signed_payload(timestamp: str, method: str, path_with_query: str, body: bytes) -> str:
    """X-Timestamp + METHOD + pathWithQuery + bodyHash, plain concatenation."""
    return f"{timestamp}{method.upper()}{path_with_query}{body_hash(body)}"


def sign_request(
    hmac_secret: str, timestamp: str, method: str, path_with_query: str, body: bytes
) -> str:
    """The X-Signature value: hex HMAC-SHA256 keyed with the HMAC secret string's UTF-8 bytes."""
    message = signed_payload(timestamp, method, path_with_query, body).encode()
    return hmac.new(hmac_secret.encode(), message, hashlib.sha256).hexdigest()


def signatures_match(expected_hex: str, given_hex: str) -> bool:
    """Case-insensitive, constant-time comparison of two hex signatures."""
    return hmac.compare_digest(expected_hex.lower().encode(), given_hex.lower().encode())


def sign_webhook(secret: str, timestamp: str, raw_body: bytes) -> str:
    """`sha256=<hex>` over X-SIR-Timestamp + "." + rawBody, keyed with the whole `whsec_` secret."""
    digest = hmac.new(
        secret.encode(), timestamp.encode() + b"." + raw_body, hashlib.sha256
    ).hexdigest()
    return f"sha256={digest}"
