"""Wire models of the partner's token-pool endpoints and the shapes they answer with.

The pool itself is rendered by `schemas.admin.pool_json` (contract section 7's pool shape, shared
with the operator API so both show the same figures); top-up requests get a partner's view here,
without the operator's identity.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from engine.money import Tokens
from schemas.admin import TokenAmount
from schemas.admin import pool_json as pool_json
from schemas.base import WireModel


class TopupRequest(WireModel):
    """`POST /token-pools/request`: ask an operator for `amount` more tokens in `poolId`."""

    pool_id: Annotated[str, Field(min_length=1, max_length=64)]
    amount: TokenAmount
    reason: Annotated[str, Field(max_length=1000)] | None = None


def topup_request_json(row: dict[str, Any]) -> dict[str, Any]:
    """A top-up request as its partner sees it (PENDING until an operator decides)."""
    return {
        "id": row["id"],
        "environment": row["environment"],
        "poolId": row["pool_id"],
        "amount": Tokens(int(row["amount"])),
        "reason": row["reason"],
        "status": row["status"],
        "decidedAt": row["decided_at"],
        "createdAt": row["created_at"],
    }


__all__ = ["TopupRequest", "pool_json", "topup_request_json"]
