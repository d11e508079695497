"""Pure rules of the operator API and portal: the partner lifecycle, CIDRs, portal JWTs."""

from __future__ import annotations

import time

import jwt
import pytest

from engine.errors import InvalidStatusTransition, InvalidToken, TokenExpired, ValidationFailed
from engine.partners import check_transition, effective_rate_limit, normalize_cidrs
from engine.portal import ACCESS_TTL, ISSUER, TokenSigner

ALLOWED = {
    ("PENDING_APPROVAL", "ACTIVE"),
    ("ACTIVE", "SUSPENDED"),
    ("SUSPENDED", "ACTIVE"),
    ("PENDING_APPROVAL", "DEACTIVATED"),
    ("ACTIVE", "DEACTIVATED"),
    ("SUSPENDED", "DEACTIVATED"),
}
STATUSES = ("PENDING_APPROVAL", "ACTIVE", "SUSPENDED", "DEACTIVATED")


@pytest.mark.parametrize("current", STATUSES)
@pytest.mark.parametrize("new", STATUSES)
def test_partner_lifecycle(current, new):
    if current == new or (current, new) in ALLOWED:
        check_transition(current, new)
    else:
        with pytest.raises(InvalidStatusTransition) as caught:
            check_transition(current, new)
        assert caught.value.code == "INVALID_STATUS_TRANSITION" and caught.value.status == 422


def test_cidrs_are_normalized_and_checked():
    assert normalize_cidrs(["10.0.0.1", "10.0.0.0/8", "10.0.0.1/32", "::1"], "f") == [
        "10.0.0.1/32",
        "10.0.0.0/8",
        "::1/128",
    ]
    with pytest.raises(ValidationFailed) as caught:
        normalize_cidrs(["10.0.0.0/33", "ok?"], "ipAllowlist")
    assert "ipAllowlist" in caught.value.fields


def test_rate_limit_is_the_override_else_the_tier():
    assert effective_rate_limit({"tier": "PROFESSIONAL", "rate_limit_override": None}) == (
        5000,
        500,
    )
    override = {"perHour": 7, "perMinute": 3}
    assert effective_rate_limit({"tier": "STANDARD", "rate_limit_override": override}) == (7, 3)


def test_jwt_pair_round_trip_and_type_separation():
    signer = TokenSigner(b"k" * 32)
    pair = signer.issue_pair("u1")
    assert pair["expiresIn"] == ACCESS_TTL
    assert signer.verify(pair["accessToken"], "access") == "u1"
    assert signer.verify(pair["refreshToken"], "refresh") == "u1"
    with pytest.raises(InvalidToken):
        signer.verify(pair["accessToken"], "refresh")
    with pytest.raises(InvalidToken):
        signer.verify(pair["refreshToken"], "access")
    with pytest.raises(InvalidToken):
        TokenSigner(b"x" * 32).verify(pair["accessToken"], "access")


def test_jwt_refuses_other_algorithms_missing_claims_and_expiry():
    signer = TokenSigner(b"k" * 32)
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "u1", "typ": "access", "iat": now, "exp": now + 60}
    with pytest.raises(InvalidToken):
        signer.verify(jwt.encode(claims, signer.key, algorithm="HS512"), "access")
    with pytest.raises(InvalidToken):
        signer.verify(jwt.encode(claims, None, algorithm="none"), "access")
    without_typ = {k: v for k, v in claims.items() if k != "typ"}
    with pytest.raises(InvalidToken):
        signer.verify(jwt.encode(without_typ, signer.key, algorithm="HS256"), "access")
    with pytest.raises(TokenExpired):
        signer.verify(
            jwt.encode({**claims, "exp": now - 1}, signer.key, algorithm="HS256"), "access"
        )
