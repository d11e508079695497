"""API credentials: a publishable key, a secret key and an HMAC signing secret, shown once.

At rest the secret key exists only as a keyed hash (it is checked on every request) and the
HMAC secret is encrypted under SIR_MASTER_KEY (it must be recoverable to verify signatures).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit
from engine.crypto import SecretBox
from engine.errors import ValidationFailed
from engine.ids import new_id
from engine.partners import get_partner
from engine.scope import Environment
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
