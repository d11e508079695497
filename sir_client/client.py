"""`SirClient`: the partner-side HTTP client of the engine's server-to-server API (contract 3.1).

Every request is signed afresh with the current time (so a retry is never refused as a replay),
with the same canonical-string function the server verifies with (`engine.signing`). What is
signed is byte for byte what is sent: the client builds the query string and the JSON body
itself and hands aiohttp an already-encoded URL, so nothing re-encodes them on the way out.
Responses are parsed with exact decimals; errors are raised as `SirApiError`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from engine.money import Tokens
from engine.signing import sign_request
from engine.wire import dumps, loads, utc_iso

DEFAULT_TIMEOUT = 30.0
USER_AGENT = "sir-client-python/0.1"


class _Omit:
    """A field not to send at all (as opposed to None, which sends null to clear it)."""

    def __repr__(self) -> str:
        return "OMIT"


OMIT: Final = _Omit()

Params = Mapping[str, Any]


class SirApiError(Exception):
    """An error answer from the engine: branch on `code` (stable), show `message` to humans."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, Any] = details or {}
        self.request_id = request_id

    def __repr__(self) -> str:
        return (
            f"SirApiError(status={self.status}, code={self.code!r}, message={self.message!r}, "
            f"request_id={self.request_id!r})"
        )


@dataclass(frozen=True)
class SirResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: Any  # parsed JSON (decimals exact), or None for an empty body


def segment(value: str) -> str:
    """Percent-encode one path segment completely (an external id may hold `/`, `?`, `#`...)."""
    return quote(value, safe="")


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, Tokens):
        return value.format()
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


def build_query(params: Params | None) -> str:
    """`?a=1&b=x%20y` (or "") in the given order; None values are left out, lists repeat the key.

    Built here rather than by aiohttp so the string signed is exactly the string sent.
    """
    if not params:
        return ""
    pairs: list[str] = []
    for key, value in params.items():
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if item is None:
                continue
            pairs.append(f"{quote(key, safe='')}={quote(_query_value(item), safe='')}")
    return "?" + "&".join(pairs) if pairs else ""


def _fields(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if not isinstance(value, _Omit)}


class SirClient:
    """Async client for `/v1/partner/...` with a secret key and its HMAC secret.

    Use it as `async with SirClient(...) as client:` or call `close()`. A `session` passed in is
    the caller's to close; otherwise the client owns one.
    """

    def __init__(
        self,
        base_url: str,
        secret_key: str,
        hmac_secret: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        base = URL(base_url)
        if not base.is_absolute():
            raise ValueError("base_url must be absolute, like https://api.example.com")
        self._origin = base.origin()
        # A base URL with a path prefix (behind a proxy) is part of the request target signed.
        self._prefix = base.raw_path.rstrip("/")
        self._secret_key = secret_key
        self._hmac_secret = hmac_secret
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock

    def __repr__(self) -> str:  # the secrets stay out of logs and tracebacks
        return f"SirClient({str(self._origin)!r}, key=...{self._secret_key[-4:]})"

    async def __aenter__(self) -> SirClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    # -- the generic request ---------------------------------------------------------------------

    async def request_raw(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: Params | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> SirResponse:
        """Send one signed request and return status, headers and parsed body, errors included.

        `path` is the API path (`/v1/partner/users`), already percent-encoded where needed
        (use `segment()` for ids). `json` is encoded exactly (Tokens and Decimals as numbers).
        """
        if not path.startswith("/"):
            raise ValueError("path must start with /")
        method = method.upper()
        target = f"{self._prefix}{path}{build_query(params)}"
        body = b"" if json is None else dumps(json).encode()
        timestamp = str(int(self._clock()))
        signed = {
            "X-Partner-Key": self._secret_key,
            "X-Timestamp": timestamp,
            "X-Signature": sign_request(self._hmac_secret, timestamp, method, target, body),
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if body:
            signed["Content-Type"] = "application/json"
        url = URL(str(self._origin) + target, encoded=True)
        async with self._http().request(
            method,
            url,
            data=body or None,
            headers={**(headers or {}), **signed},
            timeout=self._timeout,
            allow_redirects=False,  # a redirect would be re-signed wrongly; surface it instead
        ) as response:
            raw = await response.read()
            parsed: Any = None
            if raw:
                try:
                    parsed = loads(raw)
                except ValueError:
                    parsed = raw.decode(errors="replace")
            return SirResponse(response.status, response.headers, parsed)

    async def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: Params | None = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one signed request; the parsed body on 2xx, else raises SirApiError."""
        response = await self.request_raw(method, path, json, params, headers=headers)
        return _checked(response)

    # -- users ---------------------------------------------------------------------------------------

    async def upsert_user(
        self,
        external_user_id: str,
        *,
        email: str | None | _Omit = OMIT,
        first_name: str | None | _Omit = OMIT,
        last_name: str | None | _Omit = OMIT,
        metadata: Mapping[str, str | None] | None | _Omit = OMIT,
    ) -> tuple[dict[str, Any], bool]:
        """Create the user or update the fields given. Returns (user, created)."""
        body = {
            "externalUserId": external_user_id,
            **_fields(email=email, firstName=first_name, lastName=last_name, metadata=metadata),
        }
        response = await self.request_raw("POST", "/v1/partner/users", body)
        return _checked(response), response.status == 201

    async def get_user(self, external_user_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "GET", f"/v1/partner/users/{segment(external_user_id)}"
        )
        return result

    async def update_user(
        self,
        external_user_id: str,
        *,
        email: str | None | _Omit = OMIT,
        first_name: str | None | _Omit = OMIT,
        last_name: str | None | _Omit = OMIT,
        metadata: Mapping[str, str | None] | None | _Omit = OMIT,
    ) -> dict[str, Any]:
        """Change only the fields given (None clears; metadata keys merge, None/"" removes one)."""
        body = _fields(email=email, firstName=first_name, lastName=last_name, metadata=metadata)
        result: dict[str, Any] = await self.request(
            "PATCH", f"/v1/partner/users/{segment(external_user_id)}", body
        )
        return result

    async def list_users(
        self,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        email: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
    ) -> dict[str, Any]:
        """One page: `{"data": [...], "nextCursor": str | None}`, newest first."""
        params = {
            "limit": limit,
            "cursor": cursor,
            "email": email,
            "from": created_from,
            "to": created_to,
        }
        result: dict[str, Any] = await self.request("GET", "/v1/partner/users", params=params)
        return result

    async def iter_users(
        self,
        *,
        page_size: int = 100,
        email: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every user matching the filters, newest first, fetching page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_users(
                limit=page_size,
                cursor=cursor,
                email=email,
                created_from=created_from,
                created_to=created_to,
            )
            for user in page["data"]:
                yield user
            cursor = page.get("nextCursor")
            if not cursor:
                return

    async def get_balance(self, external_user_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "GET", f"/v1/partner/users/{segment(external_user_id)}/balance"
        )
        return result

    async def list_transactions(
        self,
        external_user_id: str,
        *,
        limit: int | None = None,
        cursor: str | None = None,
        type: str | None = None,  # noqa: A002 - the API's own filter name
        created_from: datetime | None = None,
        created_to: datetime | None = None,
    ) -> dict[str, Any]:
        """One page of the user's wallet lines: `{"data": [...], "nextCursor": ...}`."""
        params = {
            "limit": limit,
            "cursor": cursor,
            "type": type,
            "from": created_from,
            "to": created_to,
        }
        result: dict[str, Any] = await self.request(
            "GET", f"/v1/partner/users/{segment(external_user_id)}/transactions", params=params
        )
        return result

    async def iter_transactions(
        self,
        external_user_id: str,
        *,
        page_size: int = 100,
        type: str | None = None,  # noqa: A002
    ) -> AsyncIterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            page = await self.list_transactions(
                external_user_id, limit=page_size, cursor=cursor, type=type
            )
            for line in page["data"]:
                yield line
            cursor = page.get("nextCursor")
            if not cursor:
                return


def _checked(response: SirResponse) -> Any:
    if 200 <= response.status < 300:
        return response.body
    request_id = response.headers.get("X-Request-Id")
    error = response.body.get("error") if isinstance(response.body, dict) else None
    if isinstance(error, dict):
        raise SirApiError(
            response.status,
            str(error.get("code", f"HTTP_{response.status}")),
            str(error.get("message", "")),
            error.get("details") if isinstance(error.get("details"), dict) else {},
            request_id,
        )
    # Not the engine's envelope (a proxy's page, say): keep what there is to debug with.
    text = response.body if isinstance(response.body, str) else ""
    raise SirApiError(response.status, f"HTTP_{response.status}", text[:200], {}, request_id)
