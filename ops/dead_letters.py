"""Dead letters: messages Dramatiq gave up on (a domain error, or retries exhausted).

The Redis broker keeps them per queue in `<namespace>:<queue>.XQ` (ids by time) and
`<namespace>:<queue>.XQ.msgs` (the encoded messages) for 7 days. Operators list them, requeue
them once the cause is fixed (the message goes back through the broker's own enqueue with a
fresh id and its retry count reset), or purge them. Messages carry ids only, never secrets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from workers.broker import QUEUES

NAMESPACE = "dramatiq"


@dataclass(frozen=True)
class DeadLetter:
    queue: str
    redis_id: str
    message: dramatiq.Message[Any]
    dead_at: datetime

    def summary(self) -> dict[str, Any]:
        traceback = str(self.message.options.get("traceback") or "")
        return {
            "queue": self.queue,
            "id": self.redis_id,
            "messageId": self.message.message_id,
            "actor": self.message.actor_name,
            "args": list(self.message.args),
            "retries": self.message.options.get("retries", 0),
            "deadAt": self.dead_at.isoformat(),
            "error": traceback.strip().splitlines()[-1] if traceback else None,
        }


def _keys(queue: str) -> tuple[str, str]:
    xq = f"{NAMESPACE}:{queue}.XQ"
    return xq, f"{xq}.msgs"


def list_dead(
    client: redis.Redis, queues: tuple[str, ...] = QUEUES, limit: int = 100
) -> list[DeadLetter]:
    found: list[DeadLetter] = []
    for queue in queues:
        xq, msgs = _keys(queue)
        entries: list[tuple[bytes, float]] = client.zrange(xq, 0, limit - 1, withscores=True)  # type: ignore[assignment]
        for raw_id, score in entries:
            encoded = client.hget(msgs, raw_id)
            if not isinstance(encoded, bytes):
                continue
            found.append(
                DeadLetter(
                    queue=queue,
                    redis_id=raw_id.decode(),
                    message=dramatiq.Message.decode(encoded),
                    dead_at=datetime.fromtimestamp(float(score) / 1000, UTC),
                )
            )
    return found


def requeue(client: redis.Redis, broker: RedisBroker, letters: list[DeadLetter]) -> int:
    """Put dead letters back on their queues (retries reset), then drop them from the XQ."""
    for letter in letters:
        # A fresh message (Message.copy would merge the old options back in): same id, actor
        # and arguments, without the failure's retry count and traceback.
        options = {
            k: v
            for k, v in letter.message.options.items()
            if k not in {"retries", "traceback", "redis_message_id", "eta"}
        }
        fresh: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=letter.queue,
            actor_name=letter.message.actor_name,
            args=letter.message.args,
            kwargs=letter.message.kwargs,
            options=options,
            message_id=letter.message.message_id,
        )
        broker.enqueue(fresh)
        xq, msgs = _keys(letter.queue)
        client.zrem(xq, letter.redis_id)
        client.hdel(msgs, letter.redis_id)
    return len(letters)


def purge(client: redis.Redis, letters: list[DeadLetter]) -> int:
    for letter in letters:
        xq, msgs = _keys(letter.queue)
        client.zrem(xq, letter.redis_id)
        client.hdel(msgs, letter.redis_id)
    return len(letters)
