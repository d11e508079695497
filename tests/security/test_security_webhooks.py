"""SSRF and header injection through webhooks, beyond the unit rules of tests/unit.

The delivery-time check (`workers.webhook_actors.destination_refused`) is driven with a stub
resolver standing in for DNS (no outside DNS here): names that resolve to loopback, private,
link-local and IPv6 internal addresses, and rotating answers that mix one in. `localhost` and
the numeric spellings of 127.0.0.1 go through the real system resolver (they never leave the
machine). The connection-time resolver is checked with a stub too, and a real loopback
receiver answering 302 shows that a delivery never follows a redirect (contract 9).
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestClient, TestServer

from engine.credentials import issue_keys
from engine.signing import sign_request
from engine.webhooks import AttemptPlan, header_problems, url_problems
from engine.wire import dumps
from http_front.app import create_app
from workers import runtime, webhook_actors
from workers.webhook_actors import PublicOnlyResolver, destination_refused

INTERNAL = [
    "127.0.0.1",
    "127.53.0.1",
    "10.0.0.7",
    "172.20.1.1",
    "192.168.0.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",
    "0.0.0.0",
    "::1",
    "fc00::1",
    "fd00:ec2::254",  # AWS metadata over IPv6
    "fe80::1",
    "fe80::1%lo",  # scoped link-local, as getaddrinfo writes it
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::",
]


def stub(answers: dict[str, list[str]]) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return answers[host]

    return resolve


@pytest.mark.parametrize("address", INTERNAL)
async def test_a_name_resolving_to_an_internal_address_is_refused(address):
    resolve = stub({"hooks.partner.example": [address]})
    refused = await destination_refused("https://hooks.partner.example/sir", resolve)
    assert refused is not None and address in refused
    # a registration cannot know what the name will resolve to: the name itself is fine there
    assert url_problems("https://hooks.partner.example/sir", allow_private=False) == []


async def test_one_internal_answer_among_public_ones_refuses_the_name():
    resolve = stub({"rebind.example": ["93.184.216.34", "2606:4700::1111", "10.1.2.3"]})
    assert "10.1.2.3" in (await destination_refused("http://rebind.example:8080/", resolve) or "")
    public = stub({"ok.example": ["93.184.216.34", "2606:4700::1111"]})
    assert await destination_refused("https://ok.example/", public) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:9000/hook",
        "http://127.1/hook",  # short form of 127.0.0.1
        "http://2130706433/hook",  # 127.0.0.1 as one decimal number
        "http://0x7f000001/hook",  # ... in hex
        "http://017700000001/hook",  # ... in octal
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fc00::1]/hook",
        "http://[fe80::1]/hook",
    ],
)
async def test_local_spellings_through_the_real_resolver_are_refused(url):
    assert await destination_refused(url) is not None


class StubResolver(AbstractResolver):
    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for address in self.addresses
        ]

    async def close(self) -> None:
        return None


async def test_the_connection_resolver_drops_internal_answers():
    # What the session connects to is filtered again, so a DNS answer that changes between
    # the check and the connection (rebinding) still cannot reach inside.
    with pytest.raises(OSError):
        await PublicOnlyResolver(StubResolver(["127.0.0.1", "::1", "169.254.169.254"])).resolve(
            "rebind.example", 443
        )
    kept = await PublicOnlyResolver(StubResolver(["10.0.0.1", "93.184.216.34"])).resolve(
        "rebind.example", 443
    )
    assert [r["host"] for r in kept] == ["93.184.216.34"]


async def test_a_redirect_to_an_internal_address_is_not_followed(settings, monkeypatch):
    # A receiver on loopback answers 302 to a second listener that stands for an internal
    # service; loopback is allowed here (as in tests) so the first hop is reached at all.
    hits: list[str] = []

    async def internal(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="internal secrets")

    async def redirector(request: web.Request) -> web.Response:
        raise web.HTTPFound(location=f"http://127.0.0.1:{inner_port}/admin")

    inner_app = web.Application()
    inner_app.router.add_route("*", "/admin", internal)
    outer_app = web.Application()
    outer_app.router.add_post("/hook", redirector)
    runners = [web.AppRunner(inner_app), web.AppRunner(outer_app)]
    ports = []
    for runner in runners:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    inner_port, outer_port = ports
    monkeypatch.setattr(runtime, "_settings", settings)
    monkeypatch.setattr(webhook_actors, "_session", None)
    try:
        plan = AttemptPlan(
            delivery_id="d",
            endpoint_id="e",
            event_id="evt_redirect",
            url=f"http://127.0.0.1:{outer_port}/hook",
            body=b"{}",
            headers={"Content-Type": "application/json"},
            attempt_number=1,
        )
        result = await webhook_actors.send(plan)
    finally:
        session = webhook_actors._session
        if session is not None:
            await session.close()
        for runner in runners:
            await runner.cleanup()
    assert result.status_code == 302  # recorded as the answer: a failure, retried later
    assert hits == []  # the internal service was never asked


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Tag": "ok\r\nX-SIR-Signature: sha256=forged"},
        {"X-Tag": "ok\rHost: internal"},
        {"X-Tag": "ok\nContent-Length: 0"},
        {"X-Tag\r\nHost": "internal"},
        {"X-Tag": "ok\u2028line"},  # non-ASCII line separator
        {"X-Tag": "ok\u0085next"},
        {"HOST": "internal"},
        {"content-TYPE": "text/plain"},
        {"Content-Security-Policy": "x"},
        {"user-agent": "curl"},
        {"X-Sir-Timestamp": "1"},
        {"X-SIR-EVENT": "x"},
        {"Transfer-Encoding": "chunked"},
        {"Proxy-Authorization": "Basic x"},
    ],
)
def test_header_injection_and_engine_headers_are_refused(headers):
    assert header_problems(headers)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.1/hook",
        "http://2130706433/hook",
        "http://0x7f000001/hook",
        "http://0x7f.0.0.1/hook",
        "http://017700000001/hook",
        "http://0177.0.0.1/hook",
        "http://10.1/hook",  # 10.0.0.1
        "http://169.254.43518/hook",  # 169.254.169.254, the metadata service
        "http://0/hook",  # 0.0.0.0
        "http://[::ffff:127.0.0.1]/hook",
        "http://[::ffff:7f00:1]/hook",
        "http://[fc00::1]/hook",
        "http://[fe80::1]/hook",
        "http://[::1]/hook",
    ],
)
def test_numeric_spellings_of_internal_addresses_are_refused_at_registration(url):
    # The resolver would turn each into an internal address at delivery (refused there too);
    # registration refuses them up front, as it refuses the dotted forms.
    assert url_problems(url, allow_private=False) != []
    assert url_problems(url, allow_private=True) == []


@pytest.mark.parametrize(
    "url", ["http://8.8.8.8/hook", "http://134744072/hook", "https://1.example/hook"]
)
def test_public_numeric_and_digit_names_are_allowed(url):
    assert url_problems(url, allow_private=False) == []


# -- through the HTTP API, as production runs it (private destinations not allowed) ------------


@pytest_asyncio.fixture(loop_scope="session")
async def production_client(settings) -> AsyncIterator[TestClient]:
    app = create_app(dataclasses.replace(settings, webhook_allow_private=False))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def _signed(client: TestClient, keys: Any, method: str, path: str, body: Any = None) -> Any:
    data = dumps(body).encode() if body is not None else b""
    ts = str(int(time.time()))
    headers = {
        "X-Partner-Key": keys.secret_key,
        "X-Timestamp": ts,
        "X-Signature": sign_request(keys.hmac_secret, ts, method, path, data),
    }
    if data:
        headers["Content-Type"] = "application/json"
    async with client.request(method, path, data=data, headers=headers) as response:
        return response.status, await response.json()


async def test_the_api_refuses_internal_urls_and_injected_headers_and_stores_nothing(
    production_client, db, box, make_partner
):
    partner = await make_partner()
    async with db.begin() as conn:
        keys = await issue_keys(
            conn, box, actor="test", partner_id=partner.partner_id, environment="sandbox", name="s"
        )
    for url in [
        "http://localhost/x",
        "http://127.1/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://[fd00::1]/x",
        "http://169.254.169.254/latest/meta-data",
        "http://0x0a000001/x",
    ]:
        status, body = await _signed(
            production_client,
            keys,
            "POST",
            "/v1/partner/webhooks",
            {"url": url, "receiveAllEvents": True},
        )
        assert (status, list(body["error"]["details"]["fields"])) == (422, ["url"]), url
    status, created = await _signed(
        production_client,
        keys,
        "POST",
        "/v1/partner/webhooks",
        {
            "url": "https://hooks.sir.invalid/x",
            "receiveAllEvents": True,
            "headers": {"X-Tag": "one"},
        },
    )
    assert status == 201, created
    path = f"/v1/partner/webhooks/{created['id']}"
    for change in (
        {"url": "http://10.0.0.1/x"},
        {"headers": {"X-Tag": "one\r\nX-SIR-Signature: sha256=forged"}},
        {"headers": {"Host": "internal.example"}},
        {"headers": {"User-Agent": "x", "Content-Length": "0"}},
    ):
        status, body = await _signed(production_client, keys, "PATCH", path, change)
        assert status == 422, (change, body)
    status, shown = await _signed(production_client, keys, "GET", path)
    assert shown["url"] == "https://hooks.sir.invalid/x" and shown["headers"] == {"X-Tag": "****"}
    status, listed = await _signed(production_client, keys, "GET", "/v1/partner/webhooks")
    assert [e["id"] for e in listed["data"]] == [created["id"]]  # nothing else was stored
