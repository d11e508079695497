"""Private PostgreSQL and Redis servers that a fault test may kill and restart.

They live in `ops.private_servers` (the chaos harness and the soak use them too); this module
keeps the name the fault tests import.
"""

from __future__ import annotations

from ops.private_servers import PrivatePostgres, PrivateRedis

__all__ = ["PrivatePostgres", "PrivateRedis"]
