"""The scope every partner-owned query carries: which partner, which environment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Environment = Literal["sandbox", "production"]


@dataclass(frozen=True, slots=True)
class Scope:
    partner_id: str
    environment: Environment

    @property
    def params(self) -> dict[str, str]:
        """Bind parameters for `partner_id = :partner_id AND environment = :environment`."""
        return {"partner_id": self.partner_id, "environment": self.environment}
