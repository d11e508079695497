"""API credentials: a publishable key, a secret key and an HMAC signing secret, shown once.

At rest the secret key exists only as a keyed hash (it is checked on every request) and the
HMAC secret is encrypted under SIR_MASTER_KEY (it must be recoverable to verify signatures).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit
from engine.crypto import SecretBox
from engine.errors import KeyNotUsable, NotFound, ValidationFailed
from engine.ids import new_id
from engine.outbox import Event, record_events
from engine.pagination import Page, fetch_page
from engine.partners import get_partner, normalize_cidrs
from engine.scope import Environment, Scope
from engine.tables import api_keys

_PREFIX = {"sandbox": "test", "production": "live"}


@dataclass(frozen=True)
class IssuedKeys:
    """What the partner sees exactly once. Never log `secret_key` or `hmac_secret`."""

    id: str
    partner_id: str
    name: str
    environment: Environment
    public_key: str
    secret_key: str
    hmac_secret: str
    expires_at: datetime | None

    def __repr__(self) -> str:  # keep secrets out of tracebacks and debug logs
        return f"IssuedKeys(id={self.id!r}, partner_id={self.partner_id!r}, environment={self.environment!r})"


def environment_of(key: str) -> Environment | None:
    """sandbox for `*_test_*`, production for `*_live_*`, None for anything else."""
    for env, word in _PREFIX.items():
        if key.startswith((f"pk_{word}_", f"sk_{word}_")):
            return env  # type: ignore[return-value]
    return None


async def issue_keys(
    conn: AsyncConnection,
    box: SecretBox,
    *,
    actor: str,
    partner_id: str,
    environment: Environment,
    name: str,
    expires_at: datetime | None = None,
    ip_allowlist: Sequence[str] | None = None,
    rotated_from_id: str | None = None,
) -> IssuedKeys:
    """Issue a new key pair and signing secret for a partner. Raises NotFound, ValidationFailed."""
    if environment not in _PREFIX:
        raise ValidationFailed({"environment": ["must be sandbox or production"]})
    await get_partner(conn, partner_id)
    word = _PREFIX[environment]
    issued = IssuedKeys(
        id=new_id(),
        partner_id=partner_id,
        name=name,
        environment=environment,
        public_key=f"pk_{word}_{secrets.token_hex(32)}",
        secret_key=f"sk_{word}_{secrets.token_hex(32)}",
        hmac_secret=secrets.token_hex(32),
        expires_at=expires_at,
    )
    await conn.execute(
        api_keys.insert().values(
            id=issued.id,
            partner_id=partner_id,
            environment=environment,
            name=name,
            public_key=issued.public_key,
            secret_key_hash=box.hash_secret_key(issued.secret_key),
            secret_key_last4=issued.secret_key[-4:],
            hmac_secret_enc=box.encrypt(issued.hmac_secret),
            expires_at=expires_at,
            ip_allowlist=list(ip_allowlist) if ip_allowlist is not None else None,
            rotated_from_id=rotated_from_id,
            created_by=actor,
        )
    )
    await audit.record(
        conn,
        actor=actor,
        action="api_key.issue",
        target_type="api_key",
        target_id=issued.id,
        after={
            "partnerId": partner_id,
            "environment": environment,
            "name": name,
            "publicKey": issued.public_key,
        },
    )
    return issued


# -- operator and portal management -----------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= _now():
        raise ValidationFailed({"expiresAt": ["must be in the future"]})


async def issue_keys_checked(
    conn: AsyncConnection,
    box: SecretBox,
    *,
    actor: str,
    partner_id: str,
    environment: Environment,
    name: str,
    expires_at: datetime | None = None,
    ip_allowlist: Sequence[str] | None = None,
) -> IssuedKeys:
    """`issue_keys` for outside input: name, expiry and allowlist CIDRs checked first.

    Raises ValidationFailed, NotFound (partner).
    """
    problems: dict[str, list[str]] = {}
    if not name.strip():
        problems["name"] = ["must not be empty"]
    if environment not in _PREFIX:
        problems["environment"] = ["must be sandbox or production"]
    if problems:
        raise ValidationFailed(problems)
    _check_expiry(expires_at)
    allowlist = normalize_cidrs(ip_allowlist, "ipAllowlist") if ip_allowlist is not None else None
    return await issue_keys(
        conn,
        box,
        actor=actor,
        partner_id=partner_id,
        environment=environment,
        name=name.strip(),
        expires_at=expires_at,
        ip_allowlist=allowlist,
    )


async def get_key(
    conn: AsyncConnection, partner_id: str, key_id: str, *, for_update: bool = False
) -> dict[str, Any]:
    """One key row of this partner. A key of another partner is NotFound (never a leak)."""
    query = select(api_keys).where(api_keys.c.id == key_id, api_keys.c.partner_id == partner_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        raise NotFound(f"API key {key_id} not found")
    return dict(row)


async def list_keys(
    conn: AsyncConnection, partner_id: str, page: Page, *, environment: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    query = select(api_keys).where(api_keys.c.partner_id == partner_id)
    if environment is not None:
        query = query.where(api_keys.c.environment == environment)
    return await fetch_page(conn, query, api_keys.c.created_at, api_keys.c.id, page)


async def rotate_keys(
    conn: AsyncConnection, box: SecretBox, *, actor: str, partner_id: str, key_id: str
) -> IssuedKeys:
    """A new pair (new id) with the old key's environment, name, allowlist and expiry.

    The old key keeps working until it is revoked, so a partner can deploy the new pair first.
    Raises NotFound, KeyNotUsable (the old key is revoked, inactive or expired: issue a new one).
    """
    old = await get_key(conn, partner_id, key_id, for_update=True)
    if old["revoked_at"] is not None or not old["is_active"]:
        raise KeyNotUsable("a revoked or deactivated key cannot be rotated; issue a new key")
    if old["expires_at"] is not None and old["expires_at"] <= _now():
        raise KeyNotUsable("an expired key cannot be rotated; issue a new key")
    return await issue_keys(
        conn,
        box,
        actor=actor,
        partner_id=partner_id,
        environment=old["environment"],
        name=old["name"],
        expires_at=old["expires_at"],
        ip_allowlist=old["ip_allowlist"],
        rotated_from_id=key_id,
    )


async def revoke_key(
    conn: AsyncConnection, *, actor: str, partner_id: str, key_id: str
) -> dict[str, Any]:
    """Revoke at once (revoked_at = now, is_active = false) and record `api_key.revoked` in the
    key's environment. Revoking a revoked key changes nothing and records nothing.
    Raises NotFound."""
    before = await get_key(conn, partner_id, key_id, for_update=True)
    if before["revoked_at"] is not None:
        return before
    after = dict(
        (
            await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id)
                .values(revoked_at=func.now(), is_active=False)
                .returning(api_keys)
            )
        )
        .mappings()
        .one()
    )
    await record_events(
        conn,
        Scope(partner_id, after["environment"]),
        [
            Event(
                "api_key.revoked",
                {
                    "id": key_id,
                    "name": after["name"],
                    "environment": after["environment"],
                    "publicKey": after["public_key"],
                    "secretKeyLast4": after["secret_key_last4"],
                    "revokedAt": after["revoked_at"],
                },
            )
        ],
    )
    await audit.record(
        conn,
        actor=actor,
        action="api_key.revoke",
        target_type="api_key",
        target_id=key_id,
        before={"isActive": before["is_active"], "revokedAt": None},
        after={"isActive": False, "revokedAt": after["revoked_at"]},
    )
    return after


async def update_key(
    conn: AsyncConnection,
    *,
    actor: str,
    partner_id: str,
    key_id: str,
    changes: Mapping[str, Any],
) -> dict[str, Any]:
    """Change a key's name, isActive or expiresAt (keys: name, is_active, expires_at).

    A revoked key stays revoked: re-activating it raises KeyNotUsable. Raises NotFound,
    ValidationFailed.
    """
    values: dict[str, Any] = {}
    if "name" in changes:
        if not str(changes["name"]).strip():
            raise ValidationFailed({"name": ["must not be empty"]})
        values["name"] = str(changes["name"]).strip()
    if "expires_at" in changes:
        _check_expiry(changes["expires_at"])
        values["expires_at"] = changes["expires_at"]
    before = await get_key(conn, partner_id, key_id, for_update=True)
    if "is_active" in changes:
        if changes["is_active"] and before["revoked_at"] is not None:
            raise KeyNotUsable("a revoked key cannot be re-activated; issue a new key")
        values["is_active"] = bool(changes["is_active"])
    changed = {k: v for k, v in values.items() if before[k] != v}
    if not changed:
        return before
    after = dict(
        (
            await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id)
                .values(**changed)
                .returning(api_keys)
            )
        )
        .mappings()
        .one()
    )
    await audit.record(
        conn,
        actor=actor,
        action="api_key.update",
        target_type="api_key",
        target_id=key_id,
        before={k: before[k] for k in changed},
        after={k: after[k] for k in changed},
    )
    return after
