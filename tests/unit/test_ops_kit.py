"""The operator kit in ops/ is checked by the tools that will run it: promtool for the alert rules
(syntax and unit tests) and the dashboard's queries, systemd-analyze for the units, and the
engine's own CLI parser for every command the units and the compose file start."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from ops.cli import build_parser
from ops.grafana import build as dashboard
from tests.conftest import ROOT
from workers.broker import QUEUES

OPS = ROOT / "ops"
RULES = OPS / "alerts" / "sir-engine.rules.yml"
PROCESS_COMMANDS = {"serve", "worker", "scheduler", "migrate"}


def _tool(name: str) -> str:
    found = shutil.which(name)
    # Never skipped: .ci/run installs them (Debian's prometheus and systemd packages).
    assert found, f"{name} not found: install it (.ci/run does: apt-get install prometheus systemd)"
    return found


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=60, check=False)


def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    promtool = _tool("promtool")
    checked = _run(promtool, "check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 14 rules found" in checked.stdout
    tested = _run(promtool, "test", "rules", "sir-engine.test.yml", cwd=OPS / "alerts")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout + tested.stderr


def test_the_alert_unit_tests_cover_the_required_alerts():
    tests = yaml.safe_load((OPS / "alerts" / "sir-engine.test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert {
        "SirQueueLag",
        "SirDeadLetters",
        "SirOutboxLag",
        "SirWebhookFailureRate",
        "SirPoolBelowThreshold",
        "SirHigh5xxRate",
        "SirDatabaseErrors",
        "SirTicksStale",
    } <= fired


def test_the_example_prometheus_config_is_valid():
    promtool = _tool("promtool")
    checked = _run(promtool, "check", "config", "prometheus.yml", cwd=OPS / "alerts")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    jobs = {
        job["job_name"]
        for job in yaml.safe_load((OPS / "alerts" / "prometheus.yml").read_text())["scrape_configs"]
    }
    assert jobs == {"sir-front", "sir-worker"}


def test_the_committed_dashboard_is_what_the_builder_makes():
    assert (OPS / "grafana" / "sir-engine.json").read_text() == dashboard.render(), (
        "run `python -m ops.grafana.build`"
    )


def test_every_dashboard_query_is_valid_promql(tmp_path):
    promtool = _tool("promtool")
    board = json.loads((OPS / "grafana" / "sir-engine.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 25
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    # Each query as a recording rule, so promtool parses it ($__rate_interval is Grafana's).
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:q{i}", "expr": expr.replace("$__rate_interval", "5m")}
                    for i, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = _run(promtool, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- processes: systemd units and the compose file ---------------------------------------------


def _cli_accepts(argv: list[str]) -> None:
    """The real parser accepts the command (argparse exits on anything it does not know)."""
    args = build_parser().parse_args(argv)
    assert args.command in PROCESS_COMMANDS, argv


def _exec_start(unit: Path) -> list[str]:
    lines = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, unit
    return shlex.split(lines[0].removeprefix("ExecStart="))


def test_systemd_units_start_real_commands_and_pass_systemd_analyze(tmp_path):
    analyze = _tool("systemd-analyze")
    units = sorted((OPS / "systemd").glob("*.service"))
    names = {unit.name for unit in units}
    assert names == {
        "sir-engine-migrate.service",
        "sir-engine-serve.service",
        "sir-engine-scheduler.service",
        "sir-engine-worker-distribution.service",
        "sir-engine-worker-webhooks.service",
        "sir-engine-worker-background.service",
        "sir-engine-worker-orders.service",
    }
    started: set[str] = set()
    queues: list[str] = []
    for unit in units:
        argv = _exec_start(unit)
        assert argv[0] == "/opt/sir-engine/venv/bin/sir-engine"
        _cli_accepts(argv[1:])
        started.add(argv[1])
        if argv[1] == "worker":
            queues += build_parser().parse_args(argv[1:]).queues
    assert started == PROCESS_COMMANDS
    assert sorted(queues) == sorted(QUEUES)  # every queue has exactly one worker group
    assert "Type=oneshot" in (OPS / "systemd" / "sir-engine-migrate.service").read_text()
    # systemd's own verifier, with the binary pointed at this checkout's real console script.
    sir_engine = str(Path(sys.executable).parent / "sir-engine")
    assert Path(sir_engine).exists(), sir_engine
    for unit in [*units, OPS / "systemd" / "sir-engine.target"]:
        text = unit.read_text().replace("/opt/sir-engine/venv/bin/sir-engine", sir_engine)
        text = text.replace("EnvironmentFile=/etc/", "EnvironmentFile=-/etc/")
        (tmp_path / unit.name).write_text(text)
    verified = _run(analyze, "verify", *sorted(str(p) for p in tmp_path.iterdir()))
    problems = [
        line
        for line in (verified.stdout + verified.stderr).splitlines()
        if re.search(r"Unknown (key|section)|Failed|not executable|Invalid|bad", line)
    ]
    assert problems == [], verified.stdout + verified.stderr


def _compose() -> dict:
    return yaml.safe_load((OPS / "docker" / "compose.yaml").read_text())


def test_the_compose_file_runs_every_process_on_postgres_and_redis():
    services = _compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    started: set[str] = set()
    queues: list[str] = []
    for name, service in services.items():
        if "build" not in service:
            continue
        assert service["build"]["dockerfile"] == "ops/docker/Dockerfile"
        assert (OPS / "docker" / service["build"]["context"] / "pyproject.toml").exists()
        command = service["command"]
        _cli_accepts(command)
        started.add(command[0])
        env = service["environment"]
        assert (
            env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"]
        )
        assert env["REDIS_URL"].startswith("redis://redis:")
        if command[0] == "worker":
            queues += build_parser().parse_args(command).queues
        if name != "migrate":
            # Nothing starts before the migrations have finished.
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert started == PROCESS_COMMANDS
    assert sorted(queues) == sorted(QUEUES)  # every queue has exactly one worker group
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_dockerfile_copies_what_exists_and_runs_the_cli():
    text = (OPS / "docker" / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
    assert 'ENTRYPOINT ["sir-engine"]' in text
    assert "-c constraints.txt" in text
