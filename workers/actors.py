"""Every actor module, imported together: `sir-engine worker` runs `dramatiq workers.actors`.

Each module owns one kind of work and its queue (distribution, webhooks, sweeps, maintenance)
and lists its periodic ticks in `TICKS`.
"""

from __future__ import annotations

from workers import (
    batch_actors,
    dashboard_actors,
    maintenance,
    order_actors,
    outbox_actors,
    sweep_actors,
    webhook_actors,
)
from workers.broker import broker  # noqa: F401 - configures the global broker first
from workers.maintenance import audit_ledger
from workers.ticks import Tick

MODULES = [
    maintenance,
    outbox_actors,
    batch_actors,
    webhook_actors,
    sweep_actors,
    order_actors,
    dashboard_actors,
]

__all__ = ["all_ticks", "audit_ledger"]


def all_ticks() -> list[Tick]:
    return [tick for module in MODULES for tick in getattr(module, "TICKS", [])]
