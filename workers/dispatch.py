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
