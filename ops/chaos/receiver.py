"""A flaky webhook receiver on loopback: random 500s, answers slower than the engine waits, and
an outage window, all drawn from a seeded random generator.

Every request is kept raw (path, timestamp, signature, body); the checks verify them afterwards
with `sir_client.webhooks` and each endpoint's secret, since an endpoint registered during the
run is known to the harness only once its registration is answered. Only a request answered 2xx
promptly counts as delivered: the engine treats anything else as a failure and retries it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web

from ops.processes import free_port


@dataclass(frozen=True)
class Receipt:
    path: str
    timestamp: str
    signature: str
    body: bytes
    received_at: float  # unix time, for the signature's freshness check


@dataclass
class FlakyReceiver:
    """`fail_rate` of requests get a 500, `slow_rate` get an answer after `slow_seconds` (past
    the engine's 5 s timeout), and every request between `outage_from` and `outage_until`
    (monotonic clock; see `schedule_outage`) gets a 503."""

    seed: int
    fail_rate: float = 0.1
    slow_rate: float = 0.02
    slow_seconds: float = 6.0
    outage_from: float = 0.0
    outage_until: float = 0.0
    port: int = 0
    delivered: list[Receipt] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(f"receiver-{self.seed}")

    def url(self, label: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{label}"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.outage_from <= time.monotonic() < self.outage_until:
            self.answers["outage 503"] += 1
            return web.Response(status=503, text="outage")
        draw = self._rng.random()
        if draw < self.fail_rate:
            self.answers["random 500"] += 1
            return web.Response(status=500, text="flaky")
        if draw < self.fail_rate + self.slow_rate:
            self.answers["slow"] += 1
            await asyncio.sleep(self.slow_seconds)
            return web.Response(text="late")
        self.answers["200"] += 1
        self.delivered.append(
            Receipt(
                path=request.match_info["label"],
                timestamp=request.headers.get("X-SIR-Timestamp", ""),
                signature=request.headers.get("X-SIR-Signature", ""),
                body=body,
                received_at=time.time(),
            )
        )
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook/{label}", self._hook)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def schedule_outage(self, start: float, seconds: float) -> None:
        """Answer 503 to everything from monotonic time `start` for `seconds`."""
        self.outage_from, self.outage_until = start, start + seconds

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
