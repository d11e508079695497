"""`python -m ops.bench.submit [--clients N] [--seconds S] [--rate R] [--quick]`: issue 4's bench.

Signed `POST /v1/partner/actions/submit` through a real `serve` process, in the shape partners
use most: three stakeholders (a CUSTOMER and a REFERRER, each one of 1,000 users, and one
ORGANIZATION from the directory), unique idempotency keys, an ACTIVE campaign splitting
70 / 20 / 10, one funded pool. One run, on the same PostgreSQL server, with the same client count:

A. pgbench tpcb-like `-M prepared -c N`: tps, and p50/p99 from its per-transaction log (`-l`);
B. the submit, N concurrent clients back to back (closed loop): requests/s, p50/p99;
C. a fixed offered load of R per second (default: half of A's tps), open loop for both: pgbench
   `-R R` and the submit scheduled at R/s whatever the answers, latency counted from each
   request's scheduled start: p99 of each and their ratio;
C2. only when R is more than the submit carries (over 80% of B's rate, where C's p99 is mostly
   queueing): the same comparison at half of B's rate, a load both sides carry.

It prints the table with the ratios the issue sets goals for (B / A throughput >= 2.0, C p99
ratio <= 3.0) and saves the JSON under `ops/bench/results/submit-<UTC timestamp>.json`. After each
submit phase it proves the effects: every key answered 200 applied exactly once with the tokens
answered, the pool debited and the campaign's spentTokens raised by exactly their sum, every
action under the campaign with three distributions, `verify_ledger` clean. Exit status 1 when a
proof fails. Fresh database on DATABASE_URL's server, dropped at the end; loopback only; every
loop bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.campaigns import CampaignSpec, create_campaign
from engine.crypto import SecretBox, generate_master_key
from engine.db import create_engine
from engine.distribution import Split
from engine.organizations import create_organization
from engine.settings import parse_master_key
from ops.bench import measure
from ops.bench.run import _clean_redis, free_port, log, machine_info
from ops.migrate import upgrade

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/9"
RESULTS = Path(__file__).resolve().parent / "results"
MAX_SECONDS = 60  # a shared 2-core machine: no measurement may hog it for long
STAKEHOLDER_TYPES = ("CUSTOMER", "REFERRER", "ORGANIZATION")
SPLITS = (
    Split("CUSTOMER", Decimal(70)),
    Split("REFERRER", Decimal(20)),
    Split("ORGANIZATION", Decimal(10)),
)
THROUGHPUT_GOAL = 2.0  # submit req/s over pgbench tps, same clients
P99_GOAL = 3.0  # submit p99 over pgbench p99 at the same offered rate
SATURATED = 0.8  # an offered rate above this share of B's throughput is mostly queueing


@dataclass
class Row:
    """One measurement as printed and saved."""

    key: str
    label: str
    value: float  # tps or successful requests/s
    unit: str
    latency_ms: dict[str, float] | None = None
    offered_rate: float | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    check: dict[str, Any] | None = None
    cpu_ms: dict[str, float] = field(default_factory=dict)  # per request, by process
    note: str = ""


def _stakeholders(slug: str) -> Callable[[random.Random], str]:
    """The stakeholders array of one action: distinct CUSTOMER and REFERRER user ids (two
    namespaces of 1,000, so a user never holds both roles in one action) and the organization."""

    def make(rng: random.Random) -> str:
        customer = rng.randrange(measure.USER_COUNT)
        referrer = rng.randrange(measure.USER_COUNT)
        return (
            f'[{{"stakeholderTypeCode":"CUSTOMER","partnerUserId":"bench_user_{customer:04d}"}},'
            f'{{"stakeholderTypeCode":"REFERRER","partnerUserId":"bench_ref_{referrer:04d}"}},'
            f'{{"stakeholderTypeCode":"ORGANIZATION","organizationSlug":"{slug}"}}]'
        )

    return make


@dataclass(frozen=True)
class Setup:
    partner: measure.BenchPartner
    campaign_id: str
    organization_slug: str


async def create_setup(db: AsyncEngine, box: SecretBox) -> Setup:
    """Partner (PURCHASE; CUSTOMER, REFERRER, ORGANIZATION), funded pool, organization and an
    ACTIVE campaign on the default pool whose budget is the whole funding (never the limit)."""
    partner = await measure.create_bench_partner(db, box, stakeholder_types=STAKEHOLDER_TYPES)
    slug = f"bench-org-{secrets.token_hex(4)}"
    async with db.begin() as conn:
        await create_organization(
            conn, actor="bench", fields={"slug": slug, "name": "Bench Organization"}
        )
        campaign = await create_campaign(
            conn,
            partner.scope,
            CampaignSpec(
                name="bench 70/20/10",
                status="ACTIVE",
                action_types=("PURCHASE",),
                splits=SPLITS,
                budget_total=partner.funding,
            ),
        )
    return Setup(partner, campaign["id"], slug)


async def _campaign_spent(db: AsyncEngine, campaign_id: str) -> int:
    async with db.connect() as conn:
        spent = await conn.scalar(
            text("SELECT spent_tokens FROM campaigns WHERE id = :id"), {"id": campaign_id}
        )
    return int(spent or 0)


async def _campaign_problems(
    db: AsyncEngine, setup: Setup, *, prefix: str, spent_before: int, tokens_answered: int
) -> list[str]:
    """What check_phase does not know about: the campaign's budget counter and the split."""
    problems: list[str] = []
    spent = await _campaign_spent(db, setup.campaign_id) - spent_before
    if spent != tokens_answered:
        problems.append(
            f"campaign spentTokens rose by {spent} micro-tokens, answers sum to {tokens_answered}"
        )
    async with db.connect() as conn:
        odd = await conn.scalar(
            text(
                "SELECT count(*) FROM actions WHERE partner_id = :partner_id "
                "AND environment = :environment AND starts_with(idempotency_key, :prefix) "
                "AND (campaign_id IS DISTINCT FROM :campaign "
                "OR jsonb_array_length(response->'distributions') <> 3)"
            ),
            {**setup.partner.scope.params, "prefix": prefix, "campaign": setup.campaign_id},
        )
    if odd:
        problems.append(f"{odd} actions not under the campaign or without three distributions")
    return problems


async def _actions_per_transaction(db: AsyncEngine, setup: Setup, prefix: str) -> float:
    """Mean group-commit batch size: actions.created_at defaults to now(), the transaction's
    start, so the actions of one batch share it."""
    async with db.connect() as conn:
        mean = await conn.scalar(
            text(
                "SELECT count(*)::float8 / greatest(count(DISTINCT created_at), 1) FROM actions "
                "WHERE partner_id = :partner_id AND environment = :environment "
                "AND starts_with(idempotency_key, :prefix)"
            ),
            {**setup.partner.scope.params, "prefix": prefix},
        )
    return float(mean or 0)


async def _submit_phase(
    db: AsyncEngine,
    setup: Setup,
    base_url: str,
    serve: subprocess.Popen[bytes],
    *,
    key: str,
    label: str,
    prefix: str,
    seconds: float,
    clients: int,
    rate: float | None = None,
    request_timeout: float = 30,
) -> Row:
    partner = setup.partner
    await measure.analyze(db)
    before = await measure.current_pool_balance(db, partner)
    spent_before = await _campaign_spent(db, setup.campaign_id)
    cpu = (measure.cpu_seconds(), measure.cpu_seconds(serve.pid))
    run = await measure.run_http_submit(
        base_url,
        partner.keys,
        seconds=seconds,
        clients=clients,
        prefix=prefix,
        stakeholders=_stakeholders(setup.organization_slug),
        rate=rate,
        request_timeout=request_timeout,
    )
    spent = {
        "client": measure.cpu_seconds() - cpu[0],
        "serve": measure.cpu_seconds(serve.pid) - cpu[1],
    }
    clean = set(run.load.outcomes) == {"200"}
    check = await measure.check_phase(
        db,
        partner,
        prefix=prefix,
        applied=run.applied,
        balance_before=before,
        sent_keys=run.sent_keys,
        action_ids=run.action_ids,
        extra_200=run.extra_200,
        expect_all_sent_applied=clean,
    )
    check.problems += await _campaign_problems(
        db, setup, prefix=prefix, spent_before=spent_before, tokens_answered=check.tokens_answered
    )
    completed = run.load.completed
    per_tx = await _actions_per_transaction(db, setup, prefix)
    note = f"{completed} requests in {run.load.elapsed:.1f} s, {per_tx:.1f} actions per transaction"
    if rate is not None:
        note += f" (offered {rate:.0f}/s for {seconds:g} s"
        note += "; the rest is the backlog draining)" if run.load.elapsed > seconds + 1 else ")"
    return Row(
        key,
        label,
        run.load.rate("200"),
        "req/s",
        run.load.latency(),
        rate,
        dict(run.load.outcomes),
        check.summary(),
        {name: round(s * 1000 / completed, 3) for name, s in spent.items()} if completed else {},
        note,
    )


def _pgbench_row(key: str, label: str, pg: measure.PgbenchRun, rate: float | None) -> Row:
    return Row(
        key,
        label,
        pg.tps,
        "tps",
        pg.percentiles_ms,
        rate,
        note=f"{pg.command}; {pg.transactions} transactions logged",
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _p99(row: Row) -> float | None:
    return row.latency_ms["p99"] if row.latency_ms else None


async def _fixed_rate(
    server_url: str,
    db: AsyncEngine,
    setup: Setup,
    base_url: str,
    serve: subprocess.Popen[bytes],
    *,
    tag: str,
    rate: float,
    seconds: float,
    clients: int,
    closed_rate: float,
) -> tuple[Row, Row]:
    log(f"{tag}: pgbench -R {rate:.0f}")
    pg = await measure.run_pgbench(
        server_url, seconds=round(seconds), clients=clients, rate=rate, percentiles=True
    )
    pg_row = _pgbench_row(f"pgbench_rate_{tag}", f"{tag}  pgbench -R {rate:.0f}", pg, rate)
    log(f"{tag}: submit at {rate:.0f}/s, open loop")
    # Room for the backlog when the rate is more than the submit carries: the requests queue
    # for a connection in the client, each bounded by this timeout (the wait included).
    backlog = rate * seconds / max(closed_rate, 1.0)
    request_timeout = min(max(30.0, 1.5 * backlog + 10), 180.0)
    http_row = await _submit_phase(
        db,
        setup,
        base_url,
        serve,
        key=f"submit_rate_{tag}",
        label=f"{tag}  submit at {rate:.0f}/s",
        prefix=f"s{tag.lower()}-",
        seconds=seconds,
        clients=clients,
        rate=rate,
        request_timeout=request_timeout,
    )
    return pg_row, http_row


async def bench(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    seconds = 5.0 if args.quick else float(min(max(args.seconds, 1), MAX_SECONDS))
    clients = max(1, args.clients)
    server_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    started_at = datetime.now(UTC)
    machine = await machine_info(server_url)
    log(
        f"{machine['nproc']} cores, PostgreSQL {machine['postgresql']}, {clients} clients, "
        f"{seconds:g} s per measurement, load average {machine['loadAverageAtStart']}"
    )

    name = f"sir_bench_{secrets.token_hex(4)}"
    database_url = measure.with_database(server_url, name)
    master_key = generate_master_key()
    rows: list[Row] = []
    ratios: dict[str, float | None] = {}
    serve: subprocess.Popen[bytes] | None = None
    db: AsyncEngine | None = None
    setup: Setup | None = None
    rate: float | None = args.rate
    await measure.admin_sql(server_url, f'CREATE DATABASE "{name}"')
    try:
        await asyncio.to_thread(upgrade, database_url)
        # The bench process only checks and analyzes: the front has its own pool.
        db = create_engine(database_url, pool_size=2, max_overflow=2)
        setup = await create_setup(db, SecretBox(parse_master_key(master_key)))

        port = free_port()
        env = dict(os.environ)
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            SIR_MASTER_KEY=master_key,
            SIR_LOG_LEVEL="WARNING",
        )
        serve = measure.start_process(["-m", "ops.cli", "serve", "--port", str(port)], env)
        base_url = f"http://127.0.0.1:{port}"
        await measure.wait_http_ok(f"{base_url}/healthz", serve)
        # Warm the front (key cache, pools, the organization's and first users' wallets) and
        # check the setup answers 200 before anything is timed.
        warm = await measure.run_http_submit(
            base_url,
            setup.partner.keys,
            seconds=min(2.0, seconds / 3),
            clients=clients,
            prefix="w-",
            stakeholders=_stakeholders(setup.organization_slug),
        )
        if not warm.applied:
            raise RuntimeError(f"warm-up applied nothing: {dict(warm.load.outcomes)}")

        log("A: pgbench tpcb-like, prepared")
        pg = await measure.run_pgbench(
            server_url, seconds=round(seconds), clients=clients, percentiles=True
        )
        a = _pgbench_row("pgbench", "A  pgbench tpcb-like -M prepared", pg, None)
        rows.append(a)

        log("B: signed submit, 3 stakeholders, closed loop")
        b = await _submit_phase(
            db,
            setup,
            base_url,
            serve,
            key="submit",
            label="B  submit, 3 stakeholders",
            prefix="sb-",
            seconds=seconds,
            clients=clients,
        )
        rows.append(b)
        ratios["throughput B/A"] = _ratio(b.value, a.value)
        ratios["p99 B/A (closed loop)"] = _ratio(_p99(b), _p99(a))

        rate = rate if rate is not None else round(a.value / 2, 1)
        c_pg, c_http = await _fixed_rate(
            server_url,
            db,
            setup,
            base_url,
            serve,
            tag="C",
            rate=rate,
            seconds=seconds,
            clients=clients,
            closed_rate=b.value,
        )
        rows += [c_pg, c_http]
        ratios[f"p99 at {rate:.0f}/s (C)"] = _ratio(_p99(c_http), _p99(c_pg))

        if rate > SATURATED * b.value and b.value > 0:
            carried = round(b.value / 2, 1)
            c2_pg, c2_http = await _fixed_rate(
                server_url,
                db,
                setup,
                base_url,
                serve,
                tag="C2",
                rate=carried,
                seconds=seconds,
                clients=clients,
                closed_rate=b.value,
            )
            rows += [c2_pg, c2_http]
            ratios[f"p99 at {carried:.0f}/s (C2)"] = _ratio(_p99(c2_http), _p99(c2_pg))
        measure.stop_process(serve)
    finally:
        if serve is not None:
            measure.stop_process(serve)
        if db is not None:
            await db.dispose()
        await measure.admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if setup is not None:
            partner = setup.partner
            try:
                await _clean_redis(
                    redis_url,
                    [f"*{partner.scope.partner_id}*", f"sir:replay:{partner.keys.id}:*"],
                )
            except Exception as exc:  # noqa: BLE001 - cleanup must not hide the real outcome
                log(f"could not clean Redis: {exc}")

    machine["loadAverageAtEnd"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "startedAt": started_at.isoformat().replace("+00:00", "Z"),
        "machine": machine,
        "config": {
            "clients": clients,
            "secondsPerMeasurement": seconds,
            "rate": rate,
            "rateGiven": args.rate is not None,
            "usersPerRole": measure.USER_COUNT,
            "splits": {s.stakeholder_type: str(s.percent) for s in SPLITS},
            "pgbenchScale": 10,
        },
        "measurements": [asdict(row) for row in rows],
        "ratios": ratios,
        "goals": {"throughput B/A": THROUGHPUT_GOAL, "p99 ratio at a fixed rate": P99_GOAL},
    }
    ok = all(row.check is None or row.check["ok"] for row in rows)
    return report, ok


def _fmt(value: float | None, width: int, digits: int = 1) -> str:
    return f"{value:>{width},.{digits}f}" if value is not None else " " * (width - 1) + "-"


def render(report: dict[str, Any]) -> str:
    machine, config = report["machine"], report["config"]
    lines = [
        f"sir-engine submit bench {report['startedAt']}: {machine['nproc']} cores "
        f"({machine['cpu']}), PostgreSQL {machine['postgresql']} "
        f"(synchronous_commit={machine['synchronousCommit']}), load average "
        f"{machine['loadAverageAtStart'][0]} -> {machine['loadAverageAtEnd'][0]}",
        f"{config['clients']} clients, {config['secondsPerMeasurement']:g} s per measurement, "
        f"fixed rate {config['rate']}/s ({'given' if config['rateGiven'] else 'half of A'})",
        "",
        f"{'measurement':<34} {'value':>9} {'unit':<6} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>9}  check",
    ]
    for row in report["measurements"]:
        latency = row["latency_ms"] or {}
        check = row["check"]
        verdict = "" if check is None else ("OK" if check["ok"] else "FAILED")
        lines.append(
            f"{row['label']:<34} {row['value']:>9,.0f} {row['unit']:<6} "
            f"{_fmt(latency.get('p50'), 8, 2)} {_fmt(latency.get('p95'), 8, 2)} "
            f"{_fmt(latency.get('p99'), 9, 2)}  {verdict}"
        )
    lines += ["", "ratios (goal):"]
    goals = report["goals"]
    for name, value in report["ratios"].items():
        goal = (
            f">= {goals['throughput B/A']}"
            if name == "throughput B/A"
            else f"<= {goals['p99 ratio at a fixed rate']}"
            if name.startswith("p99 at")
            else "(for reading)"
        )
        shown = f"{value:.3f}" if value is not None else "-"
        met = ""
        if value is not None and name == "throughput B/A":
            met = " met" if value >= goals["throughput B/A"] else " NOT met"
        elif value is not None and name.startswith("p99 at"):
            met = " met" if value <= goals["p99 ratio at a fixed rate"] else " NOT met"
        lines.append(f"  {name:<28} {shown:>9}  {goal}{met}")
    lines.append("")
    for row in report["measurements"]:
        extra = [row["note"]] if row["note"] else []
        if row["outcomes"]:
            extra.append(f"outcomes {row['outcomes']}")
        if row["cpu_ms"]:
            shares = ", ".join(f"{name} {ms:.2f}" for name, ms in row["cpu_ms"].items())
            extra.append(f"CPU ms per request: {shares}")
        if row["check"] is not None:
            c = row["check"]
            extra.append(
                f"rows {c['rows']} = answered {c['answeredApplied']}, pool debited "
                f"{c['poolDebited']} = answered {c['tokensAnswered']} = campaign spent, "
                f"ledger verified {c['ledgerVerified']}"
            )
            extra.extend(f"PROBLEM: {p}" for p in c["problems"])
        lines.append(f"{row['key']}: " + "; ".join(extra))
    return "\n".join(lines)


def save(report: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = report["startedAt"].replace("-", "").replace(":", "").split(".")[0]
    path = RESULTS / f"submit-{stamp}Z.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ops.bench.submit", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients everywhere")
    parser.add_argument("--seconds", type=int, default=15, help="per measurement (max 60)")
    parser.add_argument(
        "--rate", type=float, default=None, help="fixed offered load per second (default: A/2)"
    )
    parser.add_argument("--quick", action="store_true", help="~5 s per measurement (smoke)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rate is not None and args.rate <= 0:
        raise SystemExit("--rate must be positive")
    report, ok = asyncio.run(bench(args))
    print(render(report))
    print(f"\nsaved {save(report)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
