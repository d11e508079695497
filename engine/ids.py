"""Identifiers the partner sees: 24 lowercase hex characters, ObjectId-style.

The first 4 bytes are the creation time in seconds, so ids sort roughly by age (useful for
newest-first cursors); the other 8 bytes are random, so ids are not guessable.
"""

from __future__ import annotations

import os
import time


def new_id() -> str:
    """A fresh 24-hex id: 8 hex of unix seconds, then 16 hex of randomness."""
    return f"{int(time.time()) & 0xFFFFFFFF:08x}{os.urandom(8).hex()}"


def new_event_id() -> str:
    """Event ids carry the `evt_` prefix webhook receivers deduplicate on."""
    return "evt_" + new_id()
