"""Child processes that can be killed as a whole: each in its own process group (session).

Dramatiq's `worker` command forks worker processes, and a signal to the parent alone would leave
them running as orphans; a signal to the group reaches every process it started. On Linux each
child also asks the kernel to SIGKILL it if its parent dies, so a harness killed with SIGKILL does
not leave a front or a scheduler behind. Used by the chaos harness, the soak and the fault tests.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port free on loopback now (another process may take it later; callers retry)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the harness's own finally-clause still stops its children


def start_group(
    argv: Sequence[str], env: dict[str, str], log: Path | None, *, cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    """Start `argv` as the leader of a new session; its output is appended to `log`."""
    sink = log.open("ab") if log is not None else None
    try:
        return subprocess.Popen(  # noqa: S603 - our own argv, never user input
            list(argv),
            env=env,
            cwd=cwd,
            stdout=sink if sink is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )
    finally:
        if sink is not None:
            sink.close()  # the child holds its own descriptor


def sir_engine_argv(*args: str) -> list[str]:
    """The console script as `python -m ops.cli` (the same entry point, this interpreter)."""
    return [sys.executable, "-m", "ops.cli", *args]


def kill_group(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGKILL the process and everything in its group, and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # pragma: no cover - a SIGKILLed process always exits
        pass


def stop_group(process: subprocess.Popen[bytes] | None, grace: float = 30) -> None:
    """SIGTERM the group and let it finish; SIGKILL whatever is left after `grace` seconds.
    The group is killed even when its leader exited first (its forked children may not have)."""
    if process is None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        pass
    kill_group(process)


def stop_groups(processes: Sequence[subprocess.Popen[bytes]], grace: float = 20) -> None:
    """`stop_group` for several at once: SIGTERM to every group first, then one shared `grace`
    period, then SIGKILL to every group (so five processes take 20 s at most, not 100)."""
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        kill_group(process)
