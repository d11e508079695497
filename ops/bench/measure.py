"""The measurements of the bench, each bounded in time and in count, each returning its figures.

- `run_pgbench`: baseline A, pgbench tpcb-like in prepared mode on a scratch database.
- `run_http_ceiling`: baseline B, a raw aiohttp client against a trivial aiohttp server.
- `run_direct`: engine 1, `submit_action` (one transaction per action) or the front's
  `GroupCommitter` (concurrent actions share a transaction) called from Python by N tasks.
- `run_http_submit`: engine 2, signed `POST /v1/partner/actions/submit` against `serve`,
  optionally with a share of duplicate idempotency keys.
- `check_phase`: proves a phase's effects: every key answered "applied" has exactly one row,
  nothing else was applied, the pool lost exactly the tokens answered, the ledger verifies.

Ratios, tables and the database's life cycle live in `ops.bench.run`; this module is also what
the smoke test imports, so it must stay usable on any migrated database.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import os
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from sqlalchemy import text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.action_request import ActionRequest, StakeholderRequest
from engine.credentials import IssuedKeys, issue_keys
from engine.crypto import SecretBox
from engine.errors import SirError
from engine.group_commit import GroupCommitter
from engine.money import Tokens
from engine.partners import create_partner
from engine.pools import allocate, create_pool, pool_balance
from engine.scope import Scope
from engine.signing import sign_request
from engine.submit import submit_action
from engine.tables import partners
from engine.verify import verify_ledger
from engine.wire import loads

ROOT = Path(__file__).resolve().parents[2]
SUBMIT_PATH = "/v1/partner/actions/submit"
USER_COUNT = 1000
# Enough for any bounded run: 1e9 tokens, while one action moves at most 100.
FUNDING = Tokens.parse("1000000000")
# The rate limiter must not be what the bench measures.
NO_RATE_LIMIT = {"perHour": 100_000_000, "perMinute": 100_000_000}
# A hard cap on requests per measurement, so a loop that fails fast (a dead server answering
# connection refused in microseconds) still stops long before memory is a concern.
MAX_PER_SECOND = 50_000


# -- results --------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


@dataclass
class Load:
    """What one load loop saw: outcomes by label, latencies, wall time."""

    elapsed: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def completed(self) -> int:
        return sum(self.outcomes.values())

    def rate(self, label: str | None = None) -> float:
        """Per second: all completed requests, or those with `label`."""
        count = self.completed if label is None else self.outcomes[label]
        return count / self.elapsed if self.elapsed > 0 else 0.0

    def latency(self) -> dict[str, float]:
        ordered = sorted(self.latencies_ms)
        return {f"p{q}": round(percentile(ordered, q), 3) for q in (50, 95, 99)}


async def run_load(
    one: Callable[[random.Random], Awaitable[str]],
    *,
    seconds: float,
    clients: int,
    seed: int = 1,
    rate: float | None = None,
) -> Load:
    """`clients` tasks call `one` back to back until `seconds` pass (or the count cap).

    With `rate`, the load is open-loop instead: `rate * seconds` calls are started on a fixed
    schedule whatever the answers, each latency counted from its scheduled start (so a backlog
    shows as latency, as with `pgbench -R`); `clients` then only bounds what the caller's own
    connection limit allows in flight. Every started call is awaited: `one` must be bounded.
    """
    if rate is not None:
        return await _open_loop(one, seconds=seconds, rate=rate, seed=seed)
    load = Load()
    cap = int(MAX_PER_SECOND * seconds) + clients
    issued = itertools.count()
    deadline = time.monotonic() + seconds

    async def worker(n: int) -> None:
        rng = random.Random(seed * 10_007 + n)  # reproducible traffic per task
        while time.monotonic() < deadline and next(issued) < cap:
            started = time.perf_counter()
            label = await one(rng)
            load.latencies_ms.append((time.perf_counter() - started) * 1000)
            load.outcomes[label] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(clients)))
    load.elapsed = time.perf_counter() - started  # includes the requests in flight at deadline
    return load


async def _open_loop(
    one: Callable[[random.Random], Awaitable[str]], *, seconds: float, rate: float, seed: int
) -> Load:
    load = Load()
    total = min(int(rate * seconds), int(MAX_PER_SECOND * seconds))
    rng = random.Random(seed)  # one stream: calls start in schedule order on one event loop
    tasks: set[asyncio.Task[None]] = set()

    async def timed(scheduled: float) -> None:
        label = await one(rng)
        load.latencies_ms.append((time.perf_counter() - scheduled) * 1000)
        load.outcomes[label] += 1

    started = time.perf_counter()
    for n in range(total):
        scheduled = started + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:  # behind schedule: start at once, the lateness is counted as latency
            await asyncio.sleep(delay)
        task = asyncio.create_task(timed(scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    load.elapsed = time.perf_counter() - started  # to the last answer, backlog included
    return load


# -- the bench partner ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchPartner:
    scope: Scope
    pool_id: str
    keys: IssuedKeys
    funding: Tokens


async def create_bench_partner(
    db: AsyncEngine,
    box: SecretBox,
    *,
    funding: Tokens = FUNDING,
    stakeholder_types: Sequence[str] = ("CUSTOMER",),
) -> BenchPartner:
    """An ACTIVE partner (PURCHASE, `stakeholder_types`), sandbox keys, a funded default pool,
    no throttle."""
    async with db.begin() as conn:
        partner = await create_partner(
            conn,
            actor="bench",
            name=f"Bench {secrets.token_hex(4)}",
            status="ACTIVE",
            action_types=("PURCHASE",),
            stakeholder_types=tuple(stakeholder_types),
        )
        scope = Scope(partner["id"], "sandbox")
        pool = await create_pool(conn, scope, actor="bench", name="bench")
        await allocate(conn, scope, actor="bench", pool_id=pool["id"], amount=funding)
        keys = await issue_keys(
            conn, box, actor="bench", partner_id=partner["id"], environment="sandbox", name="bench"
        )
        await conn.execute(
            update(partners)
            .where(partners.c.id == partner["id"])
            .values(rate_limit_override=NO_RATE_LIMIT)
        )
    return BenchPartner(scope, pool["id"], keys, funding)


def _user(rng: random.Random) -> str:
    return f"bench_user_{rng.randrange(USER_COUNT):04d}"


def _amount(rng: random.Random) -> Decimal:
    return Decimal(rng.randint(100, 10_000)) / 100  # 1.00 .. 100.00, exact


def _micro(value: Any) -> int:
    return value.micro if isinstance(value, Tokens) else Tokens.parse(value).micro


# -- engine 1: submit_action from Python ----------------------------------------------------------


@dataclass
class DirectRun:
    load: Load
    applied: dict[str, int]  # idempotency key -> tokens distributed (micro)


async def run_direct(
    db: AsyncEngine,
    scope: Scope,
    *,
    seconds: float,
    clients: int,
    prefix: str,
    seed: int = 1,
    committer: GroupCommitter | None = None,
) -> DirectRun:
    """Engine 1: `clients` tasks each submit back to back with unique keys, one CUSTOMER from
    1000 users per action, every action debiting the partner's one pool.

    Without `committer` each action is `submit_action`, its own transaction; with one, actions
    go through `committer.submit`, the path the front takes, which coalesces them.
    """
    applied: dict[str, int] = {}
    numbers = itertools.count()

    async def one(rng: random.Random) -> str:
        key = f"{prefix}{next(numbers)}"
        request = ActionRequest(
            idempotency_key=key,
            action_type="PURCHASE",
            amount=_amount(rng),
            currency="USD",
            stakeholders=(StakeholderRequest("CUSTOMER", partner_user_id=_user(rng)),),
        )
        try:
            if committer is None:
                response = await submit_action(db, scope, request)
            else:
                response = await committer.submit(scope, request)
        except SirError as exc:
            return exc.code
        except DBAPIError as exc:  # counted, not fatal: the check shows whether it mattered
            return f"DB {type(exc.orig).__name__}"
        applied[key] = _micro(response["tokensDistributed"])
        return "applied"

    load = await run_load(one, seconds=seconds, clients=clients, seed=seed)
    return DirectRun(load, applied)


# -- engine 2: signed HTTP submits ----------------------------------------------------------------


@dataclass
class HttpRun:
    load: Load
    applied: dict[str, int]  # key -> tokens (micro), from the one 200 answer of each key
    action_ids: dict[str, str]  # key -> actionId of that 200 answer
    sent_keys: set[str]
    duplicates_sent: int
    extra_200: list[str]  # keys answered 200 more than once (must stay empty)
    replays: list[tuple[str, str]]  # (key, original actionId) from 409 IDEMPOTENT answers


def _signed_headers(keys: IssuedKeys, body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))  # fresh per request, as a partner's client signs
    return {
        "X-Partner-Key": keys.secret_key,
        "X-Timestamp": timestamp,
        "X-Signature": sign_request(keys.hmac_secret, timestamp, "POST", SUBMIT_PATH, body),
        "Content-Type": "application/json",
    }


async def run_http_submit(
    base_url: str,
    keys: IssuedKeys,
    *,
    seconds: float,
    clients: int,
    prefix: str,
    duplicate_share: float = 0.0,
    seed: int = 2,
    stakeholders: Callable[[random.Random], str] | None = None,
    rate: float | None = None,
    request_timeout: float = 30,
) -> HttpRun:
    """Engine 2: signed submits over loopback HTTP, each with a fresh timestamp.

    `stakeholders` returns the JSON array of an action's stakeholders (default: one CUSTOMER of
    1000 users). With `rate`, requests start open-loop at that rate (see `run_load`), at most
    `clients` on the wire at once; each is signed when it is sent, not when it is scheduled.
    `request_timeout` bounds each request, the wait for a free connection included.

    With `duplicate_share` > 0 that share of requests resends a key sent shortly before (often
    still in flight, so concurrent duplicates are exercised). A resend carries the same parsed
    body in different bytes (trailing white space): the front's replay guard refuses identical
    signed bytes within a second, and a partner's retry is a new request, not a replayed one.
    """
    run = HttpRun(Load(), {}, {}, set(), 0, [], [])
    recent: list[tuple[str, bytes]] = []  # (key, body) of the last sends, for duplicates
    resends: Counter[str] = Counter()
    numbers = itertools.count()
    url = base_url + SUBMIT_PATH

    def next_body(rng: random.Random) -> tuple[str, bytes]:
        if recent and rng.random() < duplicate_share:
            key, body = recent[rng.randrange(len(recent))]
            resends[key] += 1
            run.duplicates_sent += 1
            return key, body + b" " * resends[key]
        key = f"{prefix}{next(numbers)}"
        if stakeholders is None:
            body = (
                f'{{"idempotencyKey":"{key}","actionType":"PURCHASE","amount":"{_amount(rng)}",'
                f'"currency":"USD","stakeholders":[{{"stakeholderTypeCode":"CUSTOMER",'
                f'"partnerUserId":"{_user(rng)}"}}]}}'
            ).encode()
        else:
            amount = _amount(rng)
            body = (
                f'{{"idempotencyKey":"{key}","actionType":"PURCHASE","amount":"{amount}",'
                f'"currency":"USD","stakeholders":{stakeholders(rng)}}}'
            ).encode()
        run.sent_keys.add(key)
        recent.append((key, body))
        if len(recent) > 256:
            del recent[:128]
        return key, body

    connector = aiohttp.TCPConnector(limit=clients)
    # `total` includes the wait for a free connection: an open-loop backlog needs more than 30 s.
    session_timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=session_timeout) as session:

        async def one(rng: random.Random) -> str:
            key, body = next_body(rng)
            try:
                async with session.post(
                    url, data=body, headers=_signed_headers(keys, body)
                ) as response:
                    status, raw = response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                return f"client {type(exc).__name__}"
            answer = loads(raw) if raw else {}
            if status == 200:
                if key in run.applied:
                    run.extra_200.append(key)
                run.applied[key] = _micro(answer["tokensDistributed"])
                run.action_ids[key] = answer["actionId"]
                return "200"
            code = answer.get("error", {}).get("code", "?") if isinstance(answer, dict) else "?"
            if code == "IDEMPOTENT":
                run.replays.append((key, answer["error"]["details"]["original"]["actionId"]))
            return f"{status} {code}"

        run.load = await run_load(one, seconds=seconds, clients=clients, seed=seed, rate=rate)
    return run


# -- baseline B: the raw HTTP ceiling -------------------------------------------------------------


async def run_http_ceiling(base_url: str, *, seconds: float, clients: int) -> Load:
    """Baseline B: the same client shape against a handler answering "ok"."""
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(rng: random.Random) -> str:
            try:
                async with session.get(base_url + "/") as response:
                    await response.read()
                    return str(response.status)
            except (aiohttp.ClientError, TimeoutError) as exc:
                return f"client {type(exc).__name__}"

        return await run_load(one, seconds=seconds, clients=clients)


# -- processes ------------------------------------------------------------------------------------


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of this process (None) or of `pid` (Linux /proc; 0.0 elsewhere).

    CPU per action tells where the time goes on a shared machine better than wall time does:
    it does not grow when other processes take the cores.
    """
    if pid is None:
        return time.process_time()
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_process(
    args: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    # Our own interpreter running our own modules: no outside input reaches the command line.
    return subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT)  # noqa: S603


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


async def wait_http_ok(url: str, process: subprocess.Popen[bytes], within: float = 30) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"process exited with {process.returncode} before {url} answered"
                )
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {within}s")


# -- baseline A: pgbench --------------------------------------------------------------------------


@dataclass(frozen=True)
class PgbenchRun:
    tps: float
    latency_ms: float | None
    command: str
    # With `percentiles=True`: nearest-rank p50/p95/p99 from the per-transaction log (ms; with
    # `rate`, counted from each transaction's scheduled start) and the transactions logged.
    percentiles_ms: dict[str, float] | None = None
    transactions: int | None = None


def find_pgbench() -> str:
    found = shutil.which("pgbench") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)), None
    )
    if found is None:
        raise FileNotFoundError("pgbench not found on PATH nor in /usr/lib/postgresql/*/bin")
    return found


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


async def admin_sql(server_url: str, *statements: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _libpq_args(url: str) -> tuple[list[str], dict[str, str]]:
    parsed = make_url(url)
    args: list[str] = []
    host = parsed.host or parsed.query.get("host")
    if isinstance(host, str) and host:
        args += ["-h", host]
    if parsed.port:
        args += ["-p", str(parsed.port)]
    if parsed.username:
        args += ["-U", parsed.username]
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    return args, env


async def _run(args: list[str], env: dict[str, str], limit: float) -> str:
    process = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), limit)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    text_out = out.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{args[0]} exited with {process.returncode}:\n{text_out[-2000:]}")
    return text_out


def _pgbench_log_latencies(directory: str) -> list[float]:
    """Per-transaction latencies (ms) from pgbench `-l` files: the third field is microseconds,
    from the scheduled start when `-R` is on (schedule lag included)."""
    latencies: list[float] = []
    for path in glob.glob(os.path.join(directory, "pgbench_log.*")):
        with open(path) as log:
            for line in log:
                fields = line.split()
                if len(fields) >= 3 and fields[2].isdigit():  # "skipped" only with -L
                    latencies.append(int(fields[2]) / 1000)
    return latencies


async def run_pgbench(
    server_url: str,
    *,
    seconds: int,
    clients: int,
    scale: int = 10,
    rate: float | None = None,
    percentiles: bool = False,
) -> PgbenchRun:
    """Baseline A: tpcb-like, prepared, on its own scratch database (created and dropped here).

    `rate` adds `-R rate` (a fixed offered load, transactions per second over all clients);
    `percentiles` adds a per-transaction log (`-l`) in a temporary directory, read for p50/p99.
    """
    pgbench = find_pgbench()
    name = f"sir_bench_pgbench_{secrets.token_hex(4)}"
    conn_args, env = _libpq_args(server_url)
    log_dir = tempfile.TemporaryDirectory(prefix="sir_pgbench_") if percentiles else None
    extra: list[str] = []
    if rate is not None:
        extra += ["-R", f"{rate:.1f}"]
    if log_dir is not None:
        extra += ["-l", f"--log-prefix={os.path.join(log_dir.name, 'pgbench_log')}"]
    await admin_sql(server_url, f'CREATE DATABASE "{name}"')
    try:
        await _run([pgbench, "-i", "-q", "-s", str(scale), *conn_args, name], env, 300)
        threads = max(1, min(clients, os.cpu_count() or 1))
        command = [
            pgbench,
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(threads),
            "-T",
            str(seconds),
            *extra,
            *conn_args,
            name,
        ]
        out = await _run(command, env, seconds + 120)
        latencies = sorted(_pgbench_log_latencies(log_dir.name)) if log_dir is not None else None
    finally:
        if log_dir is not None:
            log_dir.cleanup()
        await admin_sql(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    tps = re.search(r"^tps = ([0-9.]+)", out, re.MULTILINE)
    if tps is None:
        raise RuntimeError(f"no tps in pgbench output:\n{out[-2000:]}")
    latency = re.search(r"^latency average = ([0-9.]+) ms", out, re.MULTILINE)
    shown = " ".join(a for a in command[1:] if a != name and not a.startswith("--log-prefix"))
    return PgbenchRun(
        float(tps.group(1)),
        float(latency.group(1)) if latency else None,
        f"pgbench {shown}",
        None
        if latencies is None
        else {f"p{q}": round(percentile(latencies, q), 3) for q in (50, 95, 99)},
        None if latencies is None else len(latencies),
    )


# -- correctness ------------------------------------------------------------------------------------


@dataclass
class Check:
    """A phase's proof. `ok` only when every statement holds."""

    rows: int = 0
    answered_applied: int = 0
    tokens_answered: int = 0
    tokens_in_rows: int = 0
    pool_debited: int = 0
    ledger_ok: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "answeredApplied": self.answered_applied,
            "tokensAnswered": Tokens(self.tokens_answered).format(),
            "poolDebited": Tokens(self.pool_debited).format(),
            "ledgerVerified": self.ledger_ok,
            "problems": self.problems,
        }


async def analyze(db: AsyncEngine) -> None:
    """Refresh planner statistics of the bench database before a timed phase.

    The bench starts from empty tables and a phase lasts seconds, less than autovacuum takes to
    notice; the plans chosen on empty-table statistics (filtering every row of the partner
    instead of the unique index) are not what a running system sees. Steady state is measured.
    """
    async with db.connect() as conn:
        await conn.execute(text("ANALYZE"))
        await conn.commit()


async def current_pool_balance(db: AsyncEngine, partner: BenchPartner) -> int:
    async with db.connect() as conn:
        return (await pool_balance(conn, partner.scope, partner.pool_id)).micro


async def check_phase(
    db: AsyncEngine,
    partner: BenchPartner,
    *,
    prefix: str,
    applied: dict[str, int],
    balance_before: int,
    sent_keys: set[str] | None = None,
    action_ids: dict[str, str] | None = None,
    replays: Sequence[tuple[str, str]] = (),
    extra_200: Sequence[str] = (),
    expect_all_sent_applied: bool = False,
) -> Check:
    """Prove that every key answered as applied was applied exactly once, and nothing else.

    Run it when the phase is over (no request of this prefix in flight) and before the next
    phase debits the same pool: `balance_before` is the pool's balance when the phase started.
    """
    check = Check(answered_applied=len(applied), tokens_answered=sum(applied.values()))
    async with db.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT idempotency_key, id, tokens_distributed FROM actions "
                    "WHERE partner_id = :partner_id AND environment = :environment "
                    "AND starts_with(idempotency_key, :prefix)"
                ),
                {**partner.scope.params, "prefix": prefix},
            )
        ).all()
        balance_after = (await pool_balance(conn, partner.scope, partner.pool_id)).micro
    in_rows = {key: (action_id, int(tokens)) for key, action_id, tokens in rows}
    check.rows = len(rows)
    check.tokens_in_rows = sum(tokens for _, tokens in in_rows.values())
    check.pool_debited = balance_before - balance_after

    if len(in_rows) != len(rows):
        check.problems.append("a key has more than one action row")
    if set(in_rows) != set(applied):
        unanswered = len(set(in_rows) - set(applied))
        lost = len(set(applied) - set(in_rows))
        check.problems.append(
            f"rows and answers disagree: {unanswered} rows never answered 200, "
            f"{lost} answers 200 without a row"
        )
    wrong = [k for k, tokens in applied.items() if k in in_rows and in_rows[k][1] != tokens]
    if wrong:
        check.problems.append(f"{len(wrong)} rows hold other tokens than answered")
    if check.pool_debited != check.tokens_answered:
        check.problems.append(
            f"pool debited {Tokens(check.pool_debited).format()}, "
            f"answers sum to {Tokens(check.tokens_answered).format()}"
        )
    if extra_200:
        check.problems.append(f"{len(extra_200)} keys were answered 200 more than once")
    if sent_keys is not None:
        if not sent_keys >= set(in_rows):
            check.problems.append("rows exist for keys that were never sent")
        never = len(sent_keys - set(in_rows))
        if expect_all_sent_applied and never:
            # Only meaningful when no request failed: then every distinct key must have landed.
            check.problems.append(f"{never} distinct keys sent were never applied")
    if action_ids is not None:
        if any(in_rows.get(k, ("",))[0] != a for k, a in action_ids.items()):
            check.problems.append("an answered actionId differs from the stored row")
        mismatched = [k for k, original in replays if action_ids.get(k) != original]
        if mismatched:
            check.problems.append(
                f"{len(mismatched)} IDEMPOTENT answers name another action than the applied one"
            )

    async with db.connect() as conn:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        report = await verify_ledger(conn, partner.scope)
        await conn.rollback()
    check.ledger_ok = report.ok
    if not report.ok:
        check.problems.append(report.render())
    return check
