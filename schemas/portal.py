"""Wire models of the partner portal (JWT): login, refresh, self-service keys."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, Field

from schemas.admin import Environment, Name, partner_info_json
from schemas.base import WireModel


class Login(WireModel):
    email: Annotated[str, Field(min_length=1, max_length=320)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class Refresh(WireModel):
    refresh_token: Annotated[str, Field(min_length=1)]


class SelfServiceKeyCreate(WireModel):
    name: Name
    environment: Environment
    # Only secret keys are issued (each issuance is a pair: publishable + secret + HMAC secret);
    # the field exists so other key types can be added without breaking clients.
    key_type: Literal["secret"] = "secret"


class KeyPatch(WireModel):
    name: Name | None = None
    is_active: bool | None = None
    expires_at: AwareDatetime | None = None

    def changes(self) -> dict[str, Any]:
        """Only what was sent; `expiresAt: null` clears the expiry, other nulls are ignored."""
        return {
            k: getattr(self, k)
            for k in self.model_fields_set
            if getattr(self, k) is not None or k == "expires_at"
        }


def session_json(
    tokens: dict[str, Any], partner: dict[str, Any] | None, publishable_key: str | None
) -> dict[str, Any]:
    return {
        **tokens,
        "tokenType": "Bearer",
        "partner": None if partner is None else partner_info_json(partner),
        "publishableKey": publishable_key,
    }


def me_json(user: dict[str, Any], partner: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "id": user["id"],
        "email": user["email"],
        "partnerId": user["partner_id"],
        "createdAt": user["created_at"],
        "partner": None if partner is None else partner_info_json(partner),
    }
