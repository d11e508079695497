"""A periodic tick: what the scheduler enqueues, and how often. Each actor module lists its own
in `TICKS`; `workers.actors.all_ticks()` gathers them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Tick:
    name: str
    seconds: float
    send: Callable[[], object]
