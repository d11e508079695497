"""`python -m ops.bench.fronts [--seconds N] [--clients N] [--partners N]`: what a second front
process buys (ops/SCALING.md).

One run, on a fresh database (created and dropped as `ops.bench.run` does), the same client count
and duration for every phase:

A.  pgbench tpcb-like, prepared (the anchor every ratio uses);
F1. signed HTTP submits against `sir-engine serve --processes 1`, ONE partner (one hot pool row);
F2. the same against `serve --processes 2` (two fronts on one port, SO_REUSEPORT);
P1. `--processes 1`, the clients spread over N partners (N pools: the rows no longer collide);
P2. `--processes 2`, N partners.

Each engine phase is proved like `ops.bench.run`'s (every key answered 200 has exactly one action
row with the tokens answered, each pool fell by exactly their sum, the ledger verifies). CPU is
reported per request for the whole front (parent and children) and for the bench client. Results
go to `ops/bench/results/fronts-<UTC timestamp>Z.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.engine import make_url

from engine.crypto import SecretBox, generate_master_key
from engine.db import create_engine
from engine.settings import parse_master_key
from ops.bench import measure
from ops.bench.run import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    MAX_SECONDS,
    _clean_redis,
    free_port,
    log,
)
from ops.migrate import upgrade

RESULTS = Path(__file__).resolve().parent / "results"


def _tree_cpu(process: subprocess.Popen[bytes]) -> float:
    """CPU seconds of a front and its children (`serve --processes N`)."""
    total = measure.cpu_seconds(process.pid)
    try:
        for child in psutil.Process(process.pid).children(recursive=True):
            total += measure.cpu_seconds(child.pid)
    except psutil.NoSuchProcess:
        pass
    return total


def _db_connections(process: subprocess.Popen[bytes], port: int) -> int:
    """Open PostgreSQL connections of a front and its children (their SQLAlchemy pools)."""
    count = 0
    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        for member in tree:
            count += sum(
                1 for c in member.net_connections(kind="tcp") if c.raddr and c.raddr.port == port
            )
    except psutil.NoSuchProcess:
        pass
    return count


async def _sample_connections(
    process: subprocess.Popen[bytes], port: int, peak: list[int], stop: asyncio.Event
) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], _db_connections(process, port))
        try:
            await asyncio.wait_for(stop.wait(), timeout=0.5)
        except TimeoutError:
            pass


async def _phase(
    db: Any,
    partners: list[measure.BenchPartner],
    base_url: str,
    *,
    seconds: float,
    clients: int,
    prefix: str,
    front: subprocess.Popen[bytes],
    pg_port: int,
) -> dict[str, Any]:
    await measure.analyze(db)
    before = [await measure.current_pool_balance(db, p) for p in partners]
    share = max(1, clients // len(partners))
    cpu = (measure.cpu_seconds(), _tree_cpu(front))
    peak, stop = [0], asyncio.Event()
    sampler = asyncio.create_task(_sample_connections(front, pg_port, peak, stop))
    runs = await asyncio.gather(
        *(
            measure.run_http_submit(
                base_url, p.keys, seconds=seconds, clients=share, prefix=f"{prefix}{i}-", seed=i
            )
            for i, p in enumerate(partners)
        )
    )
    spent = {"client": measure.cpu_seconds() - cpu[0], "serve": _tree_cpu(front) - cpu[1]}
    stop.set()
    await sampler
    problems: list[str] = []
    applied = 0
    latencies: list[dict[str, float]] = []
    outcomes: dict[str, int] = {}
    for i, (partner, run) in enumerate(zip(partners, runs, strict=True)):
        check = await measure.check_phase(
            db,
            partner,
            prefix=f"{prefix}{i}-",
            applied=run.applied,
            balance_before=before[i],
            sent_keys=run.sent_keys,
            action_ids=run.action_ids,
            extra_200=run.extra_200,
            expect_all_sent_applied=set(run.load.outcomes) <= {"200"},
        )
        problems += check.problems
        applied += len(run.applied)
        latencies.append(run.load.latency())
        for outcome, count in run.load.outcomes.items():
            outcomes[outcome] = outcomes.get(outcome, 0) + count
    completed = sum(outcomes.values())
    return {
        "actionsPerSecond": applied / seconds,
        "outcomes": outcomes,
        "latencyMs": latencies[0] if len(latencies) == 1 else {"perPartner": latencies},
        "cpuMsPerRequest": {k: round(v * 1000 / max(completed, 1), 3) for k, v in spent.items()},
        "peakDatabaseConnections": peak[0],
        "ok": not problems,
        "problems": problems,
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    seconds = float(min(max(args.seconds, 1), MAX_SECONDS))
    clients = max(1, args.clients)
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    started = datetime.now(UTC)
    load_start = [round(x, 2) for x in os.getloadavg()]
    name = f"sir_bench_{secrets.token_hex(4)}"
    database_url = measure.with_database(server_url, name)
    master_key = generate_master_key()
    await measure.admin_sql(server_url, f'CREATE DATABASE "{name}"')
    db = create_engine(database_url, pool_size=4, max_overflow=4)
    partners: list[measure.BenchPartner] = []
    phases: dict[str, Any] = {}
    front: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(upgrade, database_url)
        box = SecretBox(parse_master_key(master_key))
        partners = [await measure.create_bench_partner(db, box) for _ in range(args.partners)]
        log("A: pgbench tpcb-like, prepared")
        pg = await measure.run_pgbench(server_url, seconds=round(seconds), clients=clients)
        phases["A"] = {"tps": pg.tps}
        env = dict(
            os.environ,
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            SIR_MASTER_KEY=master_key,
            SIR_LOG_LEVEL="WARNING",
        )
        for key, processes, spread in (
            ("F1", 1, partners[:1]),
            ("F2", 2, partners[:1]),
            ("P1", 1, partners),
            ("P2", 2, partners),
        ):
            log(f"{key}: serve --processes {processes}, {len(spread)} partner(s)")
            port = free_port()
            front = measure.start_process(
                ["-m", "ops.cli", "serve", "--port", str(port), "--processes", str(processes)],
                env,
            )
            base_url = f"http://127.0.0.1:{port}"
            await measure.wait_http_ok(f"{base_url}/healthz", front)
            for i, partner in enumerate(spread):  # warm key caches and pools, untimed
                await measure.run_http_submit(
                    base_url, partner.keys, seconds=1.0, clients=2, prefix=f"w{key}{i}-"
                )
            phases[key] = await _phase(
                db,
                spread,
                base_url,
                seconds=seconds,
                clients=clients,
                prefix=key,
                front=front,
                pg_port=make_url(database_url).port or 5432,
            )
            phases[key]["xPgbench"] = round(phases[key]["actionsPerSecond"] / pg.tps, 3)
            measure.stop_process(front)
            front = None
    finally:
        if front is not None:
            measure.stop_process(front)
        await db.dispose()
        await measure.admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        for partner in partners:
            try:
                await _clean_redis(
                    redis_url,
                    [f"*{partner.scope.partner_id}*", f"sir:replay:{partner.keys.id}:*"],
                )
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the outcome
                log(f"could not clean Redis: {exc}")
    return {
        "startedAt": started.isoformat().replace("+00:00", "Z"),
        "cores": os.cpu_count(),
        "loadAverage": [load_start, [round(x, 2) for x in os.getloadavg()]],
        "config": {"seconds": seconds, "clients": clients, "partners": args.partners},
        "phases": phases,
    }


def render(report: dict[str, Any]) -> str:
    phases = report["phases"]
    lines = [
        f"fronts bench {report['startedAt']}: {report['cores']} cores, load "
        f"{report['loadAverage'][0][0]} -> {report['loadAverage'][1][0]}, "
        f"{report['config']['clients']} clients, {report['config']['seconds']:g} s per phase",
        f"A  pgbench tpcb-like: {phases['A']['tps']:.0f} tps",
    ]
    for key, label in (
        ("F1", "1 front, 1 partner"),
        ("F2", "2 fronts, 1 partner"),
        ("P1", f"1 front, {report['config']['partners']} partners"),
        ("P2", f"2 fronts, {report['config']['partners']} partners"),
    ):
        p = phases.get(key)
        if p is None:
            continue
        latency = p["latencyMs"] if "p99" in p["latencyMs"] else {}
        lines.append(
            f"{key} {label:<22} {p['actionsPerSecond']:>7.0f} actions/s  {p['xPgbench']:.2f}x pgbench"
            + (f"  p50/p99 {latency['p50']:.0f}/{latency['p99']:.0f} ms" if latency else "")
            + f"  CPU ms/request {p['cpuMsPerRequest']}  DB connections {p['peakDatabaseConnections']}"
            + f"  outcomes {p['outcomes']}"
            + ("  proof OK" if p["ok"] else f"  PROOF FAILED {p['problems']}")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.fronts", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10, help="per phase (max 60)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--partners", type=int, default=4)
    args = parser.parse_args(argv)
    report = asyncio.run(bench(args))
    print(render(report))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = report["startedAt"].replace("-", "").replace(":", "").split(".")[0]
    path = RESULTS / f"fronts-{stamp}Z.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {path}")
    return 0 if all(p.get("ok", True) for p in report["phases"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
