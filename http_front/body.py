"""Reading request bodies: JSON only, numbers parsed exactly, contract codes on failure."""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from engine.errors import SirError, ValidationFailed
from engine.wire import MAX_DEPTH, TooDeep, dumps, loads
from schemas.base import parse

M = TypeVar("M", bound=BaseModel)


class MalformedJson(SirError):
    name = "ValidationError"
    code = "MALFORMED_JSON"
    status = 400


class UnsupportedMediaType(SirError):
    name = "UnsupportedMediaTypeError"
    code = "UNSUPPORTED_MEDIA_TYPE"
    status = 415


async def read_json(request: web.Request) -> Any:
    """The body as JSON (non-integers as Decimal). An empty body reads as {}.

    Raises UnsupportedMediaType for a non-JSON content type and MalformedJson for bad JSON.
    The raw bytes are cached by aiohttp, so the signature check and this parse read one body.
    """
    raw = await request.read()
    if not raw:
        return {}
    if request.content_type not in {"application/json", "application/merge-patch+json"}:
        raise UnsupportedMediaType("Send the body as application/json")
    try:
        parsed = loads(raw, max_depth=MAX_DEPTH)
    except TooDeep:
        raise MalformedJson(f"The request body nests JSON more than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise MalformedJson("The request body is not valid JSON") from None
    _refuse_nul(parsed, "")
    return parsed


def _refuse_nul(value: Any, path: str) -> None:
    """PostgreSQL stores no NUL character in text or jsonb: refuse it here as a field error
    instead of failing deep in a transaction."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValidationFailed({path or "body": ["must not contain NUL characters"]})
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                raise ValidationFailed({where: ["must not contain NUL characters"]})
            _refuse_nul(item, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_nul(item, f"{path}[{index}]")


async def read_model(request: web.Request, model: type[M]) -> M:
    """Read and validate the body into a wire model (422 VALIDATION_FAILED on bad fields)."""
    return parse(model, await read_json(request))


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response through the exact encoder (tokens and decimals never pass through float)."""
    return web.Response(
        status=status, text=dumps(body), content_type="application/json", headers=headers
    )
