"""The base every wire model shares, and the translation of pydantic errors to the contract's
`422 VALIDATION_FAILED` with `details.fields = {"path": ["problem", ...]}`."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from engine.errors import ValidationFailed

M = TypeVar("M", bound=BaseModel)


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields refused (typos surface)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def _message(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    message = str(error.get("msg", "is invalid"))
    # pydantic's "Value error, must be ..." -> "must be ..."
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def parse(model: type[M], data: Any) -> M:
    """Validate `data` into `model`. Raises ValidationFailed listing every bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        fields: dict[str, list[str]] = {}
        for error in exc.errors():
            fields.setdefault(_path(tuple(error["loc"])), []).append(_message(dict(error)))
        raise ValidationFailed(fields) from None
