"""The soak: a bounded run at a steady open-loop load, watching memory and latency over time.

`python -m ops.chaos.soak --minutes 20 --rate 20` deploys a front, a worker group and the
scheduler on private loopback servers (`ops.chaos.cluster`), sends signed requests at a fixed
rate (open loop: a request leaves on schedule whether or not the previous ones were answered;
submits with fresh keys, 10% replays, balance reads, with an action.completed webhook to a
receiver that always answers), and every `--sample-seconds` records the RSS of every process
(a worker group's forked processes and PostgreSQL's backends included) with psutil. Latency is
kept per request and summarised per minute (p50/p99).

Pass: every engine process (front, worker, scheduler) grows less than `--max-growth` (default
10%) from the end of the warm-up to the end, judged on the mean of the first and last three
samples so one sample's noise does not decide. PostgreSQL and Redis are reported, not judged:
their RSS counts shared buffers and data as they are first touched. Exit 1 on a failed
criterion, or when answers other than 200/201/409 IDEMPOTENT came back.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from ops.chaos.cluster import Cluster
from ops.chaos.load import error_code
from ops.chaos.receiver import FlakyReceiver
from sir_client import SirClient, segment

API = "/v1/partner"
ENGINE_ROLES = ("front", "worker", "scheduler")
MAX_IN_FLIGHT = 500
MIB = 1024 * 1024


@dataclass
class Samples:
    rss: list[dict[str, Any]] = field(default_factory=list)  # {t, role: MiB, ...}
    latency: list[tuple[float, float, str]] = field(default_factory=list)  # (t, seconds, kind)
    answers: Counter[str] = field(default_factory=Counter)
    skipped: int = 0  # scheduled while MAX_IN_FLIGHT were outstanding


def rss_by_role(cluster: Cluster) -> dict[str, float]:
    """MiB of resident memory per role, summed over the role's processes."""
    out: dict[str, float] = {}
    for name, pids in cluster.pids().items():
        role = name.split("-")[0] if name.split("-")[0] in ENGINE_ROLES else name
        total = 0
        for pid in pids:
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                continue
        out[name if role in ENGINE_ROLES else role] = round(total / MIB, 2)
    return out


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) in MiB per hour."""
    if len(points) < 2:
        return 0.0
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return 0.0
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return cov / var * 3600


def summarise(samples: Samples, warmup: float, max_growth: float) -> dict[str, Any]:
    after = [s for s in samples.rss if s["t"] >= warmup] or samples.rss
    roles = sorted({k for s in after for k in s if k != "t"})
    memory: dict[str, Any] = {}
    passed = True
    for role in roles:
        points = [(s["t"], s[role]) for s in after if role in s]
        if not points:
            continue
        head = statistics.fmean(y for _, y in points[:3])
        tail = statistics.fmean(y for _, y in points[-3:])
        growth = (tail - head) / head if head else 0.0
        judged = role.split("-")[0] in ENGINE_ROLES
        ok = growth < max_growth if judged else None
        passed = passed and (ok is not False)
        memory[role] = {
            "startMiB": round(head, 1),
            "endMiB": round(tail, 1),
            "growthPct": round(100 * growth, 1),
            "slopeMiBPerHour": round(slope_per_hour(points), 1),
            "judged": judged,
            "pass": ok,
        }
    per_minute: dict[int, list[float]] = defaultdict(list)
    for t, seconds, _ in samples.latency:
        per_minute[int(t // 60)].append(seconds)
    latency = []
    for minute in sorted(per_minute):
        values = sorted(per_minute[minute])
        latency.append(
            {
                "minute": minute + 1,
                "requests": len(values),
                "p50ms": round(1000 * values[len(values) // 2], 1),
                "p99ms": round(1000 * values[min(len(values) - 1, int(len(values) * 0.99))], 1),
            }
        )
    bad = {k: v for k, v in samples.answers.items() if k not in ("200", "201", "409 IDEMPOTENT")}
    return {
        "pass": passed and not bad,
        "memory": memory,
        "latencyPerMinute": latency,
        "answers": dict(samples.answers),
        "unexpectedAnswers": bad,
        "skipped": samples.skipped,
    }


async def drive(
    base_url: str,
    secret_key: str,
    hmac_secret: str,
    rate: float,
    until: float,
    seed: int,
    started: float,
    samples: Samples,
) -> None:
    """Open loop: request i leaves at started + i / rate."""
    rng = random.Random(f"soak-{seed}")
    applied: list[dict[str, Any]] = []
    in_flight: set[asyncio.Task[None]] = set()
    async with SirClient(base_url, secret_key, hmac_secret, timeout=30) as sir:

        async def one(kind: str, method: str, path: str, body: Any) -> None:
            sent = time.monotonic()
            try:
                response = await sir.request_raw(method, path, body)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                samples.answers[type(exc).__name__] += 1
                return
            samples.latency.append((sent - started, time.monotonic() - sent, kind))
            samples.answers[f"{response.status} {error_code(response)}".strip()] += 1
            if kind == "submit" and response.status == 200 and len(applied) < 10_000:
                applied.append(body)

        for i in range(10_000_000):  # bounded; the clock ends it
            due = started + i / rate
            if due >= until:
                break
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            if len(in_flight) >= MAX_IN_FLIGHT:
                samples.skipped += 1
                continue
            draw = rng.random()
            args: tuple[str, str, str, Any]
            if draw < 0.1 and applied:
                # The same key and body, the amount spelled with one more zero: equal after
                # parsing (a replay), but not the same bytes, so not a replayed signature when
                # two go out in the same second.
                original = rng.choice(applied)
                amount = original["amount"]
                respelled = amount + "0" if "." in amount else amount + ".0"
                replay = {**original, "amount": respelled}
                args = ("replay", "POST", f"{API}/actions/submit", replay)
            elif draw < 0.3 and applied:
                user = rng.choice(applied)["stakeholders"][0]["partnerUserId"]
                args = ("balance", "GET", f"{API}/users/{segment(user)}/balance", None)
            else:
                body = {
                    "idempotencyKey": f"soak-{seed}-{i}",
                    "actionType": "PURCHASE",
                    "amount": str(Decimal(rng.randint(100, 10_000)) / 100),
                    "stakeholders": [
                        {
                            "stakeholderTypeCode": "CUSTOMER",
                            "partnerUserId": f"soak-u{rng.randrange(500)}",
                        }
                    ],
                    "autoCreateUsers": True,
                }
                args = ("submit", "POST", f"{API}/actions/submit", body)
            task = asyncio.ensure_future(one(*args))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=60)


async def sample_memory(
    cluster: Cluster, started: float, until: float, every: float, samples: Samples
) -> None:
    for _ in range(1_000_000):  # bounded; the clock ends it
        now = time.monotonic()
        if now >= until:
            return
        row: dict[str, Any] = {"t": round(now - started, 1)}
        row.update(await asyncio.to_thread(rss_by_role, cluster))
        samples.rss.append(row)
        await asyncio.sleep(min(every, max(0.0, until - time.monotonic())))


async def run(options: argparse.Namespace) -> dict[str, Any]:
    directory = Path(tempfile.mkdtemp(prefix="sir-soak-"))
    cluster = Cluster(directory, fronts=1, workers=1, extra_env={"SIR_LOG_LEVEL": "WARNING"})
    receiver = FlakyReceiver(seed=options.seed, fail_rate=0.0, slow_rate=0.0)
    samples = Samples()
    try:
        await asyncio.to_thread(cluster.start_servers)
        tenant = await cluster.create_tenant()
        await receiver.start()
        await asyncio.to_thread(cluster.start_engine)
        async with SirClient(cluster.base_url, tenant.secret_key, tenant.hmac_secret) as sir:
            await sir.request(
                "POST",
                f"{API}/webhooks",
                {"url": receiver.url("soak"), "eventTypes": ["action.completed"]},
            )
        started = time.monotonic()
        until = started + options.minutes * 60
        await asyncio.gather(
            drive(
                cluster.base_url,
                tenant.secret_key,
                tenant.hmac_secret,
                options.rate,
                until,
                options.seed,
                started,
                samples,
            ),
            sample_memory(cluster, started, until, options.sample_seconds, samples),
        )
        result = summarise(samples, options.warmup_minutes * 60, options.max_growth)
        result["config"] = {
            "minutes": options.minutes,
            "rate": options.rate,
            "warmupMinutes": options.warmup_minutes,
            "sampleSeconds": options.sample_seconds,
            "maxGrowthPct": 100 * options.max_growth,
            "webhooksDelivered": receiver.answers.get("200", 0),
        }
        result["rss"] = samples.rss
        return result
    finally:
        await receiver.stop()
        await asyncio.to_thread(cluster.stop)
        shutil.rmtree(directory, ignore_errors=True)


def write(result: dict[str, Any], out: Path) -> None:
    """soak.json (summary and every sample) and soak-rss.csv (one row per sample)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    roles = sorted({k for s in result["rss"] for k in s if k != "t"})
    with (out / "soak-rss.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["t", *roles])
        writer.writeheader()
        writer.writerows(result["rss"])


def report(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        f"soak: {config['minutes']} min at {config['rate']} req/s open loop "
        f"(warm-up {config['warmupMinutes']} min, RSS every {config['sampleSeconds']} s)",
        "",
        f"{'process':<14} {'RSS start':>10} {'RSS end':>10} {'growth':>8} {'MiB/hour':>9}  verdict",
    ]
    for role, m in result["memory"].items():
        verdict = "-" if m["pass"] is None else ("pass" if m["pass"] else "FAIL")
        lines.append(
            f"{role:<14} {m['startMiB']:>9.1f}M {m['endMiB']:>9.1f}M {m['growthPct']:>7.1f}% "
            f"{m['slopeMiBPerHour']:>9.1f}  {verdict}"
        )
    lines += ["", f"{'minute':>6} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8}"]
    for row in result["latencyPerMinute"]:
        lines.append(f"{row['minute']:>6} {row['requests']:>9} {row['p50ms']:>8} {row['p99ms']:>8}")
    lines += [
        "",
        f"answers: {result['answers']}; skipped (in flight > {MAX_IN_FLIGHT}): {result['skipped']}",
        f"webhooks delivered: {config['webhooksDelivered']}",
        f"verdict: {'PASS' if result['pass'] else 'FAIL'} (engine processes grow < "
        f"{config['maxGrowthPct']:.0f}% after warm-up; only 200/201/409 IDEMPOTENT answers)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.chaos.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--rate", type=float, default=20, help="requests per second (default 20)")
    parser.add_argument("--warmup-minutes", type=float, default=None, help="default: 10%%, >= 1")
    parser.add_argument("--sample-seconds", type=float, default=10)
    parser.add_argument("--max-growth", type=float, default=0.10, help="fraction (default 0.10)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="ops/bench/results", help="where soak.json/csv go")
    options = parser.parse_args(argv)
    if options.warmup_minutes is None:
        options.warmup_minutes = min(max(1.0, 0.1 * options.minutes), options.minutes / 2)
    logging.basicConfig(level=logging.WARNING)

    async def bounded() -> dict[str, Any]:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)  # type: ignore[union-attr]
        return await asyncio.wait_for(run(options), timeout=options.minutes * 60 + 600)

    try:
        result = asyncio.run(bounded())
    except (asyncio.CancelledError, TimeoutError) as exc:
        print(f"soak stopped before its verdict: {type(exc).__name__}", file=sys.stderr)
        return 2
    write(result, Path(options.out))
    print(report(result))
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
