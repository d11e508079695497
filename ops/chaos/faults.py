"""The fault schedule, drawn from the seed, and the injections themselves.

Kinds: a worker group killed with SIGKILL (and started again), Redis restarted empty (every
queued message, replay record and rate-limit counter lost), PostgreSQL restarted (connections
and transactions in flight cut), a front killed with SIGKILL (and started again; the other front
on the shared port keeps serving). Every kind comes once before any comes twice, in a seeded
order, at seeded times spread over the load.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from ops.chaos.cluster import Cluster

log = logging.getLogger("sir.chaos")

KINDS = ("kill -9 worker", "restart redis (empty)", "restart postgres", "kill -9 front")


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the load started
    kind: str


@dataclass
class Injected:
    fault: Fault
    target: str
    seconds: float  # how long the injection (and restart) took
    ok: bool


def schedule(seed: int, load_seconds: float, count: int) -> list[Fault]:
    """`count` faults between 10% and 85% of the load, in seeded order and times."""
    rng = random.Random(f"faults-{seed}")
    kinds: list[str] = []
    while len(kinds) < count:
        cycle = list(KINDS)
        rng.shuffle(cycle)
        kinds.extend(cycle)
    start, end = 0.1 * load_seconds, 0.85 * load_seconds
    step = (end - start) / max(count, 1)
    times = [start + step * i + rng.uniform(0, step * 0.6) for i in range(count)]
    return [Fault(at, kind) for at, kind in zip(times, kinds[:count], strict=True)]


async def inject(cluster: Cluster, fault: Fault, rng: random.Random) -> Injected:
    started = time.monotonic()
    ok = True
    if fault.kind == "kill -9 worker":
        target = f"worker-{rng.randrange(cluster.workers)}"
        cluster.kill(target)
        await asyncio.sleep(0.5)
        cluster.start_worker(int(target.split("-")[1]))
    elif fault.kind == "restart redis (empty)":
        target = "redis"
        await asyncio.to_thread(cluster.restart_redis)
    elif fault.kind == "restart postgres":
        target = "postgres"
        await asyncio.to_thread(cluster.restart_postgres)
    else:
        target = f"front-{rng.randrange(cluster.fronts)}"
        cluster.kill(target)
        await asyncio.sleep(0.5)
        cluster.start_front(int(target.split("-")[1]))
        ok = await cluster.await_listening(target, timeout=30)
    seconds = time.monotonic() - started
    log.info("fault %s on %s took %.1f s", fault.kind, target, seconds)
    return Injected(fault, target, seconds, ok)


async def run_schedule(
    cluster: Cluster, faults: list[Fault], load_started: float, seed: int
) -> list[Injected]:
    """Inject each fault at its time (monotonic seconds after `load_started`)."""
    rng = random.Random(f"targets-{seed}")
    done: list[Injected] = []
    for fault in faults:
        delay = load_started + fault.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        done.append(await inject(cluster, fault, rng))
    return done
