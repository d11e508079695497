"""The contract's test vectors (sections 3.1 and 9), byte for byte."""

from __future__ import annotations

from engine.signing import body_hash, sign_request, sign_webhook, signatures_match

HMAC_SECRET = "9f" * 32
TIMESTAMP = "1767225600"
ACTION_BODY = (
    b'{"idempotencyKey":"purchase_98765","actionType":"PURCHASE","amount":49.99,"currency":"USD",'
    b'"stakeholders":[{"stakeholderTypeCode":"CUSTOMER","partnerUserId":"user_42"}]}'
)


def test_post_vector():
    assert body_hash(ACTION_BODY) == (
        "326dc275edbbc2e40d5becaf63b0f792eaed736d7345256e84726990105e0d4d"
    )
    assert sign_request(
        HMAC_SECRET, TIMESTAMP, "POST", "/v1/partner/actions/submit", ACTION_BODY
    ) == ("813e4604e82b8ce895832c48d3b6f197b8b612e2466b9b3b64172021cb799f29")


def test_get_vector_with_query_and_no_body():
    assert sign_request(HMAC_SECRET, TIMESTAMP, "GET", "/v1/partner/users?limit=10", b"") == (
        "037ab9e644b638c748ea8f78d5068b34795997ca17a7f6cd90fcd4774e0674a0"
    )


def test_method_is_upper_cased():
    assert sign_request(HMAC_SECRET, TIMESTAMP, "get", "/v1/partner/users?limit=10", b"") == (
        sign_request(HMAC_SECRET, TIMESTAMP, "GET", "/v1/partner/users?limit=10", b"")
    )


def test_webhook_vector():
    body = (
        b'{"id":"evt_0001","type":"action.completed","createdAt":"2026-01-01T00:00:00Z",'
        b'"environment":"sandbox","data":{"actionId":"65f1a2b3c4d5e6f708192a3b","tokensDistributed":50}}'
    )
    assert sign_webhook("whsec_" + "ab" * 32, TIMESTAMP, body) == (
        "sha256=b2cd0e3a6ea708375f266d45ff0fa86c0158ca95b7c6d6b6e0122e95eb1c8f70"
    )


def test_signatures_compare_case_insensitively():
    expected = "813e4604e82b8ce895832c48d3b6f197b8b612e2466b9b3b64172021cb799f29"
    assert signatures_match(expected, expected.upper())
    assert not signatures_match(expected, expected[:-1] + "0")
