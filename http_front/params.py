"""Query parameters shared by the list endpoints: time ranges (`from` inclusive, `to` exclusive)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from engine.errors import ValidationFailed


def time_param(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    # An unencoded "+" of a UTC offset arrives as a space (form decoding of the query).
    raw = raw.replace(" ", "+")
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise ValidationFailed({name: ["must be an RFC 3339 time with an offset"]})
    return moment


def time_range(request: web.Request) -> tuple[datetime | None, datetime | None]:
    problems: dict[str, list[str]] = {}
    found: dict[str, datetime | None] = {}
    for name in ("from", "to"):
        try:
            found[name] = time_param(request, name)
        except ValidationFailed as exc:
            problems.update(exc.fields)
    if problems:
        raise ValidationFailed(problems)
    return found["from"], found["to"]
