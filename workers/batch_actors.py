"""Batch distribution actors: `process_batch` (nudged by the front when a batch is accepted) and
the `resume_batches` tick that finds batches whose message was lost or whose worker died.

Both are idempotent: `engine.batches.process_batch` claims items with `FOR UPDATE SKIP LOCKED`
and commits each chunk with its items' results, so a second message for the same batch only
shares the work, and a re-run never applies an item twice.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import dramatiq

from engine import batches
from engine.errors import NotFound
from workers import runtime
from workers.broker import broker  # noqa: F401 - configures the global broker first
from workers.ticks import Tick

log = logging.getLogger("sir.workers")

# A batch still not COMPLETED this long after it was accepted is enqueued again. A batch that
# is merely slow (still being worked) gets a second worker, which SKIP LOCKED makes harmless.
RESUME_AFTER = timedelta(seconds=float(os.environ.get("SIR_BATCH_RESUME_AFTER_SECONDS", "60")))
RESUME_EVERY_SECONDS = int(os.environ.get("SIR_BATCH_RESUME_SECONDS", "30"))


@dramatiq.actor(queue_name="distribution", time_limit=30 * 60 * 1000)
async def process_batch(batch_id: str) -> None:
    """Distribute the batch's pending items (engine.batches.process_batch)."""
    try:
        progress = await batches.process_batch(runtime.database(), batch_id)
    except NotFound:
        log.warning("batch %s does not exist; message dropped", batch_id)
        return
    log.info(
        "batch %s: %d succeeded, %d failed in this run%s",
        batch_id,
        progress.succeeded,
        progress.failed,
        ", completed" if progress.completed else "",
    )


@dramatiq.actor(queue_name="distribution", time_limit=60 * 1000)
async def resume_batches() -> None:
    """Enqueue `process_batch` again for every batch left unfinished past RESUME_AFTER."""
    async with runtime.database().connect() as conn:
        stalled = await batches.stalled_batches(conn, older_than=RESUME_AFTER)
    for batch_id in stalled:
        process_batch.send(batch_id)
    if stalled:
        log.info("resumed %d unfinished batches", len(stalled))


TICKS = [Tick("resume_batches", RESUME_EVERY_SECONDS, resume_batches.send)]
