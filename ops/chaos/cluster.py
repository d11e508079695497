"""A whole private deployment on loopback: PostgreSQL, Redis, fronts, workers and the scheduler.

Used by the chaos harness (which kills and restarts its parts) and the soak (which watches their
memory). Every process is a `sir-engine` command started in its own process group
(`ops.processes`), so killing a worker group reaches Dramatiq's forked processes too, and
`stop()` leaves nothing behind. The partner it creates has a key pair and a funded pool, and a
rate limit far above the load, so that refusals come from faults and never from the limiter.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from sqlalchemy import text

from engine.credentials import issue_keys
from engine.crypto import SecretBox
from engine.db import create_engine
from engine.money import Tokens
from engine.partners import create_partner
from engine.pools import allocate, create_pool
from engine.scope import Scope
from engine.settings import parse_master_key
from ops.private_servers import PrivatePostgres, PrivateRedis
from ops.processes import free_port, kill_group, sir_engine_argv, start_group, stop_groups

OPERATOR_TOKEN = "op_chaos_" + "0" * 40  # noqa: S105 - a loopback-only harness token
FUNDING = Tokens.parse("100000000")
ACTION_TYPES = ("PURCHASE", "DONATION")
STAKEHOLDER_TYPES = ("CUSTOMER", "REFERRER")


@dataclass(frozen=True)
class Tenant:
    """The partner the load runs as: its scope, key pair and funded pool."""

    scope: Scope
    secret_key: str
    hmac_secret: str
    pool_id: str


@dataclass
class Cluster:
    """The deployment's processes, by role. `fronts` share one port (SO_REUSEPORT)."""

    directory: Path
    fronts: int = 2
    workers: int = 2
    worker_threads: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    pg: PrivatePostgres | None = None
    redis: PrivateRedis | None = None
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    stopping: bool = False  # set by stop(): nothing starts after it, whatever thread asks
    # Held by a server restart (in a thread) and by stop(): stop waits for a restart in flight
    # rather than racing it, which could leave a server started after the stop.
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def logs(self) -> Path:
        return self.directory / "logs"

    # -- servers ---------------------------------------------------------------------------------

    def start_servers(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        # pgserver keeps a lock file under XDG_RUNTIME_DIR and writes it again at interpreter
        # exit: one shared directory, rather than a stray one left beside each run's.
        os.environ.setdefault(
            "XDG_RUNTIME_DIR", str(Path(tempfile.gettempdir()) / "sir-pgserver-runtime")
        )
        self.pg = PrivatePostgres(self.directory / "pg")
        self.redis = PrivateRedis(self.directory / "redis")
        self.redis.start()
        master_key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        self.env = {
            **os.environ,
            "DATABASE_URL": self.pg.url,
            "REDIS_URL": self.redis.url,
            "SIR_MASTER_KEY": master_key,
            "SIR_OPERATOR_TOKENS": OPERATOR_TOKEN,
            "SIR_WEBHOOK_ALLOW_PRIVATE": "true",  # the receiver is on loopback
            "SIR_WORKER_METRICS_PORT": "0",
            **self.extra_env,
        }
        migrated = subprocess.run(
            sir_engine_argv("migrate"),
            env=self.env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if migrated.returncode != 0:
            raise RuntimeError(f"migrate failed: {migrated.stderr[-2000:]}")

    async def create_tenant(self) -> Tenant:
        assert self.pg is not None
        db = create_engine(self.pg.url)
        box = SecretBox(parse_master_key(self.env["SIR_MASTER_KEY"]))
        try:
            async with db.begin() as conn:
                partner = await create_partner(
                    conn,
                    actor="chaos",
                    name="Chaos partner",
                    status="ACTIVE",
                    action_types=ACTION_TYPES,
                    stakeholder_types=STAKEHOLDER_TYPES,
                )
                await conn.execute(
                    text(
                        "UPDATE partners SET rate_limit_override = CAST(:o AS jsonb) WHERE id = :id"
                    ),
                    {
                        "o": json.dumps({"perHour": 100_000_000, "perMinute": 10_000_000}),
                        "id": partner["id"],
                    },
                )
                scope = Scope(partner["id"], "sandbox")
                pool = await create_pool(conn, scope, actor="chaos", name="main")
                await allocate(conn, scope, actor="chaos", pool_id=pool["id"], amount=FUNDING)
                keys = await issue_keys(
                    conn,
                    box,
                    actor="chaos",
                    partner_id=partner["id"],
                    environment="sandbox",
                    name="chaos",
                )
        finally:
            await db.dispose()
        return Tenant(scope, keys.secret_key, keys.hmac_secret, pool["id"])

    # -- engine processes ------------------------------------------------------------------------

    def _start(self, name: str, *args: str) -> None:
        if self.stopping:
            return
        self.processes[name] = start_group(
            sir_engine_argv(*args), self.env, self.logs / f"{name.split('-')[0]}.log"
        )

    def start_front(self, index: int) -> None:
        self._start(f"front-{index}", "serve", "--port", str(self.port), "--reuse-port")

    def start_worker(self, index: int) -> None:
        self._start(
            f"worker-{index}",
            "worker",
            "--processes",
            "1",
            "--threads",
            str(self.worker_threads),
        )

    def start_engine(self) -> None:
        self.port = free_port()
        for index in range(self.fronts):
            self.start_front(index)
        for index in range(self.workers):
            self.start_worker(index)
        self._start("scheduler", "scheduler")
        self.wait_ready(timeout=60)
        for index in range(self.fronts):
            self.wait_listening(f"front-{index}", timeout=30)

    def wait_ready(self, timeout: float) -> None:
        """Until /readyz answers 200 (database and Redis reachable), bounded by `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.base_url}/readyz not ready within {timeout}s")

    def wait_listening(self, name: str, timeout: float) -> bool:
        """Until process `name` holds its listening socket (the fronts share the port, so an
        HTTP probe cannot tell which one answered). False if it did not within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            process = self.processes[name]
            if process.poll() is not None:
                return False
            try:
                connections = psutil.Process(process.pid).net_connections(kind="tcp")
            except psutil.Error:
                connections = []
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port
                for c in connections
            ):
                return True
            time.sleep(0.1)
        return False

    async def await_listening(self, name: str, timeout: float) -> bool:
        return await asyncio.to_thread(self.wait_listening, name, timeout)

    def restart_redis(self) -> None:
        with self._lock:
            if not self.stopping and self.redis is not None:
                self.redis.restart()

    def restart_postgres(self) -> None:
        with self._lock:
            if not self.stopping and self.pg is not None:
                self.pg.restart()

    def kill(self, name: str) -> None:
        kill_group(self.processes[name])

    def pids(self) -> dict[str, list[int]]:
        """Every process of the deployment by role (a worker group's forked processes too)."""
        found: dict[str, list[int]] = {}
        for name, process in self.processes.items():
            if process.poll() is not None:
                continue
            try:
                leader = psutil.Process(process.pid)
                found[name] = [process.pid] + [c.pid for c in leader.children(recursive=True)]
            except psutil.Error:
                continue
        if self.redis is not None:
            found["redis"] = self.redis.pids
        if self.pg is not None and (postmaster := self.pg.postmaster_pid()) is not None:
            try:
                found["postgres"] = [postmaster] + [
                    c.pid for c in psutil.Process(postmaster).children(recursive=True)
                ]
            except psutil.Error:
                pass
        return found

    def stop(self) -> None:
        """Stop everything: engine processes first (SIGTERM, then SIGKILL), then the servers.
        Bounded: the groups get 20 s together."""
        with self._lock:
            self.stopping = True
        stop_groups(list(self.processes.values()), grace=20)
        if self.redis is not None:
            self.redis.kill()
        if self.pg is not None:
            self.pg.stop()
