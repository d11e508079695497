"""`sir-engine dead-letters` against real Redis, with a message dead-lettered by Dramatiq itself."""

from __future__ import annotations

import json
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from tests.conftest import sir_engine


def _dead_letter(redis_url: str, queue: str, actor: str, *args: Any) -> str:
    """Enqueue a message, take it as a worker would, and nack it: Dramatiq moves it to the XQ."""
    broker = RedisBroker(url=redis_url)
    broker.declare_queue(queue)
    message: dramatiq.Message[Any] = dramatiq.Message(
        queue_name=queue,
        actor_name=actor,
        args=args,
        kwargs={},
        options={"traceback": "Traceback...\nNotFound: batch gone"},
    )
    broker.enqueue(message)
    consumer = broker.consume(queue, prefetch=1, timeout=1000)
    received = next(m for m in consumer if m is not None)
    consumer.nack(received)
    consumer.close()
    broker.close()
    return received.message_id


def test_list_requeue_and_purge(services):
    client = redis.Redis.from_url(services.redis_url)
    for key in client.scan_iter("dramatiq:maintenance*"):
        client.delete(key)
    env = services.env()
    first = _dead_letter(services.redis_url, "maintenance", "audit_ledger")
    second = _dead_letter(services.redis_url, "maintenance", "audit_ledger", "x")

    listed = sir_engine("dead-letters", "list", "--queue", "maintenance", env=env)
    assert listed.returncode == 0, listed.stderr
    letters = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {letter["messageId"] for letter in letters} == {first, second}
    assert all(
        letter["actor"] == "audit_ledger" and letter["error"] == "NotFound: batch gone"
        for letter in letters
    )

    refused = sir_engine("dead-letters", "requeue", "--queue", "maintenance", env=env)
    assert refused.returncode == 2  # neither --id nor --all: nothing is touched
    assert client.zcard("dramatiq:maintenance.XQ") == 2

    requeued = sir_engine(
        "dead-letters", "requeue", "--queue", "maintenance", "--id", first, env=env
    )
    assert requeued.returncode == 0 and "requeued 1" in requeued.stdout
    assert client.zcard("dramatiq:maintenance.XQ") == 1
    back = [dramatiq.Message.decode(raw) for raw in client.hvals("dramatiq:maintenance.msgs")]
    assert [m.message_id for m in back] == [first]
    assert "traceback" not in back[0].options and "retries" not in back[0].options

    purged = sir_engine("dead-letters", "purge", "--queue", "maintenance", "--all", env=env)
    assert purged.returncode == 0 and "purged 1" in purged.stdout
    assert client.zcard("dramatiq:maintenance.XQ") == 0
    for key in client.scan_iter("dramatiq:maintenance*"):
        client.delete(key)
