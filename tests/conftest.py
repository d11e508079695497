"""Shared fixtures: real PostgreSQL and Redis, a fresh migrated database per test session.

DATABASE_URL / REDIS_URL name the servers when set (this machine and CI: the local services);
otherwise the embedded ones start, as on a fresh machine. The database is created for this
session and dropped after it; Redis uses database SIR_TEST_REDIS_DB (default 15), flushed first.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
import redis
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.crypto import SecretBox
from engine.db import create_engine
from engine.money import Tokens
from engine.partners import create_partner
from engine.pools import allocate, create_pool
from engine.scope import Scope
from engine.settings import Settings, load_settings
from ops.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
OPERATOR_TOKEN = "op_test_" + "0" * 40


@dataclass(frozen=True)
class Services:
    database_url: str
    redis_url: str
    master_key: str  # as SIR_MASTER_KEY carries it

    def env(self, **extra: str) -> dict[str, str]:
        """A process environment pointing at these services (for CLI and server subprocesses)."""
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            SIR_MASTER_KEY=self.master_key,
            SIR_OPERATOR_TOKENS=OPERATOR_TOKEN,
            SIR_WEBHOOK_ALLOW_PRIVATE="true",
            # Worker metrics servers off unless a test asks (they would share port 9191).
            SIR_WORKER_METRICS_PORT="0",
        )
        env.update(extra)
        return env


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin_sql(server_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(server_url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _drop_database(server_url: str, name: str) -> None:
    """DROP the session's database, retried on a fresh connection if the connection is lost
    under it. Seen intermittently: the connection closed mid-statement with nothing in
    PostgreSQL's log, so the close came from this process (suspected: the finaliser of a
    connection left by an event loop a test closed). The drop is idempotent."""
    for attempt in range(3):
        try:
            asyncio.run(_admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            return
        except (asyncpg.exceptions.ConnectionDoesNotExistError, ConnectionError):
            if attempt == 2:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    server_db = os.environ.get("DATABASE_URL")
    server_redis = os.environ.get("REDIS_URL")
    embedded = None
    if not server_db or not server_redis:
        from ops import embedded as emb

        # Not under pytest's basetemp: pytest keeps /tmp/pytest-of-<user> at mode 0700, and as
        # root pgserver runs PostgreSQL as its own user, which must reach the data folder.
        datadir = Path(tempfile.mkdtemp(prefix="sir-test-embedded-"))
        datadir.chmod(0o755)
        embedded = emb.start(datadir, redis_port=0)
        server_db = server_db or embedded.database_url
        server_redis = server_redis or embedded.redis_url
    name = f"sir_test_{secrets.token_hex(4)}"
    asyncio.run(_admin_sql(server_db, f'CREATE DATABASE "{name}"'))
    database_url = _with_database(server_db, name)
    upgrade(database_url)
    redis_db = int(os.environ.get("SIR_TEST_REDIS_DB", "15"))
    base = (
        server_redis.rsplit("/", 1)[0] if server_redis.count("/") > 2 else server_redis.rstrip("/")
    )
    redis_url = f"{base}/{redis_db}"
    redis.Redis.from_url(redis_url).flushdb()
    session = Services(
        database_url, redis_url, base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    )
    try:
        yield session
        # Every test's writes together must leave a whole ledger: the real `ledger verify`
        # over the session's database, after the last test. A broken ledger fails the run.
        verdict = sir_engine("ledger", "verify", env=session.env())
        print(f"\nsession ledger: {verdict.stdout.strip()}")
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    finally:
        if embedded is None:
            _drop_database(server_db, name)
        else:
            # The private server and its folder go as a whole; no DROP needed (the server was
            # seen already stopping at this point, failing the drop with a refused connection).
            embedded.stop()
            shutil.rmtree(datadir, ignore_errors=True)


@pytest.fixture(scope="session")
def settings(services: Services) -> Settings:
    return load_settings(services.env())


@pytest.fixture(scope="session")
def box(settings: Settings) -> SecretBox:
    return SecretBox(settings.master_key)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def db(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings.database_url)
    yield engine
    await engine.dispose()


@dataclass(frozen=True)
class FundedPartner:
    partner_id: str
    scope: Scope
    pool_id: str


MakePartner = Callable[..., Awaitable[FundedPartner]]


@pytest_asyncio.fixture(loop_scope="session")
async def make_partner(db: AsyncEngine) -> MakePartner:
    """Factory: a fresh ACTIVE partner with a default pool in `environment`, funded with `funding`."""

    async def make(
        *, environment: str = "sandbox", funding: str = "1000", status: str = "ACTIVE", **pool: Any
    ) -> FundedPartner:
        async with db.begin() as conn:
            partner = await create_partner(
                conn,
                actor="test",
                name=f"Test partner {secrets.token_hex(3)}",
                status=status,
                action_types=("PURCHASE", "DONATION"),
                stakeholder_types=("CUSTOMER", "DONOR", "ORGANIZATION", "REFERRER"),
            )
            scope = Scope(partner["id"], environment)  # type: ignore[arg-type]
            created = await create_pool(conn, scope, actor="test", name="main", **pool)
            if Tokens.parse(funding):
                await allocate(
                    conn, scope, actor="test", pool_id=created["id"], amount=Tokens.parse(funding)
                )
        return FundedPartner(partner["id"], scope, created["id"])

    return make


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_http_ok(
    url: str, process: subprocess.Popen[bytes] | None = None, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


def sir_engine(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real console script (as `python -m ops.cli`, the same entry point)."""
    return subprocess.run(
        [sys.executable, "-m", "ops.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def front(services: Services) -> Iterator[Callable[..., str]]:
    """Factory: start `sir-engine serve` as a real process; returns its base URL. Stopped after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**extra_env: str) -> str:
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "serve", "--port", str(port)],
            env=services.env(**extra_env),
            cwd=ROOT,
        )
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        wait_http_ok(f"{base}/healthz", process)
        return base

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
