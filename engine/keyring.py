"""The keyring: which API key a request names, and the state of its partner, read fast.

Every partner request looks its key up (by the keyed hash of a secret key, or by a publishable
key) together with the partner's status, tier, features, IP allowlist and rate-limit override.

Caching, and why a TTL instead of pub/sub. The contract lets key and partner state live in
process memory only if revocation, deactivation and status changes reach every process within
one second. A cache entry here lives at most `TTL` (1 s), counted from *before* the query that
filled it, so any change committed to PostgreSQL is seen by every process within a second by
construction, whoever made the change and however it was made (use case, operator SQL, another
host). Pub/sub invalidation would need a subscriber connection per process that can silently
drop messages while it reconnects (Redis pub/sub is fire-and-forget), which is exactly when a
revoked key would keep working; and every writer would have to remember to publish. The price
of the TTL is one indexed query per key per second per process, which is nothing next to the
request rate it serves. `invalidate()` drops entries at once for changes made in this process.

Unknown, revoked (`revoked_at` set) and deactivated (`is_active` false) keys all read as None:
the caller answers INVALID_API_KEY without saying which. Negative answers are not cached, so a
key issued a moment ago works at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from engine.crypto import SecretBox, mask
from engine.scope import Environment
from engine.tables import api_keys, partners

log = logging.getLogger("sir.keyring")

TTL = 1.0  # seconds; the contract's bound on how stale key and partner state may be
KeyKind = Literal["secret", "publishable"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class KeyRecord:
    """One API key as a request sees it. Never log `hmac_secret`."""

    key_id: str
    partner_id: str
    environment: Environment  # from the row; the caller checks it against the key's prefix
    kind: KeyKind  # how it was looked up: by its secret key or by its publishable key
    is_active: bool
    revoked: bool
    expires_at: datetime | None
    # None: no allowlist (NULL or empty); for the key that means the partner's applies, for the
    # partner that everyone may call. Entries that do not parse are dropped but the list still
    # counts as set, so an allowlist made only of broken entries admits nobody (fail closed).
    key_ip_allowlist: tuple[Network, ...] | None
    hmac_secret: str = field(repr=False)
    partner_status: str
    tier: str
    enabled_features: tuple[str, ...]
    partner_ip_allowlist: tuple[Network, ...] | None
    rate_limit_override: dict[str, int] | None

    @property
    def usable(self) -> bool:
        return self.is_active and not self.revoked

    @property
    def ip_allowlist(self) -> tuple[Network, ...] | None:
        """The allowlist that applies: the key's own, else the partner's (None = everyone)."""
        if self.key_ip_allowlist is not None:
            return self.key_ip_allowlist
        return self.partner_ip_allowlist

    def ip_allowed(self, ip: str | None) -> bool:
        """Whether a client IP may use this key. An unparsable IP passes only when no list applies."""
        allowlist = self.ip_allowlist
        if allowlist is None:
            return True
        address = parse_ip(ip)
        return address is not None and any(address in net for net in allowlist)


def parse_ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address, with IPv4-mapped IPv6 (`::ffff:1.2.3.4`) read as the IPv4 it carries."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _networks(entries: Sequence[str] | None, owner: str) -> tuple[Network, ...] | None:
    if not entries:
        return None
    nets: list[Network] = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            log.warning("ignoring unparsable allowlist entry %r of %s", entry, owner)
    return tuple(nets)


_COLUMNS = (
    api_keys.c.id,
    api_keys.c.partner_id,
    api_keys.c.environment,
    api_keys.c.is_active,
    api_keys.c.revoked_at,
    api_keys.c.expires_at,
    api_keys.c.ip_allowlist,
    api_keys.c.hmac_secret_enc,
    partners.c.status,
    partners.c.tier,
    partners.c.enabled_features,
    partners.c.ip_allowlist.label("partner_ip_allowlist"),
    partners.c.rate_limit_override,
)


class Keyring:
    """Looks keys up in PostgreSQL, caching each answer for at most `ttl` seconds."""

    def __init__(self, db: AsyncEngine, box: SecretBox, *, ttl: float = TTL) -> None:
        if ttl > TTL:
            raise ValueError(f"a keyring TTL above {TTL}s breaks the contract's revocation bound")
        self._db = db
        self._box = box
        self._ttl = ttl
        self._cache: dict[tuple[KeyKind, bytes | str], tuple[float, KeyRecord]] = {}
        # One query per key in flight: a burst of requests on a cold key waits for one answer.
        self._inflight: dict[tuple[KeyKind, bytes | str], asyncio.Task[KeyRecord | None]] = {}

    async def by_secret_key(self, secret_key: str) -> KeyRecord | None:
        """The usable key whose secret key this is, or None (unknown, revoked or inactive)."""
        return await self._get(("secret", self._box.hash_secret_key(secret_key)), secret_key)

    async def by_publishable_key(self, public_key: str) -> KeyRecord | None:
        """The usable key whose publishable key this is, or None."""
        return await self._get(("publishable", public_key), public_key)

    def invalidate(self) -> None:
        """Forget everything now (for changes made by this process; others wait out the TTL)."""
        self._cache.clear()

    async def _get(self, lookup: tuple[KeyKind, bytes | str], raw_key: str) -> KeyRecord | None:
        hit = self._cache.get(lookup)
        if hit is not None and hit[0] > time.monotonic():
            record: KeyRecord | None = hit[1]
        else:
            task = self._inflight.get(lookup)
            if task is None:
                task = asyncio.create_task(self._load(lookup, raw_key, time.monotonic()))
                self._inflight[lookup] = task
                task.add_done_callback(lambda _: self._inflight.pop(lookup, None))
            # shield: a caller that goes away does not cancel the query others are waiting on.
            record = await asyncio.shield(task)
        return record if record is not None and record.usable else None

    async def _load(
        self, lookup: tuple[KeyKind, bytes | str], raw_key: str, started: float
    ) -> KeyRecord | None:
        kind, value = lookup
        column = api_keys.c.secret_key_hash if kind == "secret" else api_keys.c.public_key
        query = (
            select(*_COLUMNS)
            .select_from(api_keys.join(partners, partners.c.id == api_keys.c.partner_id))
            .where(column == value)
        )
        async with self._db.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            log.debug("no api key %s", mask(raw_key))
            return None
        record = _record(row, kind, self._box)
        if len(self._cache) > 10_000:  # keys are few; this only bounds a pathological process
            self._sweep(started)
        # Expiry counts from before the query, so the entry is never older than `ttl`.
        self._cache[lookup] = (started + self._ttl, record)
        return record

    def _sweep(self, now: float) -> None:
        for lookup in [k for k, (expires, _) in self._cache.items() if expires <= now]:
            del self._cache[lookup]


def _record(row: Any, kind: KeyKind, box: SecretBox) -> KeyRecord:
    override = row["rate_limit_override"]
    return KeyRecord(
        key_id=row["id"],
        partner_id=row["partner_id"],
        environment=row["environment"],
        kind=kind,
        is_active=bool(row["is_active"]),
        revoked=row["revoked_at"] is not None,
        expires_at=row["expires_at"],
        key_ip_allowlist=_networks(row["ip_allowlist"], f"api key {row['id']}"),
        hmac_secret=box.decrypt(row["hmac_secret_enc"]),
        partner_status=row["status"],
        tier=row["tier"],
        enabled_features=tuple(row["enabled_features"] or ()),
        partner_ip_allowlist=_networks(row["partner_ip_allowlist"], f"partner {row['partner_id']}"),
        rate_limit_override=dict(override) if override else None,
    )
