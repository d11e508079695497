"""Faults under load: a worker killed with SIGKILL, Redis restarted (losing everything), and
PostgreSQL restarted, all while signed submits arrive. Afterwards every action is applied exactly
once, every action.completed event has reached the receiver, and `ledger verify` is clean.

Private servers (tests/support/servers.py), so the machine's own services are never touched.
The client behaves as the contract asks: a retry keeps its idempotency key and is signed afresh.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
from pathlib import Path

import aiohttp
from aiohttp import web
from sqlalchemy import text

from engine.credentials import issue_keys
from engine.crypto import SecretBox
from engine.db import create_engine
from engine.money import Tokens
from engine.partners import create_partner
from engine.pools import allocate, create_pool
from engine.scope import Scope
from engine.settings import parse_master_key
from engine.wire import loads
from ops.private_servers import PrivatePostgres, PrivateRedis
from ops.processes import kill_group, sir_engine_argv, start_group, stop_group
from sir_client import SirClient
from tests.conftest import OPERATOR_TOKEN, free_port, sir_engine, wait_http_ok

ACTIONS = 240
CLIENTS = 8
RETRYABLE = {503, 429, 401}  # 401 only as REPLAYED_REQUEST after Redis lost its memory (checked)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # Its own process group: Dramatiq forks worker processes, and a signal to the group reaches
    # them too (a SIGKILL to the parent alone would leave them running as orphans).
    return start_group(sir_engine_argv(*args), env, log)


async def _setup(database_url: str, master_key: str) -> tuple[Scope, str, str]:
    db = create_engine(database_url)
    box = SecretBox(parse_master_key(master_key))
    async with db.begin() as conn:
        partner = await create_partner(
            conn,
            actor="test",
            name="Fault partner",
            status="ACTIVE",
            action_types=("PURCHASE",),
            stakeholder_types=("CUSTOMER",),
        )
        await conn.execute(
            text("UPDATE partners SET rate_limit_override = CAST(:o AS jsonb) WHERE id = :id"),
            {"o": json.dumps({"perHour": 1_000_000, "perMinute": 1_000_000}), "id": partner["id"]},
        )
        scope = Scope(partner["id"], "sandbox")
        pool = await create_pool(conn, scope, actor="test", name="main")
        await allocate(
            conn, scope, actor="test", pool_id=pool["id"], amount=Tokens.parse("1000000")
        )
        keys = await issue_keys(
            conn, box, actor="test", partner_id=partner["id"], environment="sandbox", name="k"
        )
    await db.dispose()
    return scope, keys.secret_key, keys.hmac_secret


async def test_faults_lose_nothing_and_double_count_nothing(tmp_path):
    pg = PrivatePostgres(tmp_path / "pg")
    rd = PrivateRedis(tmp_path / "redis")
    rd.start()
    master_key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    env = {
        **os.environ,
        "DATABASE_URL": pg.url,
        "REDIS_URL": rd.url,
        "SIR_MASTER_KEY": master_key,
        "SIR_OPERATOR_TOKENS": OPERATOR_TOKEN,
        "SIR_WEBHOOK_ALLOW_PRIVATE": "true",
        "SIR_WORKER_METRICS_PORT": "0",
        "SIR_OUTBOX_RELAY_SECONDS": "1",
        "SIR_WEBHOOK_PICKUP_SECONDS": "1",
        "SIR_WEBHOOK_LEASE_SECONDS": "3",
        "SIR_WEBHOOK_RETRY_SCALE": "0.05",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    processes: dict[str, subprocess.Popen[bytes] | None] = {}
    received: dict[str, set[str]] = {}

    async def hook(request: web.Request) -> web.Response:
        event = loads(await request.read())
        received.setdefault(event["type"], set()).add(event["data"].get("actionId", event["id"]))
        return web.Response(text="ok")

    receiver_app = web.Application()
    receiver_app.router.add_post("/hook", hook)
    runner = web.AppRunner(receiver_app)
    await runner.setup()
    receiver_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", receiver_port).start()
    try:
        assert sir_engine("migrate", env=env).returncode == 0
        scope, secret_key, hmac_secret = await _setup(pg.url, master_key)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        processes["front"] = _start(["serve", "--port", str(port)], env, logs / "front.log")
        processes["worker"] = _start(
            ["worker", "--processes", "1", "--threads", "4"], env, logs / "worker.log"
        )
        processes["scheduler"] = _start(["scheduler"], env, logs / "scheduler.log")
        wait_http_ok(f"{base}/readyz", processes["front"])

        applied: dict[str, str] = {}
        refusals: list[tuple[int, str]] = []
        async with SirClient(base, secret_key, hmac_secret) as sir:
            await sir.request(
                "POST",
                "/v1/partner/webhooks",
                {
                    "url": f"http://127.0.0.1:{receiver_port}/hook",
                    "eventTypes": ["action.completed"],
                },
            )

            async def submit(key: str) -> None:
                body = {
                    "idempotencyKey": key,
                    "actionType": "PURCHASE",
                    "amount": "2.5",
                    "stakeholders": [
                        {"stakeholderTypeCode": "CUSTOMER", "partnerUserId": f"u{hash(key) % 37}"}
                    ],
                }
                for _ in range(400):  # bounded: ~60 s of retries at most
                    try:
                        response = await sir.request_raw("POST", "/v1/partner/actions/submit", body)
                    except (TimeoutError, aiohttp.ClientError):
                        await asyncio.sleep(0.15)
                        continue
                    code = (
                        response.body.get("error", {}).get("code")
                        if isinstance(response.body, dict)
                        else None
                    )
                    if response.status == 200:
                        applied[key] = response.body["actionId"]
                        return
                    if response.status == 409 and code == "IDEMPOTENT":
                        applied[key] = response.body["error"]["details"]["original"]["actionId"]
                        return
                    if response.status in RETRYABLE and (
                        response.status != 401 or code == "REPLAYED_REQUEST"
                    ):
                        refusals.append((response.status, code or ""))
                        await asyncio.sleep(0.15)
                        continue
                    raise AssertionError(f"{key}: unexpected {response.status} {response.body}")
                raise AssertionError(f"{key}: never applied")

            async def clients() -> None:
                keys = [f"fault-{i}" for i in range(ACTIONS)]
                queue: asyncio.Queue[str] = asyncio.Queue()
                for key in keys:
                    queue.put_nowait(key)

                async def client() -> None:
                    while not queue.empty():
                        await submit(queue.get_nowait())

                await asyncio.gather(*(client() for _ in range(CLIENTS)))

            async def faults() -> None:
                await asyncio.sleep(1.5)
                kill_group(processes["worker"])  # type: ignore[arg-type]
                processes["worker"] = _start(
                    ["worker", "--processes", "1", "--threads", "4"], env, logs / "worker.log"
                )
                await asyncio.sleep(1.5)
                rd.restart()  # Redis loses every queued message, rate-limit and replay record
                await asyncio.sleep(1.5)
                pg.restart()  # connections and transactions in flight are cut

            await asyncio.wait_for(asyncio.gather(clients(), faults()), timeout=180)

        # Every action applied exactly once...
        assert len(applied) == ACTIONS
        db = create_engine(pg.url)
        async with db.connect() as conn:
            rows = (
                await conn.execute(
                    text("SELECT idempotency_key, id FROM actions WHERE partner_id = :partner_id"),
                    scope.params,
                )
            ).all()
        await db.dispose()
        assert len(rows) == ACTIONS and dict(rows) == applied
        # ...and every action's event delivered at least once, despite the lost queue.
        for _ in range(600):  # bounded: up to 60 s
            if received.get("action.completed", set()) >= set(applied.values()):
                break
            await asyncio.sleep(0.1)
        missing = set(applied.values()) - received.get("action.completed", set())
        assert not missing, (
            f"{len(missing)} events never delivered; worker log tail:\n"
            + (logs / "worker.log").read_text()[-3000:]
        )
        verdict = sir_engine("ledger", "verify", env=env)
        assert verdict.returncode == 0, verdict.stdout
    finally:
        for process in processes.values():
            stop_group(process)
        await runner.cleanup()
        rd.kill()
        pg.stop()
