"""Per-process resources for actors, created lazily on the worker's own event loop.

Dramatiq's AsyncIO middleware runs one event loop thread per worker process; an asyncpg pool
belongs to the loop that created it, so the engine is made on first use from inside that loop.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from engine.crypto import SecretBox
from engine.db import create_engine
from engine.settings import Settings, load_settings
from engine.vendors import Vendors

_engine: AsyncEngine | None = None
_settings: Settings | None = None
_box: SecretBox | None = None
_vendors: Vendors | None = None


def settings() -> Settings:
    global _settings
    if _settings is None:
        _settings = load_settings()
    return _settings


def database() -> AsyncEngine:
    global _engine
    if _engine is None:
        _engine = create_engine(settings().database_url, pool_size=5, max_overflow=5)
    return _engine


def secret_box() -> SecretBox:
    global _box
    if _box is None:
        _box = SecretBox(settings().master_key)
    return _box


def vendors() -> Vendors:
    global _vendors
    if _vendors is None:
        _vendors = Vendors(database(), secret_box())
    return _vendors
