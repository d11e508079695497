"""Typed application state (aiohttp's AppKey), one key per resource."""

from __future__ import annotations

import redis.asyncio as aioredis
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.crypto import SecretBox
from engine.group_commit import GroupCommitter
from engine.settings import Settings
from engine.vendors import Vendors
from workers.dispatch import Dispatcher, Nudge

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", AsyncEngine)
REDIS = web.AppKey("redis", aioredis.Redis)
SECRET_BOX = web.AppKey("secret_box", SecretBox)
GROUP_COMMIT = web.AppKey("group_commit", GroupCommitter)
DISPATCH = web.AppKey("dispatch", Dispatcher)  # nudges workers (batches); see http_front.batches
NUDGE = web.AppKey("relay_nudge", Nudge)  # post-commit nudge of the outbox relay
VENDORS = web.AppKey(
    "vendors", Vendors
)  # voucher vendors (marketplace vendor path, reconciliation)
