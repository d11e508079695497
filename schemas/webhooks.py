"""Wire models of the webhook endpoints (contract section 7 "Webhooks", 6 for the operator).

Shapes only; the rules (URL destinations, known event types, which custom headers are allowed)
are engine.webhooks', reported with the same field paths. The answers are
`engine.webhooks.endpoint_json` and `delivery_json`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from engine.webhooks import MAX_DESCRIPTION, MAX_HEADERS, MAX_URL, EndpointSpec
from schemas.base import WireModel

Url = Annotated[str, Field(min_length=1, max_length=MAX_URL)]
Description = Annotated[str, Field(max_length=MAX_DESCRIPTION)]
EventTypes = Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=64)]
# Values are checked by engine.webhooks.header_problems (strings, no CR/LF, size).
Headers = Annotated[dict[str, Any], Field(max_length=MAX_HEADERS)]


class EndpointCreate(WireModel):
    url: Url
    description: Description | None = None
    event_types: EventTypes = []
    receive_all_events: bool = False
    headers: Headers | None = None

    def to_spec(self) -> EndpointSpec:
        return EndpointSpec(
            url=self.url,
            description=self.description,
            event_types=tuple(self.event_types),
            receive_all_events=self.receive_all_events,
            headers=self.headers or None,
        )


class OperatorEndpointCreate(EndpointCreate):
    """The operator registers an endpoint for a partner, naming the environment (section 6)."""

    environment: Literal["sandbox", "production"]


class EndpointPatch(WireModel):
    """Only the fields sent change. `headers` replaces the whole set (`null` or `{}` clears);
    `description: null` clears it; the other fields refuse null."""

    url: Url = ""
    description: Description | None = None
    event_types: EventTypes = []
    receive_all_events: bool = False
    headers: Headers | None = None
    is_active: bool = True

    def to_changes(self) -> dict[str, Any]:
        """EndpointSpec field names -> new values, for the fields the caller sent."""
        sent = self.model_fields_set
        changes: dict[str, Any] = {}
        for name in ("url", "description", "receive_all_events", "is_active"):
            if name in sent:
                changes[name] = getattr(self, name)
        if "event_types" in sent:
            changes["event_types"] = tuple(self.event_types)
        if "headers" in sent:
            changes["headers"] = self.headers or None
        return changes
