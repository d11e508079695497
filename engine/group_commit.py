"""Group commit: concurrent submissions of one partner-environment share one transaction.

Every action of a partner debits the same pool row, and its lock is held until commit, so one
transaction per action caps a partner at one commit time per action. Here each process keeps a
lane per partner-environment: submissions queue while the previous batch commits, then up to
`max_batch` of them go to `apply_actions` in one transaction (flush when the previous batch
commits, no timer: the brief's prototype found a window only smooths the tail). Each action
keeps its own idempotency row, outcome and error.

If a batch's transaction fails for an unexpected reason (a deadlock, a bug tripped by one odd
action), its actions are retried one by one, so one poisoned action cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.action_request import ActionRequest
from engine.errors import SirError
from engine.scope import Scope
from engine.submit import Applied, Outcome, answer, apply_in_transaction

log = logging.getLogger("sir.group_commit")

MAX_BATCH = 64  # the brief's measurement: 64 beat 256 (a batch should finish in a few ms)


@dataclass
class _Lane:
    queue: deque[tuple[ActionRequest, asyncio.Future[Outcome]]] = field(default_factory=deque)
    draining: bool = False


@dataclass
class GroupStats:
    batches: int = 0
    actions: int = 0
    isolated_retries: int = 0


class GroupCommitter:
    """Coalesces `submit` calls per scope. Create and use it on one event loop."""

    def __init__(
        self,
        db: AsyncEngine,
        *,
        max_batch: int = MAX_BATCH,
        after_commit: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.max_batch = max_batch
        # Called (synchronously, must not block) after a batch that applied actions committed:
        # the front uses it to nudge the outbox relay, so events leave right after commit.
        self.after_commit = after_commit
        self.stats = GroupStats()
        self._lanes: dict[Scope, _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, scope: Scope, request: ActionRequest) -> dict[str, object]:
        """Distribute one action; returns its response body or raises its error (as
        `engine.submit.answer` does)."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        lane = self._lanes.setdefault(scope, _Lane())
        lane.queue.append((request, future))
        if not lane.draining:
            # No await between the check and the flag: one event loop, so no race.
            lane.draining = True
            task = asyncio.create_task(self._drain(scope, lane))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return answer(await future)

    async def _drain(self, scope: Scope, lane: _Lane) -> None:
        try:
            while lane.queue:
                batch = [lane.queue.popleft() for _ in range(min(self.max_batch, len(lane.queue)))]
                live = [(request, future) for request, future in batch if not future.cancelled()]
                if not live:
                    continue
                results = await self._commit(scope, [request for request, _ in live])
                if self.after_commit is not None and any(isinstance(r, Applied) for r in results):
                    self.after_commit()
                for (_, future), result in zip(live, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            lane.draining = False
            if not lane.queue:
                self._lanes.pop(scope, None)

    async def _commit(
        self, scope: Scope, requests: list[ActionRequest]
    ) -> list[Outcome | BaseException]:
        self.stats.batches += 1
        self.stats.actions += len(requests)
        try:
            return list(await apply_in_transaction(self.db, scope, requests))
        except (SirError, DBAPIError, OSError) as exc:
            if len(requests) == 1:
                return [exc]
            # Isolate: the batch failed as a whole; give every action its own transaction.
            log.warning(
                "batch of %d failed (%s); retrying its actions one by one",
                len(requests),
                type(exc).__name__,
            )
            self.stats.isolated_retries += 1
            results: list[Outcome | BaseException] = []
            for request in requests:
                results.extend(await self._commit(scope, [request]))
            return results

    async def close(self) -> None:
        """Wait for the batches in flight (on shutdown, so no accepted request is dropped)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
