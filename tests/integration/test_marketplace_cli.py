"""The marketplace commands of the real console script: `admin catalog import` with its progress
bar, and `reconcile` with its exit status."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime

from engine import orders, vendors
from tests.conftest import sir_engine
from tests.integration.test_orders import _fund, _place, _product, _vendor


def test_catalog_import_from_the_shell_is_idempotent(services, tmp_path):
    sku = f"cli-{secrets.token_hex(4)}"
    csv_file = tmp_path / "catalog.csv"
    csv_file.write_text(
        "sku,name,category,country,currency,deliveryType,denominations\n"
        + "".join(f"{sku}-{i},Card {i},food,US,USD,code,10:1000\n" for i in range(30))
        + f"{sku}-bad,Card,food,US,USD,fax,10:1000\n"
    )
    first = sir_engine(
        "admin", "catalog", "import", str(csv_file), "--progress", env=services.env()
    )
    assert first.returncode == 1, first.stderr  # one row refused
    result = json.loads(first.stdout)
    assert (result["created"], result["updated"]) == (30, 0)
    assert result["rejected"] == [
        {"line": 32, "error": {"deliveryType": [result["rejected"][0]["error"]["deliveryType"][0]]}}
    ]
    assert "catalog: 100%" in first.stderr and "31/31" in first.stderr

    csv_file.write_text(
        csv_file.read_text().replace(
            f"{sku}-bad,Card,food,US,USD,fax", f"{sku}-ok,Card,food,US,USD,code"
        )
    )
    second = sir_engine("admin", "catalog", "import", str(csv_file), env=services.env())
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == {"created": 1, "updated": 30, "rejected": []}
    assert second.stderr == ""  # no bar when not asked and not on a terminal


async def test_reconcile_exits_3_on_a_drift_and_0_on_a_clean_day(services, db, box, make_partner):
    today = datetime.now(UTC).date().isoformat()
    clean = await make_partner(funding="100")
    drifting = await make_partner(funding="100")
    product = await _product(db)
    registry = vendors.Vendors(db, box)
    for partner, drift in ((clean, 0), (drifting, 1)):
        await _vendor(db, mode="instant", drift_next=drift)
        await _fund(db, partner.scope, "u1", "20")
        order, _ = await _place(db, partner.scope, "u1", product)
        assert await orders.process_order(db, box, registry, order["id"]) == "DELIVERED"

    ok = sir_engine("reconcile", "--date", today, "--partner", clean.partner_id, env=services.env())
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)[0]["summary"]["matched"] == 1
    found = sir_engine(
        "reconcile", "--date", today, "--partner", drifting.partner_id, env=services.env()
    )
    assert found.returncode == 3, found.stdout + found.stderr
    (report,) = json.loads(found.stdout)
    assert report["summary"]["drifted"] == 1 and report["ledger"]["balanced"] is True
    bad = sir_engine("reconcile", "--date", "03/12/2026", env=services.env())
    assert bad.returncode == 1 and "VALIDATION_FAILED" in bad.stderr
