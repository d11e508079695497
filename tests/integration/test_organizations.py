"""The operator's nonprofit directory, and an organization earning through an action."""

from __future__ import annotations

import secrets

import pytest

from engine.errors import UnknownOrganization
from engine.money import Tokens
from engine.submit import submit_action
from tests.integration.test_admin_api import ADMIN, call, client  # noqa: F401 - fixture
from tests.integration.test_submit import action, org, user


async def test_create_list_patch_and_earn(client, db, make_partner):  # noqa: F811
    slug = f"red-cross-{secrets.token_hex(3)}"
    status, created = await call(
        client,
        "POST",
        f"{ADMIN}/organizations",
        {
            "slug": slug,
            "name": "American Red Cross",
            "ein": "53-0196605",
            "logoUrl": "https://example.org/logo.png",
        },
    )
    assert status == 201, created
    assert created["status"] == "ACTIVE" and created["ein"] == "53-0196605"

    status, again = await call(
        client, "POST", f"{ADMIN}/organizations", {"slug": slug, "name": "Copy"}
    )
    assert (status, again["error"]["code"]) == (409, "SLUG_TAKEN")

    status, bad = await call(
        client,
        "POST",
        f"{ADMIN}/organizations",
        {"slug": "Bad Slug", "name": "", "ein": "x", "logoUrl": "http://x"},
    )
    assert status == 422 and set(bad["error"]["details"]["fields"]) == {
        "slug",
        "name",
        "ein",
        "logoUrl",
    }

    status, found = await call(client, "GET", f"{ADMIN}/organizations?q=red%20cross&limit=200")
    assert status == 200 and slug in [o["slug"] for o in found["data"]]

    # An ACTIVE organization earns through an action; once INACTIVE it is refused.
    partner = await make_partner(funding="100")
    result = await submit_action(
        db, partner.scope, action(user("d", "DONOR"), org(slug), amount="10")
    )
    assert result["distributions"][1] == {
        **result["distributions"][1],
        "organizationSlug": slug,
        "tokens": Tokens.parse("5"),
    }

    status, patched = await call(
        client, "PATCH", f"{ADMIN}/organizations/{slug}", {"status": "INACTIVE"}
    )
    assert status == 200 and patched["status"] == "INACTIVE"
    with pytest.raises(UnknownOrganization):
        await submit_action(db, partner.scope, action(user("d", "DONOR"), org(slug), amount="10"))

    status, audit = await call(
        client, "GET", f"{ADMIN}/audit-log?targetType=organization&limit=200"
    )
    assert {"organization.create", "organization.update"} <= {a["action"] for a in audit["data"]}

    status, missing = await call(
        client, "PATCH", f"{ADMIN}/organizations/no-such-org", {"name": "x"}
    )
    assert (status, missing["error"]["code"]) == (404, "NOT_FOUND")
    status, _ = await call(client, "GET", f"{ADMIN}/organizations", headers={})
    assert status == 401
