"""Security battery against a real `sir-engine serve` process over loopback.

SQL metacharacters in every list filter and path parameter of the partner and operator APIs
(a clean 4xx or an empty list, never a 5xx, and the database unchanged), oversized and
compressed bodies, deeply nested JSON, portal tokens forged or misused across modes, login
brute force that tries to slip past the per-email and per-IP budgets, and, last, every secret
this module was issued searched for in everything the front logged (at DEBUG).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import asyncpg
import jwt
import pytest
import redis
import requests

from engine.portal import TokenSigner
from tests.conftest import Services
from tests.security.live_front import (
    OPERATOR,
    PASSWORD,
    LiveFront,
    Partner,
    SirAuth,
    make_partner,
    operator,
    reset_login_limits,
    start_front,
    start_worker,
)

ME = "/v1/partner/auth/me"
LOGIN = "/v1/partner/auth/login"
METACHARACTERS = [
    "'",
    "' OR '1'='1",
    "x'; DROP TABLE partners;--",
    "1 UNION SELECT secret_hash FROM api_keys",
    "%",
    "_",
    "\\",
    "';SELECT pg_sleep(5);--",
]


@pytest.fixture(scope="module")
def front(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFront]:
    live = start_front(services, tmp_path_factory.mktemp("security"))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def partner(front: LiveFront, services: Services) -> Partner:
    made = make_partner(
        front.base,
        services.redis_url,
        rate_limit_override={"perHour": 1_000_000, "perMinute": 100_000},
    )
    # Objects for the path parameters to exist next to: a user, an action, a webhook.
    call(front, made, "POST", "/v1/partner/users", {"externalUserId": "sec_user"})
    status, _ = call(
        front,
        made,
        "POST",
        "/v1/partner/actions/submit",
        {
            "idempotencyKey": "sec_1",
            "actionType": "PURCHASE",
            "amount": "10",
            "stakeholders": [{"stakeholderTypeCode": "CUSTOMER", "partnerUserId": "sec_user"}],
        },
    )
    assert status == 200
    return made


def call(
    front: LiveFront,
    partner: Partner,
    method: str,
    path: str,
    body: Any = None,
    *,
    mode: str = "secret",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    if data is None and body is not None:
        data = json.dumps(body).encode()
    sent = {"Content-Type": "application/json"} if data is not None else {}
    sent.update(headers or {})
    response = requests.request(
        method,
        front.base + path,
        data=data,
        headers=sent,
        auth=SirAuth(partner, mode) if mode != "none" else None,
        timeout=60,
    )
    try:
        answer = response.json()
    except ValueError:
        answer = response.text
    return response.status_code, answer


def database_snapshot(services: Services) -> dict[str, Any]:
    """Row counts of every table of the engine, and the content of the small tables an
    injection would most like to change."""

    async def take() -> dict[str, Any]:
        dsn = services.database_url.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn)
        try:
            tables = [
                r["tablename"]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
                )
            ]
            snapshot: dict[str, Any] = {}
            for table in tables:
                snapshot[table] = await conn.fetchval(f'SELECT count(*) FROM "{table}"')
            for table in ("partners", "api_keys", "organizations", "portal_users"):
                if table in tables:
                    snapshot[f"{table}#md5"] = await conn.fetchval(
                        f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM \"{table}\" t"
                    )
            return snapshot
        finally:
            await conn.close()

    return asyncio.run(take())


def operations(front: LiveFront) -> list[tuple[str, str, dict[str, Any]]]:
    document = requests.get(f"{front.base}/partner-api/openapi.json", timeout=30).json()
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


# -- SQL metacharacters ---------------------------------------------------------------------------


def test_sql_metacharacters_in_every_filter_and_path_parameter(front, partner, services):
    before = database_snapshot(services)
    started = time.monotonic()
    tried = 0
    problems = []
    for method, path, operation in operations(front):
        mode = operation["x-sir-auth"]
        query = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
        names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
        for payload in METACHARACTERS:
            quoted = requests.utils.quote(payload, safe="")
            if method == "GET":
                for name in query:
                    if name == "limit":
                        continue
                    status, body = call(front, partner, "GET", f"{path}?{name}={quoted}", mode=mode)
                    tried += 1
                    empty = status == 200 and isinstance(body, dict) and body.get("data") == []
                    # A free-text search may find real matches ("St. Jude Children's ..." for a
                    # quote): then every item must really hold the payload (bound as data, and
                    # LIKE wildcards escaped, or "%" would list everything).
                    literal = (
                        status == 200
                        and name == "q"
                        and isinstance(body, dict)
                        and all(
                            payload.lower()
                            in f"{item.get('name', '')} {item.get('slug', '')}".lower()
                            for item in body.get("data", [])
                        )
                    )
                    if not (400 <= status < 500 or empty or literal):
                        problems.append((method, path, name, payload, status, str(body)[:200]))
            if names:
                target = path
                for name in names:
                    target = target.replace("{" + name + "}", quoted)
                # A write with an empty body: the unknown object must answer first, or the
                # body's fields; never a 5xx, never a change.
                body = None if method in ("GET", "DELETE") else {}
                status, answer = call(front, partner, method, target, body, mode=mode)
                tried += 1
                if not 400 <= status < 500:
                    problems.append((method, path, names, payload, status, str(answer)[:200]))
    assert tried > 300
    assert problems == []
    assert database_snapshot(services) == before
    # no payload slept the database (pg_sleep would take 5 s per request)
    assert time.monotonic() - started < tried * 1.0


# -- bodies -----------------------------------------------------------------------------------------


def test_bodies_over_one_mebibyte_are_refused(front, partner):
    big = json.dumps({"externalUserId": "big", "metadata": {"blob": "x" * (1024 * 1024)}}).encode()
    for method, path, mode in [
        ("POST", "/v1/partner/users", "secret"),
        ("POST", "/v1/partner/actions/submit", "secret"),
        ("POST", "/api/v1/admin/partners", "operator"),
        ("POST", "/v1/partner/keys", "portal"),
        ("POST", LOGIN, "none"),
    ]:
        status, body = call(front, partner, method, path, data=big, mode=mode)
        assert (status, body["error"]["code"]) == (413, "PAYLOAD_TOO_LARGE"), path
    # the batch route takes up to 8 MiB: 2 MiB is read (and judged on its fields), 9 MiB is not
    two = json.dumps({"actions": [], "pad": "x" * (2 * 1024 * 1024)}).encode()
    status, body = call(front, partner, "POST", "/v1/partner/actions/batch", data=two)
    assert status == 422, body
    nine = json.dumps({"actions": [], "pad": "x" * (9 * 1024 * 1024)}).encode()
    status, body = call(front, partner, "POST", "/v1/partner/actions/batch", data=nine)
    assert (status, body["error"]["code"]) == (413, "PAYLOAD_TOO_LARGE")


def test_a_compressed_body_is_limited_by_its_inflated_size(front, partner):
    # 20 MiB of JSON inflates from about 20 KiB of gzip: the limit must count what is inflated.
    bomb = gzip.compress(b'{"externalUserId": "bomb", "pad": "' + b"a" * (20 * 1024 * 1024) + b'"}')
    assert len(bomb) < 100 * 1024
    status, body = call(
        front, partner, "POST", "/v1/partner/users", data=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert (status, body["error"]["code"]) == (413, "PAYLOAD_TOO_LARGE"), body


@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [
        ("POST", "/v1/partner/actions/submit", "secret"),
        ("POST", "/v1/partner/actions/batch", "secret"),
        ("POST", "/v1/partner/users", "secret"),
        ("POST", "/api/v1/admin/partners", "operator"),
        ("POST", LOGIN, "none"),
    ],
)
def test_deeply_nested_json_is_a_clean_400(front, partner, method, path, mode):
    for depth in (100_000, 65):
        for data in (b"[" * depth, b"[" * depth + b"]" * depth):
            status, body = call(front, partner, method, path, data=data, mode=mode)
            assert (status, body["error"]["code"]) == (400, "MALFORMED_JSON"), (depth, body)
    # nesting that a real request could use is still read (and judged on its fields)
    metadata: Any = 1
    for _ in range(20):
        metadata = {"a": metadata}
    status, body = call(
        front, partner, method, path, {"externalUserId": "nested", "metadata": metadata}, mode=mode
    )
    assert status != 400 and status < 500, body


def test_a_nested_cursor_is_an_invalid_cursor(front, partner):
    cursor = base64.urlsafe_b64encode(b"[" * 5000).decode().rstrip("=")
    status, body = call(front, partner, "GET", f"/v1/partner/actions?cursor={cursor}")
    assert (status, body["error"]["code"]) == (400, "INVALID_CURSOR")


# -- portal tokens ----------------------------------------------------------------------------------


def _forge(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part(header)}.{part(claims)}.{signature}"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # HS512 on purpose
def test_tokens_across_modes_and_forged_variants_are_refused(front, partner, settings):
    bearer = lambda token: {"Authorization": f"Bearer {token}"}  # noqa: E731
    claims = jwt.decode(partner.access_token, options={"verify_signature": False})
    real_key = TokenSigner.from_master_key(settings.master_key).key
    header, payload, signature = partner.access_token.split(".")
    forged = [
        _forge({"alg": "None", "typ": "JWT"}, claims),
        _forge({"alg": "NONE", "typ": "JWT"}, claims),
        _forge({"alg": "none"}, claims, signature),  # a real signature under a none header
        f"{header}.{payload}.",  # the signature stripped
        f"{header}.{_forge({}, {**claims, 'sub': 'someone-else'}).split('.')[1]}.{signature}",
        jwt.encode({**claims, "exp": int(time.time()) - 1}, real_key, algorithm="HS256"),
        jwt.encode({k: v for k, v in claims.items() if k != "exp"}, real_key, algorithm="HS256"),
        jwt.encode(claims, real_key, algorithm="HS512"),  # an algorithm the engine does not use
        jwt.encode(claims, OPERATOR["Authorization"].split()[1], algorithm="HS256"),
        jwt.encode({**claims, "sub": "000000000000000000000000"}, real_key, algorithm="HS256"),
    ]
    for token in forged:
        status, body = call(front, partner, "GET", ME, mode="none", headers=bearer(token))
        assert status == 401, (token, body)
        assert body["error"]["code"] in {"INVALID_TOKEN", "TOKEN_EXPIRED"}, body
    # one credential never opens another mode's door
    status, _ = call(front, partner, "GET", "/api/v1/admin/partners", mode="portal")
    assert status == 401
    status, _ = call(front, partner, "GET", ME, mode="operator")
    assert status == 401
    status, _ = call(
        front,
        partner,
        "GET",
        "/v1/partner/users",
        mode="none",
        headers=bearer(partner.access_token),
    )
    assert status == 401
    status, _ = call(front, partner, "GET", "/v1/partner/users", mode="publishable")
    assert status == 403


# -- login brute force ------------------------------------------------------------------------------


def _login(front: LiveFront, email: str, password: str, **headers: str) -> int:
    return requests.post(
        front.base + LOGIN, json={"email": email, "password": password}, headers=headers, timeout=30
    ).status_code


def test_login_budget_per_email_ignores_case_and_spaces(front, partner, services):
    reset_login_limits(services.redis_url)
    email = partner.portal_email
    variants = [email, email.upper(), f"  {email}", email.title(), f"{email} "]
    assert [_login(front, v, "wrong password") for v in variants] == [401] * 5
    client = redis.Redis.from_url(services.redis_url)
    for key in client.scan_iter(match="sir:portal-login:ip:*"):
        client.delete(key)  # leave only the email's budget spent
    client.close()
    assert _login(front, email.swapcase(), PASSWORD) == 429  # the right password, too late
    reset_login_limits(services.redis_url)


def test_login_budget_per_ip_is_not_reset_by_a_forged_forwarded_for(front, services):
    # The front trusts no proxy here, so X-Forwarded-For is the caller's own words.
    reset_login_limits(services.redis_url)
    answers = [
        _login(
            front,
            f"nobody-{secrets.token_hex(3)}@example.test",
            "wrong password",
            **{"X-Forwarded-For": f"203.0.113.{i}"},
        )
        for i in range(6)
    ]
    assert answers == [401] * 5 + [429]
    reset_login_limits(services.redis_url)


# -- secrets never in logs (keep this test last in the module) ------------------------------------


class Receiver(BaseHTTPRequestHandler):
    """A partner's webhook receiver on loopback: 500 to the first delivery, 200 after."""

    hits: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Receiver.hits.append(dict(self.headers))
        self.send_response(500 if len(Receiver.hits) == 1 else 200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_no_secret_issued_reaches_the_logs(front, partner, services, receiver, tmp_path):
    # A worker delivers signed webhooks with a secret custom header, once failing, once not:
    # its logs are searched too.
    worker = start_worker(services, tmp_path / "worker", "webhooks")
    try:
        _issue_and_use_secrets(front, partner, services, receiver, worker)
    finally:
        worker.stop()


def _issue_and_use_secrets(front, partner, services, receiver, worker) -> None:
    issued = list(partner.issued)
    # more secrets of every kind, through every path that hands one out
    created = operator(
        front.base,
        "POST",
        f"/api/v1/admin/partners/{partner.partner_id}/keys",
        {"environment": "sandbox", "name": "second"},
    )
    issued += [created["secretKey"], created["hmacSecret"]]
    rotated = operator(
        front.base,
        "POST",
        f"/api/v1/admin/partners/{partner.partner_id}/keys/{created['id']}/rotate",
    )
    issued += [rotated["secretKey"], rotated["hmacSecret"]]
    header_value = "Bearer hdr_" + secrets.token_hex(16)
    status, hook = call(
        front,
        partner,
        "POST",
        "/v1/partner/webhooks",
        {
            "url": "http://127.0.0.1:9/sir",  # loopback, nothing listening: refused connections
            "eventTypes": ["action.completed"],
            "headers": {"Authorization": header_value},
        },
    )
    assert status == 201, hook
    issued += [hook["secret"], header_value]
    status, again = call(front, partner, "POST", f"/v1/partner/webhooks/{hook['id']}/rotate-secret")
    assert status == 200, again
    issued.append(again["secret"])
    status, delivered = call(
        front,
        partner,
        "POST",
        "/v1/partner/webhooks",
        {"url": receiver, "receiveAllEvents": True, "headers": {"Authorization": header_value}},
    )
    assert status == 201, delivered
    issued.append(delivered["secret"])
    for _ in range(2):  # the receiver fails the first, accepts the second
        status, _ = call(front, partner, "POST", f"/v1/partner/webhooks/{delivered['id']}/test")
        assert status == 202
    deadline = time.monotonic() + 30
    while len(Receiver.hits) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(Receiver.hits) >= 2, worker.logs()[-3000:]
    assert Receiver.hits[0]["Authorization"] == header_value  # the secret header was sent
    status, portal_key = call(
        front,
        partner,
        "POST",
        "/v1/partner/keys",
        {"name": "portal", "environment": "sandbox"},
        mode="portal",
    )
    assert status == 201, portal_key
    issued += [portal_key["secretKey"], portal_key["hmacSecret"]]
    password = "pw-" + secrets.token_hex(12)
    operator(
        front.base,
        "POST",
        "/api/v1/admin/portal-users",
        {"email": f"logs-{secrets.token_hex(3)}@example.test", "password": password},
    )
    issued.append(password)
    # a failed login with a password that is someone else's, and a bad signature with a real key
    reset_login_limits(services.redis_url)
    assert _login(front, partner.portal_email, password) == 401
    status, _ = call(
        front,
        partner,
        "GET",
        "/v1/partner/users",
        mode="none",
        headers={"X-Partner-Key": created["secretKey"], "X-Timestamp": "1", "X-Signature": "00"},
    )
    assert status == 401
    # voucher codes, PINs and claim URLs: loaded by the operator, issued to an order, read once
    product = operator(
        front.base,
        "POST",
        "/api/v1/admin/catalog/products",
        {
            "name": "Log card",
            "category": "gift",
            "country": "US",
            "currency": "USD",
            "deliveryType": "code_with_pin",
            "denominations": [{"faceValue": 5, "tokenPrice": 1}],
        },
    )
    code, pin = "CODE-" + secrets.token_hex(10), "PIN-" + secrets.token_hex(6)
    claim = "https://claim.sir.invalid/" + secrets.token_hex(10)
    operator(
        front.base,
        "POST",
        f"/api/v1/admin/catalog/products/{product['id']}/vouchers",
        {
            "environment": "sandbox",
            "codes": [{"faceValue": 5, "code": code, "pin": pin, "claimUrl": claim}],
        },
    )
    issued += [code, pin, claim]
    order = requests.post(
        f"{front.base}/v1/partner/users/sec_user/orders",
        json={"productId": product["id"], "faceValue": 5, "quantity": 1},
        headers={"Idempotency-Key": "sec-order-" + secrets.token_hex(4)},
        auth=SirAuth(partner, "secret"),
        timeout=30,
    )
    assert order.status_code == 201, order.text
    assert order.json()["status"] == "DELIVERED"
    status, vouchers = call(
        front, partner, "GET", f"/v1/partner/orders/{order.json()['id']}/vouchers"
    )
    assert status == 200 and vouchers["data"][0]["code"] == code  # really issued and read
    # the operator's audit log is a record too: secrets are redacted there (contract 3.4)
    audit, cursor = "", None
    while True:
        page = operator(
            front.base,
            "GET",
            "/api/v1/admin/audit-log?limit=200" + (f"&cursor={cursor}" if cursor else ""),
        )
        audit += json.dumps(page["data"])
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert [secret[:12] for secret in issued if secret in audit] == []
    time.sleep(0.5)  # the processes write log lines as they happen; let the last ones land
    logs = front.logs() + worker.logs()
    assert "sir.workers.webhooks" in worker.logs()  # the worker's output is really captured
    assert "Traceback" not in logs
    leaked = [secret[:12] + "…" for secret in issued if secret in logs]
    assert leaked == []
    # and no fragment long enough to matter either (a secret cut in half by a formatter)
    for secret in issued:
        body = secret.split("_")[-1]
        assert body[:24] not in logs, secret[:12]
