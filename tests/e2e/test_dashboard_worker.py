"""The dashboard's two ticks in a real Dramatiq worker process: the roll-up moves its watermark,
and the API-usage fold moves what the front put in Redis into PostgreSQL, exactly once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

import redis
from sqlalchemy import text

from engine.api_usage import FOLDING_KEY, PENDING_KEY, field
from tests.conftest import ROOT


async def test_worker_rolls_up_and_folds_usage(services, db, make_partner, tmp_path):
    partner = await make_partner()
    day = datetime.now(UTC).date().isoformat()
    client = redis.Redis.from_url(services.redis_url)
    # What the front's flusher writes (http_front.usage): HINCRBY on the pending hash.
    client.hincrby(PENDING_KEY, field(partner.partner_id, "sandbox", day, "partner:users", 200), 7)
    client.hincrby(PENDING_KEY, field(partner.partner_id, "sandbox", day, "partner:users", 429), 2)
    async with db.connect() as conn:
        before = (
            await conn.execute(text("SELECT updated_at FROM dashboard_rollup_state"))
        ).scalar_one()
    env = services.env()
    subprocess.run(  # the broker binds to REDIS_URL at import: enqueue from its own process
        [
            sys.executable,
            "-c",
            "from workers.dashboard_actors import fold_api_usage, roll_up_dashboards; "
            "roll_up_dashboards.send(); fold_api_usage.send(); fold_api_usage.send()",
        ],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=60,
    )
    log = tmp_path / "worker.log"
    with log.open("w") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "worker", "--processes", "1", "--threads", "2"]
            + ["--queues", "maintenance"],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            rows: dict[int, int] = {}
            updated = before
            while time.monotonic() < deadline:
                async with db.connect() as conn:
                    updated = (
                        await conn.execute(text("SELECT updated_at FROM dashboard_rollup_state"))
                    ).scalar_one()
                    rows = {
                        int(status): int(requests)
                        for status, requests in await conn.execute(
                            text(
                                "SELECT status, requests FROM api_usage_days "
                                "WHERE partner_id = :partner_id"
                            ),
                            {"partner_id": partner.partner_id},
                        )
                    }
                if updated > before and rows and not client.exists(PENDING_KEY, FOLDING_KEY):
                    break
                time.sleep(0.3)
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0
    assert updated > before, log.read_text()[-2000:]
    # Two folds ran (and the second found nothing): each count is there once.
    assert rows == {200: 7, 429: 2}, log.read_text()[-2000:]
    assert not client.exists(PENDING_KEY, FOLDING_KEY)
