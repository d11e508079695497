"""Batch actions end to end: a real `sir-engine serve`, real signatures, a real Dramatiq worker
process (`sir-engine worker --queues distribution`), and a worker killed with SIGKILL mid-batch
whose batch still completes with every item applied exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, select

from engine.credentials import issue_keys
from engine.money import Tokens
from engine.pools import pool_balance
from engine.signing import sign_request
from engine.tables import action_batch_items, actions
from engine.wire import dumps, loads
from sir_client import SirClient
from tests.conftest import ROOT, sir_engine

T = Tokens.parse
BATCH = "/v1/partner/actions/batch"
MiB = 1024 * 1024


async def _keys(db, box, partner_id):
    async with db.begin() as conn:
        return await issue_keys(
            conn, box, actor="test", partner_id=partner_id, environment="sandbox", name="e2e"
        )


async def _raw_post(base: str, keys, path: str, body: bytes) -> tuple[int, Any]:
    timestamp = str(int(time.time()))
    headers = {
        "X-Partner-Key": keys.secret_key,
        "X-Timestamp": timestamp,
        "X-Signature": sign_request(keys.hmac_secret, timestamp, "POST", path, body),
        "Content-Type": "application/json",
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + path, data=body, headers=headers) as response,
    ):
        return response.status, loads(await response.read())


def _item(key: str, user: str, amount: str = "2", **extra: Any) -> dict[str, Any]:
    return {
        "idempotencyKey": key,
        "actionType": "PURCHASE",
        "amount": amount,
        "currency": "USD",
        "stakeholders": [{"stakeholderTypeCode": "CUSTOMER", "partnerUserId": user}],
        **extra,
    }


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # Its own session (process group): SIGKILL must reach Dramatiq's forked worker process too.
    with log.open("ab") as sink:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ops.cli",
                "worker",
                "--queues",
                "distribution",
                "--processes",
                "1",
                "--threads",
                "4",
            ],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is not None:
        return
    # Dramatiq's main process forwards SIGTERM to its workers and waits for them; signalling
    # the whole group at once makes a worker see two and hard-stop.
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)


async def _until_completed(
    sir: SirClient, batch_id: str, log: Path, within: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        # Slow enough for the default tier's rate limit.
        await asyncio.sleep(2)
        body = await sir.request("GET", f"/v1/partner/actions/batches/{batch_id}")
        if body["status"] == "COMPLETED":
            return body
    raise AssertionError(
        f"batch {batch_id} not COMPLETED within {within}s: {body['status']}\n"
        + log.read_text()[-3000:]
    )


async def _rows_per_key(db, partner_id: str) -> dict[str, int]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(actions.c.idempotency_key, func.count())
            .where(actions.c.partner_id == partner_id)
            .group_by(actions.c.idempotency_key)
        )
        return dict(rows.all())


async def test_routes_and_body_limits(db, box, make_partner, front):
    """8 MiB on /actions/batch only; the batch routes are not swallowed by /actions/{id}."""
    base = front()
    partner = await make_partner(funding="100")
    keys = await _keys(db, box, partner.partner_id)
    one = dumps({"actions": [_item("size-1", "u1")]}).encode()
    padding = b" " * (2 * MiB)  # JSON white space: a 2 MiB body that is still one small batch

    status, body = await _raw_post(base, keys, BATCH, one + padding)
    assert status == 202, body
    assert (body["accepted"], body["rejected"]) == (1, [])
    batch_id = body["batchId"]
    status, body = await _raw_post(
        base, keys, "/v1/partner/actions/submit", dumps(_item("size-2", "u1")).encode() + padding
    )
    assert (status, body["error"]["code"]) == (413, "PAYLOAD_TOO_LARGE")
    status, body = await _raw_post(base, keys, BATCH, one + b" " * (8 * MiB))
    assert (status, body["error"]["code"]) == (413, "PAYLOAD_TOO_LARGE")

    async with SirClient(base, keys.secret_key, keys.hmac_secret) as sir:
        pending = await sir.request("GET", f"/v1/partner/actions/batches/{batch_id}")
        assert (pending["batchId"], pending["total"]) == (batch_id, 1)
        assert pending["results"] == [{"index": 0, "idempotencyKey": "size-1", "status": "PENDING"}]
        # GET /actions/batch is the action-by-id route: an action named "batch" does not exist.
        missing = await sir.request_raw("GET", BATCH)
        assert (missing.status, missing.body["error"]["code"]) == (404, "NOT_FOUND")
        unknown = await sir.request_raw("GET", "/v1/partner/actions/batches/" + "0" * 24)
        assert (unknown.status, unknown.body["error"]["code"]) == (404, "NOT_FOUND")
        listed = await sir.request("GET", "/v1/partner/actions")
        assert listed["data"] == []  # accepted, not applied: only a worker applies

    for envelope, problem in (
        ({"actions": []}, "actions"),
        ({"actions": [_item(f"k{i}", "u") for i in range(1001)]}, "actions"),
        ({}, "actions"),
        ({"actions": [_item("k", "u")], "extra": 1}, "extra"),
    ):
        status, body = await _raw_post(base, keys, BATCH, dumps(envelope).encode())
        assert (status, body["error"]["code"]) == (422, "VALIDATION_FAILED"), body
        assert problem in body["error"]["details"]["fields"]

    # The batch accepted above is processed by a worker (here: none runs), so apply it now
    # to leave the session's ledger consistent with what was accepted.
    from engine.batches import process_batch

    await process_batch(db, batch_id)


async def test_batch_through_a_worker(services, db, box, make_partner, front, tmp_path):
    base = front()
    partner = await make_partner(funding="100000")
    keys = await _keys(db, box, partner.partner_id)
    items: list[Any] = []
    expected_tokens = Decimal(0)
    for i in range(300):
        if i % 37 == 5:  # invalid: rejected up front with field errors
            items.append({**_item(f"bad-{i}", "u1"), "amount": -1, "currency": "usd"})
        elif i % 29 == 3:  # valid, but the user is unknown: fails in processing
            items.append(_item(f"ghost-{i}", f"ghost_{i}", autoCreateUsers=False))
        else:
            amount = f"{1 + i % 7}.5"
            items.append(_item(f"ok-{i}", f"user_{i % 25}", amount))
            expected_tokens += Decimal(amount)
    items.append(_item("ok-0", "user_0", "1.5"))  # index 300 repeats key ok-0: refused up front
    items.append(_item("nul-1", "user_1", metadata={"note": "a\x00b"}))  # 301: NUL, this item only
    items.append("not an object")  # 302
    invalid = {i for i in range(300) if i % 37 == 5} | {300, 301, 302}
    ghosts = {i for i in range(300) if i % 29 == 3 and i not in invalid}
    fine = set(range(300)) - invalid - ghosts

    status, body = await _raw_post(base, keys, BATCH, dumps({"actions": items}).encode())
    assert status == 202, body
    assert body["accepted"] == len(items) - len(invalid)
    assert [r["index"] for r in body["rejected"]] == sorted(invalid)
    first = body["rejected"][0]["error"]
    assert first["code"] == "VALIDATION_FAILED" and first["name"] == "ValidationError"
    assert {"amount", "currency"} <= set(first["details"]["fields"])
    rejected = {r["index"]: r["error"] for r in body["rejected"]}
    assert rejected[300]["details"]["fields"] == {
        "idempotencyKey": ["repeats the idempotencyKey of item 0 of this batch"]
    }
    assert rejected[301]["details"]["fields"] == {
        "metadata.note": ["must not contain NUL characters"]
    }
    assert rejected[302]["code"] == "VALIDATION_FAILED"

    log = tmp_path / "worker.log"
    worker = _start_worker(services.env(), log)
    try:
        async with SirClient(base, keys.secret_key, keys.hmac_secret) as sir:
            done = await _until_completed(sir, body["batchId"], log)
            balance = await sir.get_balance("user_3")
    finally:
        _stop_worker(worker)

    assert (done["total"], done["succeeded"], done["failed"]) == (
        len(fine) + len(ghosts),
        len(fine),
        len(ghosts),
    )
    results = {r["index"]: r for r in done["results"]}
    assert set(results) == fine | ghosts
    assert all(results[i]["status"] == "COMPLETED" and results[i]["actionId"] for i in fine)
    assert {results[i]["error"]["code"] for i in ghosts} == {"UNKNOWN_USER"}
    assert all(results[i]["status"] == "FAILED" for i in ghosts)
    async with db.connect() as conn:
        remaining = await pool_balance(conn, partner.scope, partner.pool_id)
    assert remaining == T("100000") - T(str(expected_tokens))
    user_3 = sum(Decimal(items[i]["amount"]) for i in fine if i % 25 == 3)
    assert balance["available"] == user_3
    assert await _rows_per_key(db, partner.partner_id) == {f"ok-{i}": 1 for i in fine}


async def test_a_killed_worker_loses_and_repeats_nothing(
    services, db, box, make_partner, front, tmp_path
):
    base = front()
    partner = await make_partner(funding="100000")
    keys = await _keys(db, box, partner.partner_id)
    items = [_item(f"kill-{i}", f"user_{i % 50}", "1") for i in range(1000)]
    status, body = await _raw_post(base, keys, BATCH, dumps({"actions": items}).encode())
    assert (status, body["accepted"]) == (202, 1000), body
    batch_id = body["batchId"]

    async def completed_items() -> int:
        async with db.connect() as conn:
            return (
                await conn.execute(
                    select(func.count()).where(
                        action_batch_items.c.batch_id == batch_id,
                        action_batch_items.c.status == "COMPLETED",
                    )
                )
            ).scalar_one()

    # Given: a worker that has completed some items of the batch...
    # (A resume delay of 0 lets the tick below pick the batch up at once.)
    env = services.env(SIR_BATCH_RESUME_AFTER_SECONDS="0")
    log = tmp_path / "worker.log"
    worker = _start_worker(env, log)
    try:
        deadline = time.monotonic() + 120
        while await completed_items() == 0:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.02)
        # ...when it is killed outright (no shutdown, transaction in flight).
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        _stop_worker(worker)
    at_kill = await completed_items()
    assert 0 < at_kill < 1000, f"the worker finished before it could be killed ({at_kill})"

    # Then: a new worker, nudged by the resume tick, completes the rest.
    replacement = _start_worker(env, log)
    try:
        await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-c",
                "from workers.batch_actors import resume_batches; resume_batches.send()",
            ],
            env=env,
            cwd=ROOT,
            check=True,
            timeout=60,
        )
        async with SirClient(base, keys.secret_key, keys.hmac_secret) as sir:
            done = await _until_completed(sir, batch_id, log)
    finally:
        _stop_worker(replacement)

    assert (done["total"], done["succeeded"], done["failed"]) == (1000, 1000, 0)
    assert {r["status"] for r in done["results"]} == {"COMPLETED"}
    assert await _rows_per_key(db, partner.partner_id) == {f"kill-{i}": 1 for i in range(1000)}
    async with db.connect() as conn:
        assert await pool_balance(conn, partner.scope, partner.pool_id) == T("99000")
        linked = (
            await conn.execute(select(func.count()).where(actions.c.batch_id == batch_id))
        ).scalar_one()
    assert linked == 1000
    verdict = sir_engine("ledger", "verify", env=services.env())
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
