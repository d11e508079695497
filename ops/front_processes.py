"""`sir-engine serve --processes N`: N front processes sharing one port (SO_REUSEPORT).

The parent only supervises. It starts N `serve` children bound with `reuse_port`, so the kernel
spreads connections across them; forwards SIGTERM and SIGINT to them; and exits when they have.
It restarts nothing: if one child dies on its own, the parent stops the others and exits
non-zero, so the service manager (systemd `Restart=`, a container runtime) restarts the whole
group and the failure is visible, never hidden behind a silent respawn.

Metrics: the children run in Prometheus multiprocess mode over one private directory, so a
scrape of `/metrics`, whichever child answers it, reports every child's counters summed.

Each child is in its own process group (a terminal's Ctrl-C reaches only the parent, which
forwards it once) and, on Linux, asks the kernel for SIGTERM when the parent dies, so even a
SIGKILLed parent leaves no front running.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

log = logging.getLogger("sir.serve")

# aiohttp's shutdown_timeout (10 s, ops/cli.py) plus slack before a child is killed.
STOP_GRACE_SECONDS = 15.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def child_command(host: str, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ops.cli",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--reuse-port",
        "--processes",
        "1",
    ]


def supervise(processes: int, host: str, port: int) -> int:
    """Run `processes` front children on host:port until a signal or a child's exit.

    Returns 0 when every child stopped cleanly after a forwarded signal, 1 when a child exited
    on its own (the others are then stopped too)."""
    metrics_dir = tempfile.mkdtemp(prefix="sir-front-metrics-")
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    children: list[subprocess.Popen[bytes]] = []
    stopping: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        stopping.append(signum)
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    failed = False
    try:
        for _ in range(processes):
            if stopping:  # a signal while starting: start no more
                break
            children.append(
                subprocess.Popen(  # noqa: S603 - our own CLI
                    child_command(host, port),
                    env=env,
                    process_group=0,
                    preexec_fn=_die_with_parent,  # noqa: PLW1509 - single-threaded parent
                )
            )
        pids = " ".join(str(child.pid) for child in children)
        print(
            f"sir-engine serve: {processes} front processes on {host}:{port} (pids {pids})",
            file=sys.stderr,
            flush=True,
        )
        while not stopping:
            exited = [child for child in children if child.poll() is not None]
            if exited:
                child = exited[0]
                failed = True
                print(
                    f"sir-engine serve: front process {child.pid} exited with status "
                    f"{child.returncode}; stopping the others (nothing is restarted here)",
                    file=sys.stderr,
                    flush=True,
                )
                forward(signal.SIGTERM, None)
                break
            time.sleep(0.2)
        _wait_all(children)
    finally:
        for child in children:  # a failure while starting them, or an exception above
            if child.poll() is None:
                child.kill()
                child.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    clean = all(child.returncode in (0, -signal.SIGTERM, -signal.SIGINT) for child in children)
    return 1 if failed or not clean else 0


def _wait_all(children: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("front process %d did not stop in time; killing it", child.pid)
            child.kill()
            child.wait()
