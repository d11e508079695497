"""`sir-engine` subcommands as an operator runs them: real processes, real database."""

from __future__ import annotations

import json
import re

from sqlalchemy import select, text

from engine.tables import api_keys, audit_log
from tests.conftest import sir_engine


def _ok(result):
    assert result.returncode == 0, result.stderr
    return result


def test_migrate_is_idempotent(services):
    result = _ok(sir_engine("migrate", env=services.env()))
    assert "migrated to head" in result.stdout


def test_missing_setting_stops_with_one_line_naming_it(services):
    env = services.env()
    del env["DATABASE_URL"]
    result = sir_engine("migrate", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "DATABASE_URL" in result.stderr
    env = services.env(SIR_MASTER_KEY="nope")
    result = sir_engine("serve", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "sir-engine: configuration error: SIR_MASTER_KEY must be 32 bytes as url-safe base64 or 64 hex characters"
    )


async def test_admin_bootstrap_end_to_end(services, db, box):
    env = services.env()
    partner = json.loads(
        _ok(
            sir_engine(
                "admin",
                "--actor",
                "alice",
                "partner-create",
                "--name",
                "Acme Giving",
                "--status",
                "ACTIVE",
                "--action-types",
                "PURCHASE",
                "--stakeholder-types",
                "CUSTOMER",
                env=env,
            )
        ).stdout
    )
    assert re.fullmatch(r"[0-9a-f]{24}", partner["id"]) and partner["slug"] == "acme-giving"

    keys = json.loads(
        _ok(
            sir_engine(
                "admin",
                "keys-issue",
                "--partner",
                partner["id"],
                "--environment",
                "sandbox",
                env=env,
            )
        ).stdout
    )
    assert re.fullmatch(r"pk_test_[0-9a-f]{64}", keys["publicKey"])
    assert re.fullmatch(r"sk_test_[0-9a-f]{64}", keys["secretKey"])
    assert re.fullmatch(r"[0-9a-f]{64}", keys["hmacSecret"])

    pool = json.loads(
        _ok(
            sir_engine(
                "admin",
                "pool-create",
                "--partner",
                partner["id"],
                "--environment",
                "sandbox",
                "--name",
                "Main",
                "--vesting-days",
                "7",
                "--expiration-days",
                "365",
                "--fund",
                "5000",
                env=env,
            )
        ).stdout
    )
    assert pool["isDefault"] is True
    funded = json.loads(
        _ok(
            sir_engine(
                "admin",
                "pool-fund",
                "--partner",
                partner["id"],
                "--environment",
                "sandbox",
                "--pool",
                pool["id"],
                "--amount",
                "0.000001",
                env=env,
            )
        ).stdout
    )
    assert funded["balance"] == "5000.000001"
    _ok(
        sir_engine(
            "admin",
            "reserve-fund",
            "--partner",
            partner["id"],
            "--environment",
            "sandbox",
            "--amount",
            "100",
            env=env,
        )
    )

    async with db.connect() as conn:
        row = (
            (await conn.execute(select(api_keys).where(api_keys.c.id == keys["id"])))
            .mappings()
            .one()
        )
        # The secret key is stored only as a keyed hash; the HMAC secret only encrypted.
        assert keys["secretKey"] not in str(dict(row)) and keys["hmacSecret"] not in str(dict(row))
        assert row["secret_key_hash"] == box.hash_secret_key(keys["secretKey"])
        assert box.decrypt(row["hmac_secret_enc"]) == keys["hmacSecret"]
        actions = (
            (await conn.execute(select(audit_log.c.action).where(audit_log.c.actor == "cli:alice")))
            .scalars()
            .all()
        )
        assert "partner.create" in actions
        dump = (
            await conn.execute(
                text("SELECT coalesce(string_agg(after::text, ' '), '') FROM audit_log")
            )
        ).scalar_one()
        assert keys["secretKey"] not in dump and keys["hmacSecret"] not in dump


def test_admin_refuses_bad_input_with_a_stable_code(services):
    env = services.env()
    result = sir_engine("admin", "partner-create", "--name", "X", "--tier", "GOLD", env=env)
    assert result.returncode == 1
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "VALIDATION_FAILED" and "tier" in error["details"]["fields"]
    result = sir_engine(
        "admin",
        "pool-fund",
        "--partner",
        "0" * 24,
        "--environment",
        "sandbox",
        "--pool",
        "0" * 24,
        "--amount",
        "1.0000001",
        env=env,
    )
    assert result.returncode == 1 and "VALIDATION_FAILED" in result.stderr


async def test_ledger_verify_clean_then_corrupted(services, db, make_partner):
    partner = await make_partner(funding="99")
    env = services.env()
    result = sir_engine("ledger", "verify", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ledger OK")

    async with db.begin() as conn:
        await conn.execute(
            text("UPDATE ledger_accounts SET balance = balance - 3 WHERE pool_id = :p"),
            {"p": partner.pool_id},
        )
    try:
        result = sir_engine("ledger", "verify", env=env)
        assert result.returncode == 3
        assert "ledger BROKEN" in result.stdout
        assert "balance-cache" in result.stdout and "drift=3" in result.stdout
        scoped = sir_engine(
            "ledger", "verify", "--partner", partner.partner_id, "--environment", "sandbox", env=env
        )
        assert scoped.returncode == 3
    finally:
        async with db.begin() as conn:
            await conn.execute(
                text("UPDATE ledger_accounts SET balance = balance + 3 WHERE pool_id = :p"),
                {"p": partner.pool_id},
            )
    assert sir_engine("ledger", "verify", env=env).returncode == 0
