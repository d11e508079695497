"""The short seeded chaos run (`python -m ops.chaos`), as CI runs it: two fronts, two worker
groups, the scheduler and a flaky webhook receiver on private PostgreSQL and Redis; a worker and
a front killed with SIGKILL, Redis restarted empty and PostgreSQL restarted under a mixed load.
Nothing lost, nothing applied twice, no invariant broken, and no process left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from ops.chaos.faults import KINDS
from tests.conftest import ROOT

SEED = 7
LOAD_SECONDS = 60


def _left_behind(marker: str) -> list[str]:
    """Processes that still refer to the run's directory (data dirs, sockets, DATABASE_URL)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            text = " ".join(process.info["cmdline"] or []) + " " + (process.info["cwd"] or "")
            if marker not in text:
                text += " ".join(process.environ().values())
        except psutil.Error:
            continue
        if marker in text and process.pid != psutil.Process().pid:
            found.append(f"{process.pid} {' '.join(process.info['cmdline'] or [])[:120]}")
    return found


@pytest.mark.timeout(420)
def test_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "chaos"
    summary_path = tmp_path / "summary.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.chaos",
            "--seed",
            str(SEED),
            "--duration",
            str(LOAD_SECONDS),
            "--workdir",
            str(workdir),
            "--json",
            str(summary_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["lost"] == [] and summary["duplicated"] == [] and summary["broken"] == []
    # Every fault kind was injected, and every injection took (a restarted front listened).
    assert set(summary["faults"]) == set(KINDS) and summary["faultsFailed"] == []
    operations = summary["operations"]
    for kind in ("submit", "submit (duplicate key, concurrent)", "reversal", "batch", "new user"):
        assert operations.get(kind, 0) > 0, operations
    facts = summary["facts"]
    assert facts["deliveries verified"] >= facts["deliveries to verify"] > 0
    assert facts["dead letters"] == 1  # the injected poison, and only it
    assert "verdict" in run.stdout and "invariant breaks" in run.stdout
    assert _left_behind(str(workdir)) == []
