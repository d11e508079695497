"""`sir-engine admin organizations import FILE.csv`, run as the real console script against the
session's database: validation before any write, idempotent upsert by slug, the seed file."""

from __future__ import annotations

import json
import secrets

from sqlalchemy import select

from engine.tables import organizations
from ops.organizations_import import SEED_CSV
from tests.conftest import sir_engine


def run_import(services, path) -> tuple[int, str, str]:
    result = sir_engine("admin", "organizations", "import", str(path), env=services.env())
    return result.returncode, result.stdout, result.stderr


async def test_import_upserts_by_slug_and_is_idempotent(services, db, tmp_path):
    tag = secrets.token_hex(3)
    path = tmp_path / "orgs.csv"
    path.write_text(
        "name,slug,ein,logoUrl\n"
        f"Alpha Aid {tag},alpha-{tag},12-3456789,https://alpha.example/logo.png\n"
        f'"Beta, Inc. {tag}",beta-{tag},,\n'
    )
    code, out, err = run_import(services, path)
    assert code == 0, err
    assert json.loads(out) == {"inserted": 2, "updated": 0, "unchanged": 0}
    code, out, _ = run_import(services, path)
    assert json.loads(out) == {"inserted": 0, "updated": 0, "unchanged": 2}

    path.write_text(
        "name,slug,ein,logoUrl,status\n"
        f"Alpha Aid {tag},alpha-{tag},12-3456789,https://alpha.example/logo.png,\n"
        f'"Beta, Inc. {tag}",beta-{tag},98-7654321,,INACTIVE\n'
    )
    code, out, _ = run_import(services, path)
    assert json.loads(out) == {"inserted": 0, "updated": 1, "unchanged": 1}
    async with db.connect() as conn:
        beta = (
            (await conn.execute(select(organizations).where(organizations.c.slug == f"beta-{tag}")))
            .mappings()
            .one()
        )
    assert (beta["name"], beta["ein"], beta["status"]) == (
        f"Beta, Inc. {tag}",
        "98-7654321",
        "INACTIVE",
    )


async def test_a_bad_file_is_refused_whole_with_its_lines(services, db, tmp_path):
    tag = secrets.token_hex(3)
    path = tmp_path / "bad.csv"
    path.write_text(
        "name,slug,ein,logoUrl\n"
        f"Good {tag},good-{tag},,\n"
        f"Bad slug,Bad Slug {tag},,\n"
        f"No EIN format,ein-{tag},123,http://insecure.example/x.png\n"
        f"Again,good-{tag},,\n"
    )
    code, out, err = run_import(services, path)
    assert code == 1 and out == ""
    assert "line 3: slug" in err
    assert "line 4: ein" in err and "line 4: logoUrl" in err
    assert "line 5: slug 'good-" in err and "repeats line 2" in err
    assert "nothing imported" in err
    async with db.connect() as conn:
        found = await conn.scalar(
            select(organizations.c.id).where(organizations.c.slug == f"good-{tag}")
        )
    assert found is None

    (tmp_path / "header.csv").write_text("title,slug\nX,x\n")
    code, _, err = run_import(services, tmp_path / "header.csv")
    assert code == 1 and "unknown: title" in err
    code, _, err = run_import(services, tmp_path / "missing.csv")
    assert code == 1 and "missing.csv" in err


async def test_the_seed_file_imports_cleanly(services, db):
    code, out, err = run_import(services, SEED_CSV)
    assert code == 0, err
    counts = json.loads(out)
    rows = SEED_CSV.read_text().strip().splitlines()[1:]
    assert len(rows) >= 20
    assert counts["inserted"] + counts["updated"] + counts["unchanged"] == len(rows)
    async with db.connect() as conn:
        red_cross = (
            (
                await conn.execute(
                    select(organizations).where(organizations.c.slug == "american-red-cross")
                )
            )
            .mappings()
            .one()
        )
    assert red_cross["ein"] == "53-0196605"
    assert red_cross["logo_url"].startswith("https://")
