"""The scheduler: one process that only enqueues ticks; workers do the work.

A Redis lock (SET NX with a TTL, renewed while alive) lets a second scheduler start as a hot
standby without double-firing: only the lock holder enqueues.
"""

from __future__ import annotations

import logging
import secrets
import signal
import threading
from collections.abc import Callable

import redis
from apscheduler.schedulers.blocking import BlockingScheduler

from workers.ticks import Tick

log = logging.getLogger("sir.scheduler")

LOCK_KEY = "sir:scheduler:leader"
LOCK_TTL_SECONDS = 30

# Renew only our own lock: compare-and-extend, atomically.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class LeaderLock:
    def __init__(
        self, client: redis.Redis, key: str = LOCK_KEY, ttl: int = LOCK_TTL_SECONDS
    ) -> None:
        self.client = client
        self.key = key
        self.ttl = ttl
        self.token = secrets.token_hex(16)
        self._renew = client.register_script(_RENEW)

    def hold(self) -> bool:
        """Take the lock, or renew it if it is ours. True when this process leads."""
        try:
            if self.client.set(self.key, self.token, nx=True, ex=self.ttl):
                return True
            return bool(self._renew(keys=[self.key], args=[self.token, self.ttl * 1000]))
        except redis.RedisError as exc:
            log.warning("scheduler lock unavailable: %s", exc)
            return False

    def release(self) -> None:
        try:
            if self.client.get(self.key) == self.token.encode():
                self.client.delete(self.key)
        except redis.RedisError:
            pass


def ticks() -> list[Tick]:
    """Every actor module's TICKS (relay, webhook pick-up, sweeps, batches, maintenance)."""
    from workers.actors import all_ticks

    return all_ticks()


def run(redis_url: str) -> None:
    """Run until SIGINT/SIGTERM. Each tick fires only while this process holds the lock."""
    lock = LeaderLock(redis.Redis.from_url(redis_url, socket_timeout=5))
    scheduler = BlockingScheduler(timezone="UTC")

    def guarded(tick: Tick) -> Callable[[], None]:
        def fire() -> None:
            if lock.hold():
                tick.send()
                log.info("enqueued tick %s", tick.name)

        return fire

    for tick in ticks():
        scheduler.add_job(
            guarded(tick),
            "interval",
            seconds=tick.seconds,
            id=tick.name,
            max_instances=1,
            coalesce=True,
        )
    scheduler.add_job(lock.hold, "interval", seconds=LOCK_TTL_SECONDS // 3, id="leader-lock")

    def stop(*_: object) -> None:
        threading.Thread(target=scheduler.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    leading = lock.hold()
    log.info("scheduler started (%s)", "leader" if leading else "standby")
    try:
        scheduler.start()
    finally:
        lock.release()
        log.info("scheduler stopped")
