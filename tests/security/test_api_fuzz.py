"""Schemathesis over the served OpenAPI document, against a real `sir-engine serve` process.

Every operation of `/partner-api/openapi.json` gets generated requests, valid and invalid
(schemathesis' positive and negative modes), authenticated as its `x-sir-auth` says: signed
afresh per request (secret key + HMAC over the exact bytes sent), publishable key, a portal JWT
from `/v1/partner/auth/login`, or the operator token. Every answer must be no 5xx, a documented
status, the documented content type, headers and body schema.

Bounded and repeatable for CI: derandomized (the same cases every run), a few examples per
operation, no example database. The fuzzing partner has a large rate-limit override so the run
is not a wall of 429s (429 is documented anyway); portal login is limited per email and IP by
the contract, and its 429s are expected.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.schemas import APIOperation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Services
from tests.security.live_front import (
    LiveFront,
    Partner,
    SirAuth,
    make_partner,
    operator,
    start_front,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 10


@pytest.fixture(scope="module")
def fuzz_front(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveFront]:
    # Webhook URLs are checked as in production (no private destinations); no worker runs, so
    # nothing is delivered anywhere.
    front = start_front(
        services, tmp_path_factory.mktemp("fuzz"), SIR_WEBHOOK_ALLOW_PRIVATE="false"
    )
    yield front
    front.stop()
    logs = front.logs()
    assert "Traceback" not in logs, logs[-5000:]


@pytest.fixture(scope="module")
def fuzz_partner(fuzz_front: LiveFront, services: Services) -> Partner:
    return make_partner(
        fuzz_front.base,
        services.redis_url,
        rate_limit_override={"perHour": 10_000_000, "perMinute": 1_000_000},
    )


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_front: LiveFront) -> schemathesis.schemas.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{fuzz_front.base}/partner-api/openapi.json")
    schema.config.update(base_url=fuzz_front.base)
    return schema


MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


def signed(front: LiveFront, partner: Partner, method: str, path: str, body: Any = None) -> Any:
    response = requests.request(
        method, front.base + path, json=body, auth=SirAuth(partner, "secret"), timeout=30
    )
    assert response.status_code < 300, (method, path, response.status_code, response.text)
    return response.json()


@pytest.fixture(scope="module")
def known_ids(fuzz_front: LiveFront, fuzz_partner: Partner, services: Services) -> dict[str, Any]:
    """Real objects for the path parameters, so generated bodies and queries reach past the
    404 of a random id. The operator API's routes act on another partner (a fuzzed PATCH could
    suspend the fuzzing partner and turn the rest of the run into 401s); the portal's key
    routes on a spare key of the fuzzing partner, never the key the run signs with."""
    base, p = fuzz_front.base, fuzz_partner
    victim = make_partner(base, services.redis_url)
    admin = f"/api/v1/admin/partners/{victim.partner_id}"
    victim_key = operator(base, "GET", f"{admin}/keys")["data"][0]["id"]
    spare = operator(
        base,
        "POST",
        f"/api/v1/admin/partners/{p.partner_id}/keys",
        {"environment": "sandbox", "name": "spare"},
    )
    org = operator(
        base, "POST", "/api/v1/admin/organizations", {"slug": "fuzz-org", "name": "Fuzz Org"}
    )
    product = operator(
        base,
        "POST",
        "/api/v1/admin/catalog/products",
        {
            "name": "Fuzz card",
            "category": "gift",
            "country": "US",
            "currency": "USD",
            "deliveryType": "code",
            "denominations": [{"faceValue": 10, "tokenPrice": 5}],
        },
    )
    signed(fuzz_front, p, "POST", "/v1/partner/users", {"externalUserId": "fuzz_user"})
    stakeholders = [{"stakeholderTypeCode": "CUSTOMER", "partnerUserId": "fuzz_user"}]
    action = signed(
        fuzz_front,
        p,
        "POST",
        "/v1/partner/actions/submit",
        {
            "idempotencyKey": "fuzz_1",
            "actionType": "PURCHASE",
            "amount": "100",
            "stakeholders": stakeholders,
        },
    )
    batch = signed(
        fuzz_front,
        p,
        "POST",
        "/v1/partner/actions/batch",
        {
            "actions": [
                {
                    "idempotencyKey": "fuzz_b1",
                    "actionType": "PURCHASE",
                    "amount": "1",
                    "stakeholders": stakeholders,
                }
            ]
        },
    )
    campaign = signed(
        fuzz_front,
        p,
        "POST",
        "/v1/partner/campaigns",
        {"name": "fuzz", "splits": [{"stakeholderTypeCode": "CUSTOMER", "percent": 100}]},
    )
    topup = signed(
        fuzz_front,
        p,
        "POST",
        "/v1/partner/token-pools/request",
        {"poolId": p.pool_id, "amount": "10"},
    )
    hook = signed(
        fuzz_front,
        p,
        "POST",
        "/v1/partner/webhooks",
        {"url": "https://hooks.sir.invalid/fuzz", "receiveAllEvents": True},
    )
    p.issued.append(hook["secret"])
    signed(fuzz_front, p, "POST", f"/v1/partner/webhooks/{hook['id']}/test")
    delivery = signed(fuzz_front, p, "GET", f"/v1/partner/webhooks/{hook['id']}/deliveries")[
        "data"
    ][0]
    order = requests.post(
        f"{base}/v1/partner/users/fuzz_user/orders",
        json={"productId": product["id"], "faceValue": 10, "quantity": 1},
        headers={"Idempotency-Key": "fuzz-order-1"},
        auth=SirAuth(p, "secret"),
        timeout=30,
    ).json()
    partner_side = {
        "externalId": "fuzz_user",
        "actionId": action["actionId"],
        "batchId": batch["batchId"],
        "campaignId": campaign["id"],
        "poolId": p.pool_id,
        "endpointId": hook["id"],
        "deliveryId": delivery["id"],
        "productId": product["id"],
        "orderId": order.get("id"),
        "day": datetime.now(UTC).date().isoformat(),
        "keyId": spare["id"],
    }
    operator_side = {
        "partnerId": victim.partner_id,
        "keyId": victim_key,
        "poolId": victim.pool_id,
        "requestId": topup["id"],
        "slug": org["slug"],
        "productId": product["id"],
        "orderId": order.get("id"),
    }
    return {"partner": partner_side, "operator": operator_side}


def known_path_parameters(operation: APIOperation, known: dict[str, Any]) -> dict[str, str] | None:
    names = [p.name for p in operation.path_parameters]
    if not names:
        return None
    side = known["operator" if operation.path.startswith("/api/v1/admin") else "partner"]
    values = {name: side.get(name) for name in names}
    return values if all(values.values()) else None  # type: ignore[return-value]


def fuzz_operation(
    operation: APIOperation,
    mode: GenerationMode,
    partner: Partner,
    seen: Counter[tuple[str, int]],
    path_parameters: dict[str, str] | None = None,
) -> None:
    """Run one operation's generated cases in one generation mode; raise on the first failure
    (after hypothesis has shrunk it to a minimal case)."""
    auth = SirAuth(partner, operation.definition.raw["x-sir-auth"])

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case) -> None:
        response = case.call_and_validate(auth=auth, checks=CHECKS, timeout=30)
        seen[(operation.label, response.status_code)] += 1

    run()


@pytest.mark.timeout(600)
def test_every_operation_answers_as_documented(
    fuzz_schema, fuzz_partner: Partner, fuzz_front: LiveFront, known_ids: dict[str, Any]
) -> None:
    failures: list[str] = []
    seen: Counter[tuple[str, int]] = Counter()
    operations = 0
    for result in fuzz_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in MODES:
            try:
                fuzz_operation(operation, mode, fuzz_partner, seen)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # nothing to get wrong: no inputs at all
            except (Exception, FailureGroup) as exc:  # check failures; a request not made
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
        # and once more on real objects: generated bodies and queries against ids that exist
        known = known_path_parameters(operation, known_ids)
        if known is not None:
            try:
                fuzz_operation(operation, GenerationMode.POSITIVE, fuzz_partner, seen, known)
            except (Exception, FailureGroup) as exc:
                failures.append(f"{operation.label} [positive, known ids {known}]: {exc}")
    assert operations > 50
    by_status = Counter(status for (_, status), n in seen.items() for _ in range(n))
    answered_2xx = {label for (label, status) in seen if status < 300}
    print(
        f"\nfuzzing: {operations} operations, {sum(seen.values())} requests, "
        f"by status {sorted(by_status.items())}; answered 2xx: {len(answered_2xx)} operations"
    )
    logs = fuzz_front.logs()
    assert [s for s in fuzz_partner.issued if s in logs] == [], "a secret reached the logs"
    # The run must get past authentication: were signing broken, every answer would be a
    # (documented) 401 and the checks would pass for nothing.
    assert len(answered_2xx) >= 50, sorted(answered_2xx)  # 69 of 94 when written
    assert not failures, f"{len(failures)} failing operations:\n\n" + "\n\n".join(failures)
