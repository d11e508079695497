"""Partner users over real HTTP: a `sir-engine serve` process, real keys, real signatures (SirClient)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from engine.credentials import issue_keys
from engine.money import Tokens
from engine.scope import Scope
from sir_client import SirApiError, SirClient
from tests.integration.test_users_engine import _grant, _reverse_available

T = Tokens.parse


async def _client(db, box, base_url, partner_id, environment="sandbox"):
    async with db.begin() as conn:
        keys = await issue_keys(
            conn, box, actor="test", partner_id=partner_id, environment=environment, name="e2e"
        )
    return SirClient(base_url, keys.secret_key, keys.hmac_secret)


async def test_upsert_get_patch_and_list(db, box, make_partner, front):
    base = front()
    partner = await make_partner()
    async with await _client(db, box, base, partner.partner_id) as sir:
        user, created = await sir.upsert_user(
            "user_42", email="jane@example.com", first_name="Jane", metadata={"tier": "gold"}
        )
        assert created
        assert user["externalUserId"] == "user_42" and user["metadata"] == {"tier": "gold"}
        assert user["createdAt"].endswith("Z")

        again, created = await sir.upsert_user("user_42", last_name="Doe")
        assert not created and again["id"] == user["id"]
        assert (again["firstName"], again["lastName"]) == ("Jane", "Doe")

        patched = await sir.update_user(
            "user_42", email=None, metadata={"tier": None, "city": "Oslo"}
        )
        assert patched["email"] is None and patched["metadata"] == {"city": "Oslo"}
        assert await sir.get_user("user_42") == patched

        # An id with characters that need encoding in a path still round-trips.
        odd, created = await sir.upsert_user("email:jane@x.com/1 ?#")
        assert created
        assert (await sir.get_user("email:jane@x.com/1 ?#"))["id"] == odd["id"]

        for i in range(3):
            await sir.upsert_user(f"extra_{i}")
        first = await sir.list_users(limit=2)
        assert [u["externalUserId"] for u in first["data"]] == ["extra_2", "extra_1"]
        assert first["nextCursor"]
        every = [u["externalUserId"] async for u in sir.iter_users(page_size=2)]
        assert every == ["extra_2", "extra_1", "extra_0", "email:jane@x.com/1 ?#", "user_42"]

        filtered = await sir.list_users(email="JANE@example.com")
        assert filtered["data"] == []  # the email was cleared above
        with pytest.raises(SirApiError) as caught:
            await sir.list_users(limit=2, cursor=first["nextCursor"], email="x@y.io")
        assert (caught.value.status, caught.value.code) == (400, "INVALID_CURSOR")

        since = datetime.fromisoformat(odd["createdAt"])
        recent = await sir.list_users(created_from=since)
        assert [u["externalUserId"] for u in recent["data"]][-1] == "email:jane@x.com/1 ?#"


async def test_validation_and_limits_answer_422(db, box, make_partner, front):
    base = front()
    partner = await make_partner()
    async with await _client(db, box, base, partner.partner_id) as sir:
        with pytest.raises(SirApiError) as caught:
            await sir.request(
                "POST",
                "/v1/partner/users",
                {"externalUserId": "", "email": "nope", "metadata": {"n": 1}, "nickname": "x"},
            )
        error = caught.value
        assert (error.status, error.code) == (422, "VALIDATION_FAILED")
        assert set(error.details["fields"]) == {"externalUserId", "email", "metadata", "nickname"}
        assert error.request_id

        await sir.upsert_user("u")
        with pytest.raises(SirApiError) as caught:
            await sir.update_user("u", metadata={f"k{i}": "v" for i in range(51)})
        assert (
            caught.value.code == "VALIDATION_FAILED"
            and "metadata" in caught.value.details["fields"]
        )

        for limit in (0, 201):
            with pytest.raises(SirApiError) as caught:
                await sir.list_users(limit=limit)
            assert (caught.value.status, caught.value.code) == (422, "VALIDATION_FAILED")
            assert "limit" in caught.value.details["fields"]
            with pytest.raises(SirApiError) as caught:
                await sir.list_transactions("u", limit=limit)
            assert caught.value.status == 422
        assert len((await sir.list_users(limit=200))["data"]) == 1

        with pytest.raises(SirApiError) as caught:
            await sir.request("GET", "/v1/partner/users", params={"from": "yesterday"})
        assert caught.value.details["fields"] == {
            "from": ["must be an RFC 3339 time with an offset"]
        }
        with pytest.raises(SirApiError) as caught:
            await sir.list_transactions("u", type="BOGUS")
        assert "type" in caught.value.details["fields"]

        response = await sir.request_raw("POST", "/v1/partner/users", None)
        assert response.status == 422  # an empty body reads as {}: externalUserId is required


async def test_other_partner_and_other_environment_get_404(db, box, make_partner, front):
    base = front()
    mine = await make_partner()
    theirs = await make_partner()
    async with (
        await _client(db, box, base, mine.partner_id) as sir,
        await _client(db, box, base, theirs.partner_id) as other,
        await _client(db, box, base, mine.partner_id, "production") as live,
    ):
        await sir.upsert_user("private")
        for client in (other, live):
            for call in (
                client.get_user("private"),
                client.update_user("private", first_name="Mallory"),
                client.get_balance("private"),
                client.list_transactions("private"),
            ):
                with pytest.raises(SirApiError) as caught:
                    await call
                assert (caught.value.status, caught.value.code) == (404, "NOT_FOUND")
            assert (await client.list_users())["data"] == []
        assert (await sir.get_user("private"))["firstName"] is None

        # The same external id in production is a different user.
        live_user, created = await live.upsert_user("private")
        assert created and live_user["id"] != (await sir.get_user("private"))["id"]


async def test_balance_and_transactions_as_exact_numbers(db, box, make_partner, front):
    base = front()
    partner = await make_partner(funding="200000000000")
    async with await _client(db, box, base, partner.partner_id) as sir:
        user, _ = await sir.upsert_user("earner")
        empty = await sir.get_balance("earner")
        assert empty["total"] == 0 and empty["nextVesting"] is None and empty["expiringSoon"] == []

        now = datetime.now(UTC).replace(microsecond=0)
        vests, soon, later = (
            now + timedelta(days=7),
            now + timedelta(days=10),
            now + timedelta(days=90),
        )
        scope = Scope(partner.partner_id, "sandbox")
        for amount, dates in (
            (T("10.000001"), {"vests_at": vests, "expires_at": later}),
            (T("4.5"), {"expires_at": soon}),
            (T("123456789012.123456"), {"expires_at": later}),
        ):
            async with db.begin() as conn:
                await _grant(conn, scope, partner.pool_id, user["id"], amount, **dates)
        async with db.begin() as conn:
            await _reverse_available(conn, scope, partner.pool_id, user["id"], T("123456789017"))

        balance = await sir.get_balance("earner")
        assert balance == {
            "externalUserId": "earner",
            "available": Decimal("-0.376544"),
            "locked": Decimal("10.000001"),
            "total": Decimal("9.623457"),
            "lifetimeEarned": Decimal("123456789026.623457"),
            "lifetimeRedeemed": 0,
            "lifetimeExpired": 0,
            "lifetimeReversed": 123456789017,
            "nextVesting": {
                "amount": Decimal("10.000001"),
                "at": vests.isoformat().replace("+00:00", "Z"),
            },
            "expiringSoon": [],
        }

        raw = await sir.request_raw("GET", "/v1/partner/users/earner/transactions")
        assert raw.status == 200
        lines = raw.body["data"]
        assert [(t["type"], t["amount"], t["wallet"]) for t in lines] == [
            ("REVERSAL", -123456789017, "AVAILABLE"),
            ("CREDIT", Decimal("123456789012.123456"), "AVAILABLE"),
            ("CREDIT", Decimal("4.5"), "AVAILABLE"),
            ("CREDIT", Decimal("10.000001"), "LOCKED"),
        ]
        assert set(lines[0]) == {
            "id", "type", "amount", "wallet", "poolId", "externalUserId", "organizationSlug",
            "actionId", "orderId", "createdAt", "vestsAt", "expiresAt",
        }  # fmt: skip
        assert all(
            t["poolId"] == partner.pool_id and t["externalUserId"] == "earner" for t in lines
        )
        assert lines[-1]["vestsAt"] == vests.isoformat().replace("+00:00", "Z")

        page = await sir.list_transactions("earner", limit=3)
        assert len(page["data"]) == 3 and page["nextCursor"]
        rest = await sir.list_transactions("earner", limit=3, cursor=page["nextCursor"])
        assert [t["id"] for t in rest["data"]] == [lines[3]["id"]] and rest["nextCursor"] is None
        assert [t["id"] async for t in sir.iter_transactions("earner", page_size=1)] == [
            t["id"] for t in lines
        ]
        credits = await sir.list_transactions("earner", type="CREDIT")
        assert len(credits["data"]) == 3

        with pytest.raises(SirApiError) as caught:
            await sir.get_balance("nobody")
        assert caught.value.code == "NOT_FOUND"


async def test_unsigned_and_badly_signed_calls_are_refused(db, box, make_partner, front):
    base = front()
    partner = await make_partner()
    async with db.begin() as conn:
        keys = await issue_keys(
            conn,
            box,
            actor="test",
            partner_id=partner.partner_id,
            environment="sandbox",
            name="e2e",
        )
    async with SirClient(base, keys.secret_key, "0" * 64) as wrong:
        with pytest.raises(SirApiError) as caught:
            await wrong.list_users()
        assert (caught.value.status, caught.value.code) == (401, "INVALID_SIGNATURE")
    async with SirClient(base, keys.public_key, keys.hmac_secret) as publishable:
        with pytest.raises(SirApiError) as caught:
            await publishable.list_users()
        assert (caught.value.status, caught.value.code) == (403, "SECRET_KEY_REQUIRED")
