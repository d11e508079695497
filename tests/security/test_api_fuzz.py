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

import pytest
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
from tests.security.live_front import LiveFront, Partner, SirAuth, make_partner, start_front

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 6


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


def fuzz_operation(
    operation: APIOperation, mode: GenerationMode, partner: Partner, seen: Counter[tuple[str, int]]
) -> None:
    """Run one operation's generated cases in one generation mode; raise on the first failure
    (after hypothesis has shrunk it to a minimal case)."""
    auth = SirAuth(partner, operation.definition.raw["x-sir-auth"])

    @given(case=operation.as_strategy(generation_mode=mode))
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
    fuzz_schema, fuzz_partner: Partner, fuzz_front: LiveFront
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
    assert operations > 50
    by_status = Counter(status for (_, status), n in seen.items() for _ in range(n))
    print(
        f"\nfuzzing: {operations} operations, {sum(seen.values())} requests, by status {sorted(by_status.items())}"
    )
    # The run must get past authentication: were signing broken, every answer would be a
    # (documented) 401 and the checks above would pass for nothing.
    answered_2xx = {label for (label, status) in seen if status < 300}
    logs = fuzz_front.logs()
    assert [s for s in fuzz_partner.issued if s in logs] == [], "a secret reached the logs"
    assert len(answered_2xx) >= 20, sorted(answered_2xx)
    assert not failures, f"{len(failures)} failing operations:\n\n" + "\n\n".join(failures)
