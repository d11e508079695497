"""The partner portal: portal users, their passwords, their JWTs, and self-service keys.

Passwords are argon2id hashes (argon2-cffi). Hashing is deliberately slow, so it runs in a
worker thread and never stalls the event loop. JWTs are HS256 under a key derived from the
master key for this purpose alone; the `typ` claim keeps a refresh token from being used as an
access token and the reverse.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from engine import audit
from engine.credentials import IssuedKeys, issue_keys_checked
from engine.crypto import SecretBox, derive_key
from engine.errors import (
    EmailTaken,
    InvalidCredentials,
    InvalidToken,
    NotFound,
    PartnerInactive,
    PartnerNotApproved,
    TokenExpired,
    ValidationFailed,
)
from engine.ids import new_id
from engine.partners import create_partner, get_partner, slugify
from engine.scope import Environment
from engine.tables import api_keys, portal_users

ACCESS_TTL = 15 * 60  # seconds; short, because access tokens cannot be revoked
REFRESH_TTL = 7 * 24 * 3600
ISSUER = "sir-engine/portal"
JWT_PURPOSE = "sir-engine/portal-jwt/v1"
MIN_PASSWORD = 10
MAX_PASSWORD = 256
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

TokenType = Literal["access", "refresh"]

_hasher = PasswordHasher()
# Verified against when the email is unknown, so a login takes as long either way and the
# response time does not tell an attacker which emails have accounts.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


# -- users and passwords --------------------------------------------------------------------------


def normalize_email(email: str) -> str:
    return email.strip().lower()


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def _verify(password_hash: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(check)


async def create_portal_user(
    conn: AsyncConnection, *, actor: str, email: str, password: str, partner_id: str | None = None
) -> dict[str, Any]:
    """Create a portal login, optionally linked to an existing partner.

    Raises ValidationFailed, EmailTaken.
    """
    email = normalize_email(email)
    problems: dict[str, list[str]] = {}
    if not _EMAIL.match(email):
        problems["email"] = ["must be an email address"]
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        problems["password"] = [f"must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"]
    if partner_id is not None:
        try:
            await get_partner(conn, partner_id)
        except NotFound:
            problems["partnerId"] = ["no such partner"]
    if problems:
        raise ValidationFailed(problems)
    taken = await conn.execute(
        select(portal_users.c.id).where(func.lower(portal_users.c.email) == email)
    )
    if taken.first() is not None:
        raise EmailTaken(f"a portal user with email {email} exists")
    values = {
        "id": new_id(),
        "email": email,
        "password_hash": await hash_password(password),
        "partner_id": partner_id,
    }
    try:
        async with conn.begin_nested():
            row = (
                (await conn.execute(portal_users.insert().values(**values).returning(portal_users)))
                .mappings()
                .one()
            )
    except IntegrityError:  # a concurrent create with the same email won the race
        raise EmailTaken(f"a portal user with email {email} exists") from None
    await audit.record(
        conn,
        actor=actor,
        action="portal_user.create",
        target_type="portal_user",
        target_id=row["id"],
        after=dict(row),  # password_hash is redacted by the audit log
    )
    return dict(row)


async def get_user(
    conn: AsyncConnection, user_id: str, *, for_update: bool = False
) -> dict[str, Any] | None:
    query = select(portal_users).where(portal_users.c.id == user_id)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).mappings().first()
    return None if row is None else dict(row)


async def authenticate(conn: AsyncConnection, email: str, password: str) -> dict[str, Any]:
    """The portal user with this email and password. Raises InvalidCredentials (never says
    whether the email or the password was wrong)."""
    row = (
        (
            await conn.execute(
                select(portal_users).where(
                    func.lower(portal_users.c.email) == normalize_email(email)
                )
            )
        )
        .mappings()
        .first()
    )
    ok = await _verify(row["password_hash"] if row else _DUMMY_HASH, password)
    if row is None or not ok:
        raise InvalidCredentials("Email or password is wrong")
    return dict(row)


# -- tokens ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenSigner:
    """Issues and checks portal JWTs with a key derived from the master key."""

    key: bytes

    @classmethod
    def from_master_key(cls, master_key: bytes) -> TokenSigner:
        return cls(derive_key(master_key, JWT_PURPOSE))

    def _token(self, user_id: str, typ: TokenType, ttl: int, now: int) -> str:
        claims = {
            "iss": ISSUER,
            "sub": user_id,
            "typ": typ,
            "iat": now,
            "exp": now + ttl,
            "jti": secrets.token_hex(12),
        }
        return jwt.encode(claims, self.key, algorithm="HS256")

    def issue_pair(self, user_id: str) -> dict[str, Any]:
        """{accessToken, refreshToken, expiresIn} for a portal user."""
        now = int(time.time())
        return {
            "accessToken": self._token(user_id, "access", ACCESS_TTL, now),
            "refreshToken": self._token(user_id, "refresh", REFRESH_TTL, now),
            "expiresIn": ACCESS_TTL,
        }

    def verify(self, token: str, typ: TokenType) -> str:
        """The user id (`sub`) of a valid token of type `typ`.

        Only HS256 is accepted: a token with `alg: none` or any other algorithm is refused
        before its signature is looked at. Raises TokenExpired or InvalidToken.
        """
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=["HS256"],
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "typ", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired(f"The {typ} token has expired") from None
        except jwt.PyJWTError:
            raise InvalidToken("The token is not valid") from None
        if claims.get("typ") != typ:
            raise InvalidToken(f"Expected an {typ} token")
        return str(claims["sub"])


async def user_for_token(
    conn: AsyncConnection, signer: TokenSigner, token: str, typ: TokenType
) -> dict[str, Any]:
    """The portal user a token names. Raises TokenExpired, InvalidToken (user gone too)."""
    user = await get_user(conn, signer.verify(token, typ))
    if user is None:
        raise InvalidToken("The token's user no longer exists")
    return user


# -- the partner as the portal sees it -----------------------------------------------------------


async def publishable_key_for(conn: AsyncConnection, partner: dict[str, Any]) -> str | None:
    """The newest usable publishable key: production if the partner is ACTIVE and has one,
    else sandbox. None when the partner has no usable key."""
    rows = await conn.execute(
        select(api_keys.c.public_key, api_keys.c.environment)
        .where(
            api_keys.c.partner_id == partner["id"],
            api_keys.c.is_active.is_(True),
            api_keys.c.revoked_at.is_(None),
            (api_keys.c.expires_at.is_(None)) | (api_keys.c.expires_at > func.now()),
        )
        .order_by(api_keys.c.created_at.desc(), api_keys.c.id.desc())
    )
    by_env: dict[str, str] = {}
    for public_key, environment in rows:
        by_env.setdefault(environment, public_key)
    if partner["status"] == "ACTIVE" and "production" in by_env:
        return by_env["production"]
    return by_env.get("sandbox")


async def issue_self_service_keys(
    conn: AsyncConnection,
    box: SecretBox,
    *,
    user_id: str,
    name: str,
    environment: Environment,
) -> IssuedKeys:
    """Issue keys for the portal user's partner; a user without one gets a new PENDING_APPROVAL
    partner, linked to them, with this first key.

    Production keys need an ACTIVE partner (PartnerNotApproved); a SUSPENDED or DEACTIVATED
    partner gets no keys at all (PartnerInactive). Raises ValidationFailed.
    """
    actor = f"portal:{user_id}"
    # Locked so two concurrent first keys cannot create two partners for one user.
    user = await get_user(conn, user_id, for_update=True)
    if user is None:
        raise InvalidToken("The token's user no longer exists")
    if user["partner_id"] is None:
        if environment == "production":
            raise PartnerNotApproved(
                "Production keys need an approved partner; create sandbox keys first"
            )
        local = user["email"].split("@", 1)[0]
        partner = await create_partner(
            conn,
            actor=actor,
            name=user["email"],
            slug=f"{slugify(local)[:50]}-{secrets.token_hex(3)}",
            status="PENDING_APPROVAL",
            contact_email=user["email"],
        )
        await conn.execute(
            portal_users.update()
            .where(portal_users.c.id == user_id)
            .values(partner_id=partner["id"])
        )
    else:
        partner = await get_partner(conn, user["partner_id"])
    if partner["status"] in {"SUSPENDED", "DEACTIVATED"}:
        raise PartnerInactive(f"The partner is {partner['status']}; no new keys can be issued")
    if environment == "production" and partner["status"] != "ACTIVE":
        raise PartnerNotApproved(
            "Production keys need an approved partner; an operator approves it"
        )
    return await issue_keys_checked(
        conn, box, actor=actor, partner_id=partner["id"], environment=environment, name=name
    )
