"""Pure webhook rules: destinations, URLs, custom headers, the retry schedule, the signed body."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from engine.webhooks import (
    JITTER,
    RETRY_SCHEDULE,
    destination_problem,
    event_body,
    header_problems,
    mask_header_value,
    new_secret,
    retry_delay,
    signature_header,
    url_problems,
)
from sir_client.webhooks import verify_webhook


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1",
        "10.255.255.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.10",
        "127.0.0.1",
        "127.1.2.3",
        "0.0.0.0",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "224.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "::ffff:127.0.0.1",
        "::ffff:8.8.8.8",  # mapped addresses are refused outright
        "ff02::1",
    ],
)
def test_non_public_destinations_are_refused(ip):
    assert destination_problem(ip) is not None


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "1.1.1.1", "172.15.255.255", "172.32.0.1", "93.184.216.34", "2606:4700::1111"]
)
def test_public_destinations_are_allowed(ip):
    assert destination_problem(ip) is None


def test_specific_reasons():
    assert "loopback" in destination_problem("127.0.0.1")
    assert "link-local" in destination_problem("169.254.169.254")
    assert "unique-local" in destination_problem("fd00::1")
    assert "IPv4-mapped" in destination_problem("::ffff:10.0.0.1")
    assert destination_problem("not-an-ip") == "not an IP address"


@pytest.mark.parametrize(
    ("url", "allow_private", "fine"),
    [
        ("https://hooks.example.com/sir", False, True),
        ("http://hooks.example.com:8080/sir?x=1", False, True),
        ("ftp://hooks.example.com/", False, False),
        ("hooks.example.com/sir", False, False),
        ("https://user:pw@hooks.example.com/", False, False),
        ("https://user@hooks.example.com/", False, False),
        ("https:///nohost", False, False),
        ("https://127.0.0.1/x", False, False),
        ("https://127.0.0.1/x", True, True),
        ("http://[::1]:9000/x", False, False),
        ("http://[::1]:9000/x", True, True),
        ("https://10.1.2.3/", False, False),
        ("https://localhost/", False, False),
        ("https://localhost/", True, True),
        ("https://8.8.8.8/", False, True),
        ("https://example.com/a b", False, False),
        ("https://example.com/\r\nX: y", False, False),
        ("https://example.com:99999/", False, False),
        ("https://example.com/" + "a" * 2100, False, False),
    ],
)
def test_url_rules(url, allow_private, fine):
    assert (url_problems(url, allow_private=allow_private) == []) is fine


def test_headers_allowed():
    assert header_problems({"Authorization": "Bearer abc", "X-Partner-Tag": "one\ttwo"}) == {}


@pytest.mark.parametrize(
    "name",
    [
        "Host",
        "host",
        "Content-Type",
        "content-length",
        "Content-Encoding",
        "User-Agent",
        "X-SIR-Signature",
        "x-sir-anything",
        "Transfer-Encoding",
        "Connection",
    ],
)
def test_headers_the_engine_owns_are_refused(name):
    problems = header_problems({name: "v"})
    assert list(problems) == [f"headers.{name}"]
    assert "set by the engine" in problems[f"headers.{name}"][0]


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Evil\r\nHost": "x"},
        {"X-Evil\n": "x"},
        {"Bad Name": "x"},
        {"": "x"},
        {"X-Ok": "a\r\nX-Injected: 1"},
        {"X-Ok": "a\nb"},
        {"X-Ok": "nul\x00"},
        {"X-Ok": 5},
        {"X-Ok": "é"},
        {"X-Ok": "x" * 5000},
        {"X-Dup": "1", "x-dup": "2"},
    ],
)
def test_bad_headers_are_refused(headers):
    assert header_problems(headers)


def test_too_many_headers():
    assert header_problems({f"X-H{i}": "v" for i in range(21)}) == {
        "headers": ["at most 20 headers"]
    }


def test_masking():
    assert mask_header_value("Bearer 0123456789abcdef") == "****cdef"
    assert mask_header_value("short") == "****"


def test_secret_format():
    secret = new_secret()
    assert secret.startswith("whsec_") and len(secret) == 6 + 64
    assert all(c in "0123456789abcdef" for c in secret[6:])


def test_retry_schedule_with_jitter_bounds():
    rng = random.Random(7)
    for attempt, base in enumerate(RETRY_SCHEDULE, start=1):
        for _ in range(200):
            delay = retry_delay(attempt, rng=rng)
            assert base * (1 - JITTER) <= delay <= base * (1 + JITTER)
    # The schedule is spent after nine retries (ten attempts): the delivery FAILS.
    assert retry_delay(len(RETRY_SCHEDULE) + 1, rng=rng) is None
    assert retry_delay(0, rng=rng) is None
    # About a day in all, as the contract says.
    assert 20 * 3600 < sum(RETRY_SCHEDULE) < 26 * 3600
    assert RETRY_SCHEDULE[:3] == (5, 30, 120)


def test_jitter_spreads_and_scale_shrinks():
    rng = random.Random(1)
    delays = {round(retry_delay(1, rng=rng), 3) for _ in range(50)}
    assert len(delays) > 40  # not one fixed value: receivers are not hit in lockstep
    scaled = retry_delay(1, rng=random.Random(1), scale=0.01)
    assert 0.04 <= scaled <= 0.06


def test_contract_section_9_test_vector_through_the_body_path():
    # Given the contract's event, rendered by the same function deliveries use
    body = event_body(
        "evt_0001",
        "action.completed",
        datetime(2026, 1, 1, tzinfo=UTC),
        "sandbox",
        {"actionId": "65f1a2b3c4d5e6f708192a3b", "tokensDistributed": 50},
    )
    assert body == (
        b'{"id":"evt_0001","type":"action.completed","createdAt":"2026-01-01T00:00:00Z",'
        b'"environment":"sandbox","data":{"actionId":"65f1a2b3c4d5e6f708192a3b",'
        b'"tokensDistributed":50}}'
    )
    secret = "whsec_" + "ab" * 32
    # When signed as a delivery is
    header = signature_header([secret], "1767225600", body)
    # Then it is the contract's signature, and the partner's verifier accepts it
    assert header == "sha256=b2cd0e3a6ea708375f266d45ff0fa86c0158ca95b7c6d6b6e0122e95eb1c8f70"
    assert verify_webhook(secret, "1767225600", body, header, now=1767225600)


def test_rotation_header_carries_both_and_each_verifies():
    body = b'{"id":"evt_1"}'
    new, old = new_secret(), new_secret()
    header = signature_header([new, old], "1767225600", body)
    assert header.count("sha256=") == 2 and header.index(",") > 0
    for secret in (new, old):
        assert verify_webhook(secret, "1767225600", body, header, now=1767225600)
    assert not verify_webhook(new_secret(), "1767225600", body, header, now=1767225600)
