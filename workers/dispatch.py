"""Sending work to the workers from outside them (the HTTP front), by actor name.

The front must not import the actors (that would bind a global broker to its environment) and
must not block its event loop on redis-py (`send` is synchronous, ~0.3 ms): the `Dispatcher`
builds messages by name on a broker of its own and sends them from a worker thread. A lost
send is never a lost event: the outbox relay tick and the webhook retry pick-up find anything
that was committed but not enqueued.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker

log = logging.getLogger("sir.dispatch")


class Dispatcher:
    def __init__(self, redis_url: str) -> None:
        self._broker = RedisBroker(url=redis_url)

    def send(self, queue: str, actor: str, *args: Any) -> None:
        """Enqueue `actor(*args)` on `queue` (blocking)."""
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=queue, actor_name=actor, args=args, kwargs={}, options={}
        )
        self._broker.enqueue(message)

    async def send_soon(self, queue: str, actor: str, *args: Any) -> bool:
        """Enqueue from an event loop without blocking it. False (logged) when Redis refuses:
        the periodic ticks will pick the work up."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.send, queue, actor, *args)
        except Exception as exc:  # noqa: BLE001 - a best-effort nudge; the ticks are the guarantee
            log.warning("could not enqueue %s on %s: %s", actor, queue, type(exc).__name__)
            return False
        return True

    def close(self) -> None:
        self._broker.close()


class Nudge:
    """A throttled, fire-and-forget `send_soon` of one message: at most one per `interval`,
    and a trailing one for calls that arrived inside the interval, so the last burst of work
    is not left for the periodic tick."""

    def __init__(
        self, dispatcher: Dispatcher, queue: str, actor: str, *, interval: float = 0.1
    ) -> None:
        self._dispatcher = dispatcher
        self._queue = queue
        self._actor = actor
        self._interval = interval
        self._last = 0.0
        self._trailing: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[bool]] = set()

    def __call__(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self._last + self._interval - loop.time()
        if wait <= 0:
            self._fire()
        elif self._trailing is None:
            self._trailing = loop.call_later(wait, self._fire)

    def _fire(self) -> None:
        self._trailing = None
        self._last = asyncio.get_running_loop().time()
        task = asyncio.ensure_future(self._dispatcher.send_soon(self._queue, self._actor))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
