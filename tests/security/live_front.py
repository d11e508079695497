"""A real `sir-engine serve` process for the fuzzing and security tests, and a partner set up
on it through the operator API, with every credential mode the API knows.

The process writes its stdout and stderr to files, so a test can search everything it logged
(for secrets, for tracebacks). Requests go over loopback with `requests` (schemathesis' own
transport); secret-key calls are signed afresh per request with `engine.signing`, over the
exact bytes and request target that go on the wire.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
from requests.auth import AuthBase

from engine.signing import sign_request
from tests.conftest import OPERATOR_TOKEN, ROOT, Services, free_port, wait_http_ok

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
PASSWORD = "fuzz-password-" + secrets.token_hex(8)


@dataclass
class LiveFront:
    base: str
    process: subprocess.Popen[bytes]
    log_paths: tuple[Path, Path]

    def logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.log_paths)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def start_front(services: Services, directory: Path, **extra_env: str) -> LiveFront:
    """Start `sir-engine serve` on a free loopback port, its output into files under `directory`."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    out, err = directory / "serve.stdout", directory / "serve.stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "serve", "--port", str(port)],
            env=services.env(SIR_LOG_LEVEL="DEBUG", **extra_env),
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(f"{base}/healthz", process)
    except Exception:
        process.kill()
        raise
    return LiveFront(base, process, (out, err))


def start_worker(services: Services, directory: Path, *queues: str) -> LiveFront:
    """A `sir-engine worker` process (one process, two threads) on `queues`, logging at DEBUG
    into files under `directory`. Returned as a LiveFront without a base URL, for its logs."""
    directory.mkdir(parents=True, exist_ok=True)
    out, err = directory / "worker.stdout", directory / "worker.stderr"
    command = [sys.executable, "-m", "ops.cli", "worker", "--processes", "1", "--threads", "2"]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, "--queues", *queues],
            env=services.env(SIR_LOG_LEVEL="DEBUG"),
            cwd=ROOT,
            stdout=stdout,
            stderr=stderr,
        )
    return LiveFront("", process, (out, err))


@dataclass
class Partner:
    """A partner of the live front with one credential of every kind."""

    partner_id: str
    secret_key: str
    hmac_secret: str
    publishable_key: str
    portal_email: str
    access_token: str
    pool_id: str
    issued: list[str] = field(default_factory=list)  # every secret handed out, for log searches


def operator(base: str, method: str, path: str, body: Any = None) -> Any:
    response = requests.request(method, base + path, json=body, headers=OPERATOR, timeout=30)
    assert response.status_code < 300, (method, path, response.status_code, response.text)
    return response.json()


def reset_login_limits(redis_url: str) -> None:
    """Forget the portal login budgets (per email and per client IP, contract 3.3): every
    loopback test client shares the 127.0.0.1 budget, and a test that spends it on purpose
    must not lock the next test's own login out."""
    client = redis.Redis.from_url(redis_url)
    try:
        for key in client.scan_iter(match="sir:portal-login:*"):
            client.delete(key)
    finally:
        client.close()


def make_partner(
    base: str, redis_url: str, *, rate_limit_override: dict[str, int] | None = None
) -> Partner:
    """An ACTIVE partner with every feature, a funded sandbox pool, a key pair and a portal
    user logged in, all through the operator and portal APIs of the live front."""
    tag = secrets.token_hex(4)
    partner = operator(
        base,
        "POST",
        "/api/v1/admin/partners",
        {
            "name": f"Fuzz partner {tag}",
            "status": "ACTIVE",
            "enabledFeatures": ["ACTIONS", "DONATIONS", "MARKETPLACE"],
            "actionTypes": ["PURCHASE", "DONATION"],
            "stakeholderTypes": ["CUSTOMER", "DONOR", "ORGANIZATION", "REFERRER"],
            "rateLimitOverride": rate_limit_override,
        },
    )
    admin = f"/api/v1/admin/partners/{partner['id']}"
    keys = operator(base, "POST", f"{admin}/keys", {"environment": "sandbox", "name": "fuzz"})
    pool = operator(
        base,
        "POST",
        f"{admin}/token-pools",
        {"environment": "sandbox", "name": "main", "allocation": 1_000_000},
    )
    email = f"fuzz-{tag}@example.test"
    operator(
        base,
        "POST",
        "/api/v1/admin/portal-users",
        {"email": email, "password": PASSWORD, "partnerId": partner["id"]},
    )
    reset_login_limits(redis_url)
    login = requests.post(
        f"{base}/v1/partner/auth/login", json={"email": email, "password": PASSWORD}, timeout=30
    )
    assert login.status_code == 200, login.text
    session = login.json()
    return Partner(
        partner_id=partner["id"],
        secret_key=keys["secretKey"],
        hmac_secret=keys["hmacSecret"],
        publishable_key=keys["publicKey"],
        portal_email=email,
        access_token=session["accessToken"],
        pool_id=pool["id"],
        issued=[
            keys["secretKey"],
            keys["hmacSecret"],
            PASSWORD,
            session["accessToken"],
            session["refreshToken"],
        ],
    )


class SirAuth(AuthBase):
    """requests auth that authenticates one request as the operation's `x-sir-auth` says.

    `secret`: X-Partner-Key, X-Timestamp and X-Signature over the prepared request's exact body
    bytes and request target (contract 3.1). Two identical writes in the same second would carry
    the same signature and be refused as replays (rightly), so a repeated (method, target, body)
    is signed with a later timestamp, still well inside the 300 s window.
    """

    def __init__(self, partner: Partner, mode: str) -> None:
        self.partner = partner
        self.mode = mode

    _last: dict[str, int] = {}  # noqa: RUF012 - shared on purpose: replays are per key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        headers = request.headers
        if self.mode == "operator":
            headers["Authorization"] = OPERATOR["Authorization"]
        elif self.mode == "portal":
            headers["Authorization"] = f"Bearer {self.partner.access_token}"
        elif self.mode in ("publishable", "widget"):
            headers["X-Partner-Key"] = self.partner.publishable_key
        elif self.mode == "secret":
            body = request.body or b""
            if isinstance(body, str):
                body = body.encode()
            method = (request.method or "GET").upper()
            target = request.path_url
            fingerprint = hashlib.sha256(method.encode() + target.encode() + body).hexdigest()
            ts = int(time.time())
            if method != "GET":  # only writes are refused as replays
                ts = max(ts, SirAuth._last.get(fingerprint, ts - 1) + 1)
                SirAuth._last[fingerprint] = ts
            headers["X-Partner-Key"] = self.partner.secret_key
            headers["X-Timestamp"] = str(ts)
            headers["X-Signature"] = sign_request(
                self.partner.hmac_secret, str(ts), method, target, body
            )
        return request
