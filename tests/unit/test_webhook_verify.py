"""The partner-side webhook check against the contract's section 9 test vector."""

from __future__ import annotations

from decimal import Decimal

import pytest

from sir_client.webhooks import WebhookSignatureError, parse_event, verify_webhook

SECRET = "whsec_" + "ab" * 32
TIMESTAMP = 1767225600
BODY = (
    b'{"id":"evt_0001","type":"action.completed","createdAt":"2026-01-01T00:00:00Z",'
    b'"environment":"sandbox","data":{"actionId":"65f1a2b3c4d5e6f708192a3b","tokensDistributed":50}}'
)
SIGNATURE = "sha256=b2cd0e3a6ea708375f266d45ff0fa86c0158ca95b7c6d6b6e0122e95eb1c8f70"
OLD_SIGNATURE = "sha256=" + "0" * 64


def test_contract_vector_verifies():
    assert verify_webhook(SECRET, str(TIMESTAMP), BODY, SIGNATURE, now=TIMESTAMP)
    # int timestamp, str body and upper-case hex are the same signature
    assert verify_webhook(
        SECRET,
        TIMESTAMP,
        BODY.decode(),
        SIGNATURE.upper().replace("SHA256", "sha256"),
        now=TIMESTAMP,
    )


@pytest.mark.parametrize(
    "header",
    [
        f"{SIGNATURE},{OLD_SIGNATURE}",  # rotation: new first
        f"{OLD_SIGNATURE},{SIGNATURE}",  # either order
        f"{OLD_SIGNATURE}, {SIGNATURE}",  # white space after the comma
    ],
)
def test_rotation_header_accepts_either_signature(header):
    assert verify_webhook(SECRET, TIMESTAMP, BODY, header, now=TIMESTAMP)


def test_rotation_header_with_no_valid_signature_fails():
    assert not verify_webhook(
        SECRET, TIMESTAMP, BODY, f"{OLD_SIGNATURE},{OLD_SIGNATURE}", now=TIMESTAMP
    )


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_timestamp_within_tolerance(skew):
    assert verify_webhook(SECRET, TIMESTAMP, BODY, SIGNATURE, now=TIMESTAMP + skew)


@pytest.mark.parametrize("skew", [-301, 301, 86400])
def test_timestamp_outside_tolerance_fails(skew):
    assert not verify_webhook(SECRET, TIMESTAMP, BODY, SIGNATURE, now=TIMESTAMP + skew)


def test_custom_tolerance():
    assert verify_webhook(SECRET, TIMESTAMP, BODY, SIGNATURE, now=TIMESTAMP + 1000, tolerance=1000)
    assert not verify_webhook(SECRET, TIMESTAMP, BODY, SIGNATURE, now=TIMESTAMP + 11, tolerance=10)


@pytest.mark.parametrize(
    "body",
    [
        BODY.replace(b'"tokensDistributed":50', b'"tokensDistributed":500'),
        BODY + b" ",
        BODY.replace(b'{"id"', b'{ "id"'),  # re-serialised JSON is another body
    ],
)
def test_tampered_body_fails(body):
    assert not verify_webhook(SECRET, TIMESTAMP, body, SIGNATURE, now=TIMESTAMP)


def test_signature_is_bound_to_the_timestamp():
    # the same signature with a shifted timestamp (still within tolerance) does not verify
    assert not verify_webhook(SECRET, TIMESTAMP + 1, BODY, SIGNATURE, now=TIMESTAMP)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "b2cd0e3a6ea708375f266d45ff0fa86c0158ca95b7c6d6b6e0122e95eb1c8f70",
        "v1=" + SIGNATURE[7:],
        "sha256=",
        ",",
    ],
)
def test_malformed_headers_fail(header):
    assert not verify_webhook(SECRET, TIMESTAMP, BODY, header, now=TIMESTAMP)


@pytest.mark.parametrize("timestamp", ["", "abc", "-1767225600", "1767225600.5"])
def test_malformed_timestamps_fail(timestamp):
    assert not verify_webhook(SECRET, timestamp, BODY, SIGNATURE, now=TIMESTAMP)


def test_wrong_secret_fails():
    assert not verify_webhook("whsec_" + "cd" * 32, TIMESTAMP, BODY, SIGNATURE, now=TIMESTAMP)
    # the `whsec_` prefix is part of the key
    assert not verify_webhook("ab" * 32, TIMESTAMP, BODY, SIGNATURE, now=TIMESTAMP)


def test_parse_event_verifies_then_parses_exactly():
    headers = {"X-SIR-Timestamp": str(TIMESTAMP), "X-SIR-Signature": SIGNATURE}
    event = parse_event(SECRET, headers, BODY, now=TIMESTAMP)
    assert event["id"] == "evt_0001" and event["data"]["tokensDistributed"] == 50
    exact = b'{"amount":0.1}'
    from engine.signing import sign_webhook

    signed = {
        "X-SIR-Timestamp": str(TIMESTAMP),
        "X-SIR-Signature": sign_webhook(SECRET, str(TIMESTAMP), exact),
    }
    assert parse_event(SECRET, signed, exact, now=TIMESTAMP)["amount"] == Decimal("0.1")
    with pytest.raises(WebhookSignatureError):
        parse_event(SECRET, {**headers, "X-SIR-Signature": OLD_SIGNATURE}, BODY, now=TIMESTAMP)
    with pytest.raises(WebhookSignatureError):
        parse_event(SECRET, {}, BODY, now=TIMESTAMP)
