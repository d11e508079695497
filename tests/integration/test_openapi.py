"""The OpenAPI document and Swagger UI, served by the real app factory on a test server.

The document is generated from the code (`http_front.openapi`); these tests keep it honest:
it validates as OpenAPI 3.1, it lists every route the app answers, each operation states the
auth its handler really enforces, and live answers match the documented response schemas.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import jsonschema
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from engine.signing import sign_request
from engine.wire import dumps
from http_front.app import create_app
from http_front.openapi import ASSETS_PATH, DOCS_PATH, DOCUMENT_PATH, EXAMPLES, NOTES, doc_of
from tests.conftest import OPERATOR_TOKEN

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
AUTH_MODES = {"secret", "publishable", "widget", "portal", "operator", "none"}
# The wrapper each auth mode's decorator puts around a handler (functools.wraps keeps the chain).
ENFORCED_BY = {
    "secret": "_authenticated.<locals>.wrapper",
    "widget": "_authenticated.<locals>.wrapper",
    "publishable": "_authenticated.<locals>.wrapper",
    "portal": "portal_required.<locals>.wrapper",
    "operator": "operator_required.<locals>.wrapper",
}


@pytest_asyncio.fixture(loop_scope="session")
async def client(settings) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_app(settings))) as test_client:
        yield test_client


@pytest_asyncio.fixture(loop_scope="session")
async def document(client: TestClient) -> dict[str, Any]:
    async with client.get(DOCUMENT_PATH) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        return dict(await response.json())


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def schema_check(document: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """Validate `instance` against a schema of the document ($refs into its components)."""
    jsonschema.Draft202012Validator({**schema, "components": document["components"]}).validate(
        instance
    )


def component(document: dict[str, Any], name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def app_routes(app: web.Application) -> list[tuple[str, str, Any]]:
    """(METHOD, OpenAPI path, handler) of every route, HEAD/OPTIONS and the docs' own aside."""
    found = []
    for route in app.router.routes():
        resource = route.resource
        if route.method in {"HEAD", "OPTIONS"} or isinstance(resource, web.StaticResource):
            continue
        info = resource.get_info() if resource is not None else {}
        raw = info.get("path") or info.get("formatter")
        if raw == DOCS_PATH:
            continue
        found.append((route.method, raw, route.handler))
    return found


def openapi_path(raw: str) -> str:
    import re

    def camel(match: re.Match[str]) -> str:
        head, *rest = match.group(1).split("_")
        return "{" + head + "".join(p.title() for p in rest) + "}"

    return re.sub(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}", camel, raw)


# -- the document ---------------------------------------------------------------------------------


async def test_the_served_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    validate(document)  # openapi-spec-validator picks the 3.1 validator from the version field


async def test_every_route_of_the_app_is_documented(client, document):
    documented = operations(document)
    routes = app_routes(client.server.app)
    assert len(routes) > 50
    missing = [
        (method, path)
        for method, raw, _ in routes
        if (method, path := openapi_path(raw)) not in documented
    ]
    assert missing == []
    undocumented = [key for key, op in documented.items() if op.get("x-sir-undocumented")]
    assert undocumented == [], "add @documented(...) to these handlers"
    # and nothing is documented that the app does not answer
    assert set(documented) == {(m, openapi_path(raw)) for m, raw, _ in routes}


async def test_every_operation_has_an_auth_mode_and_the_error_envelope(document):
    envelope = "#/components/schemas/ErrorEnvelope"
    for (method, path), operation in operations(document).items():
        where = f"{method} {path}"
        assert operation["x-sir-auth"] in AUTH_MODES, where
        assert "security" in operation, where
        assert operation["summary"], where
        errors = {s: r for s, r in operation["responses"].items() if s[0] in "45"}
        assert "500" in errors, where
        for status, response in errors.items():
            media = response["content"]["application/json"]
            if path == "/readyz" and status == "503":
                continue  # readiness answers its own body when not ready
            assert media["schema"] == {"$ref": envelope}, where
            codes = set(media["examples"])
            assert codes and all(code.isupper() for code in codes), where
        if operation["x-sir-auth"] == "secret":
            assert "INVALID_SIGNATURE" in errors["401"]["content"]["application/json"]["examples"]
            assert operation["security"] == [
                {"secretKey": [], "signatureTimestamp": [], "signature": []}
            ]
        if "requestBody" in operation:
            assert {"400", "413", "415", "422"} <= set(errors), where


async def test_the_documented_auth_is_what_the_handler_enforces(client):
    for method, raw, handler in app_routes(client.server.app):
        doc = doc_of(handler)
        assert doc is not None, f"{method} {raw}"
        chain, current = [], handler
        while current is not None:
            # functools.wraps copies __qualname__; the code object keeps the wrapper's own
            code = getattr(current, "__code__", None)
            chain.append(code.co_qualname if code is not None else "")
            current = getattr(current, "__wrapped__", None)
        enforced = {mode for mode, wrapper in ENFORCED_BY.items() if wrapper in chain}
        if doc.auth == "none":
            assert not enforced, f"{method} {raw} is documented without auth but has some"
        else:
            assert doc.auth in enforced, f"{method} {raw} documents {doc.auth}, has {enforced}"


async def test_notes_and_examples_name_real_operations(document):
    ops = operations(document)
    ids = {op["operationId"] for op in ops.values()}
    assert set(NOTES) <= ids
    assert set(EXAMPLES) <= set(ops)


async def test_examples_match_their_schemas(document):
    checked = 0
    for operation in operations(document).values():
        body = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        if "example" in body:
            schema_check(document, body["schema"], body["example"])
            checked += 1
        for response in operation["responses"].values():
            media = response.get("content", {}).get("application/json", {})
            if "example" in media:
                schema_check(document, media["schema"], media["example"])
                checked += 1
            for example in media.get("examples", {}).values():
                schema_check(document, media["schema"], example["value"])
    assert checked >= 5  # submit, reverse, webhook requests; submit and balance answers


async def test_submit_request_schema_accepts_the_contract_example_and_needs_stakeholders(document):
    operation = operations(document)[("POST", "/v1/partner/actions/submit")]
    media = operation["requestBody"]["content"]["application/json"]
    assert media["schema"] == component(document, "SubmitAction")
    example = media["example"]
    assert example["idempotencyKey"] == "purchase_98765"
    schema_check(document, media["schema"], example)
    without = {k: v for k, v in example.items() if k != "stakeholders"}
    with pytest.raises(jsonschema.ValidationError):
        schema_check(document, media["schema"], without)
    with pytest.raises(jsonschema.ValidationError):
        schema_check(document, media["schema"], {**example, "stakeholders": []})
    with pytest.raises(jsonschema.ValidationError):
        schema_check(document, media["schema"], {**example, "unknownField": 1})


async def test_security_schemes_describe_the_signature(document):
    schemes = document["components"]["securitySchemes"]
    assert set(schemes) >= {"secretKey", "publishableKey", "portalJwt", "operatorToken"}
    assert schemes["secretKey"]["name"] == "X-Partner-Key"
    assert "signedPayload" in schemes["secretKey"]["description"]
    assert schemes["portalJwt"] == {**schemes["portalJwt"], "type": "http", "scheme": "bearer"}


# -- Swagger UI -----------------------------------------------------------------------------------


async def test_swagger_ui_and_its_assets_are_served_locally(client):
    async with client.get(DOCS_PATH) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    assert DOCUMENT_PATH in page
    assert "http://" not in page and "https://" not in page  # no CDN
    async with client.get(f"{ASSETS_PATH}/swagger-ui-bundle.js") as response:
        assert response.status == 200
        assert len(await response.read()) > 100_000
    async with client.get(f"{ASSETS_PATH}/swagger-ui.css") as response:
        assert response.status == 200


# -- live answers match the documented response schemas -------------------------------------------


def response_schema(document: dict[str, Any], method: str, path: str, status: int) -> Any:
    operation = operations(document)[(method, path)]
    return operation["responses"][str(status)]["content"]["application/json"]["schema"]


async def test_live_answers_match_the_documented_schemas(client, document):
    async def call(method: str, path: str, template: str, body: Any = None, **kw: Any) -> Any:
        headers = dict(kw.get("headers", OPERATOR))
        data = dumps(body).encode() if body is not None else b""
        if data:
            headers["Content-Type"] = "application/json"
        async with client.request(method, path, data=data, headers=headers) as response:
            answer = await response.json()
            schema = response_schema(document, method, template, response.status)
            schema_check(document, schema, answer)
            return response.status, answer

    status, partner = await call(
        "POST",
        "/api/v1/admin/partners",
        "/api/v1/admin/partners",
        {
            "name": f"Docs {secrets.token_hex(3)}",
            "status": "ACTIVE",
            "actionTypes": ["PURCHASE"],
            "stakeholderTypes": ["CUSTOMER"],
        },
    )
    assert status == 201
    admin = f"/api/v1/admin/partners/{partner['id']}"
    status, keys = await call(
        "POST",
        f"{admin}/keys",
        "/api/v1/admin/partners/{partnerId}/keys",
        {"environment": "sandbox", "name": "docs"},
    )
    assert status == 201
    await call("GET", f"{admin}/keys", "/api/v1/admin/partners/{partnerId}/keys")
    status, _ = await call(
        "POST",
        f"{admin}/token-pools",
        "/api/v1/admin/partners/{partnerId}/token-pools",
        {"environment": "sandbox", "name": "main", "allocation": 1000},
    )
    assert status == 201

    def signed(method: str, path: str, body: Any = None) -> dict[str, str]:
        ts = str(int(time.time()))
        data = dumps(body).encode() if body is not None else b""
        return {
            "X-Partner-Key": keys["secretKey"],
            "X-Timestamp": ts,
            "X-Signature": sign_request(keys["hmacSecret"], ts, method, path, data),
        }

    submit = {
        "idempotencyKey": f"docs_{secrets.token_hex(4)}",
        "actionType": "PURCHASE",
        "amount": "33.33",
        "stakeholders": [{"stakeholderTypeCode": "CUSTOMER", "partnerUserId": "docs_user"}],
    }
    path = "/v1/partner/actions/submit"
    status, action = await call("POST", path, path, submit, headers=signed("POST", path, submit))
    assert status == 200, action
    for path, template in [
        (f"/v1/partner/actions/{action['actionId']}", "/v1/partner/actions/{actionId}"),
        ("/v1/partner/users/docs_user/balance", "/v1/partner/users/{externalId}/balance"),
        ("/v1/partner/transactions", "/v1/partner/transactions"),
        ("/v1/partner/token-pools", "/v1/partner/token-pools"),
    ]:
        status, body = await call("GET", path, template, headers=signed("GET", path))
        assert status == 200, body
    # an error answer matches the envelope too
    path = "/v1/partner/actions/000000000000000000000000"
    status, body = await call(
        "GET", path, "/v1/partner/actions/{actionId}", headers=signed("GET", path)
    )
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"
    status, _ = await call("GET", "/healthz", "/healthz", headers={})
    assert status == 200
