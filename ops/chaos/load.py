"""The seeded mixed load, and what every client was answered.

Clients speak signed HTTP through `sir_client.SirClient` and retry as the contract says: the same
idempotency key, signed afresh (a new timestamp per attempt); 429, 503, `401 REPLAYED_REQUEST`
(a replay record lost with Redis) and `409 IDEMPOTENCY_IN_PROGRESS` are retried after a pause
(Retry-After, capped so the compressed run stays short); a dropped connection or a timeout means
"unknown outcome" and is retried too. Anything else is an answer.

`Ledger` keeps every answer per idempotency key. The checks compare it with the database: an
answered key must have exactly the effect it was answered with, a refused key none.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp

from ops.chaos.receiver import FlakyReceiver
from sir_client import SirClient, SirResponse, segment

API = "/v1/partner"
REQUEST_TIMEOUT = 10.0
RETRY_PAUSE = 0.2
MAX_RETRY_AFTER = 2.0
# The main endpoint wants every action.* event; each registered one picks one of them (the
# fan-out multiplies the delivery work, which the run must drain on two cores).
MAIN_EVENT_TYPES = ["action.completed", "action.reversed", "action.failed"]
WEBHOOK_EVENT_CHOICES = ("action.completed", "action.reversed", "action.failed")
MAX_REGISTRATIONS = 3
USERS = 150


def error_code(response: SirResponse) -> str:
    if isinstance(response.body, dict):
        error = response.body.get("error")
        if isinstance(error, dict):
            return str(error.get("code", ""))
    return ""


def is_retryable(response: SirResponse) -> bool:
    code = error_code(response)
    return (
        response.status in (429, 503)
        or (response.status == 401 and code == "REPLAYED_REQUEST")
        or (response.status == 409 and code == "IDEMPOTENCY_IN_PROGRESS")
    )


@dataclass
class KeyRecord:
    """One idempotency key of a submit (or batch item): its body, and every answer."""

    body: dict[str, Any]
    expect_apply: bool  # False for the refusals the load provokes on purpose
    action_ids: set[str] = field(default_factory=set)
    refusals: list[str] = field(default_factory=list)
    unresolved: int = 0  # attempts budget spent without an answer


@dataclass
class ReversalRecord:
    action_id: str
    body: dict[str, Any]
    reversal_ids: set[str] = field(default_factory=set)
    refusals: list[str] = field(default_factory=list)
    unresolved: int = 0


@dataclass
class Ledger:
    """What the clients sent and were answered."""

    submits: dict[str, KeyRecord] = field(default_factory=dict)
    reversals: dict[str, ReversalRecord] = field(default_factory=dict)
    batches: dict[str, list[str]] = field(default_factory=dict)  # batchId -> accepted item keys
    batch_rejected: set[str] = field(default_factory=set)  # keys rejected up front
    users: set[str] = field(default_factory=set)
    endpoints: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (label, secret)
    operations: Counter[str] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)  # answers by status/code
    unexpected: list[str] = field(default_factory=list)
    reused_key_amounts: dict[str, str] = field(default_factory=dict)  # key -> original amount


@dataclass
class Budget:
    """How long one operation may keep retrying, and until when any may (the hard stop)."""

    per_operation: float
    hard_deadline: float


class Driver:
    """Runs operations for `clients` concurrent clients until `load_until` (monotonic)."""

    def __init__(
        self,
        base_url: str,
        secret_key: str,
        hmac_secret: str,
        receiver: FlakyReceiver,
        ledger: Ledger,
        seed: int,
        budget: Budget,
    ) -> None:
        self.base_url = base_url
        self.secret_key = secret_key
        self.hmac_secret = hmac_secret
        self.receiver = receiver
        self.ledger = ledger
        self.seed = seed
        self.budget = budget
        self._counter = 0
        self._applied: list[str] = []  # answered submit keys, candidates for replays/reversals
        self._reversible: list[str] = []  # action ids not yet picked for a reversal
        self._known_users: list[str] = []  # created through POST /users
        self._registrations = 0

    def client(self) -> SirClient:
        return SirClient(self.base_url, self.secret_key, self.hmac_secret, timeout=REQUEST_TIMEOUT)

    def _next(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-{self.seed}-{self._counter}"

    # -- one request, retried -----------------------------------------------------------------------

    async def call(
        self, sir: SirClient, method: str, path: str, body: Any = None
    ) -> SirResponse | None:
        """Send until an answer that is not retryable; None when the budget ran out first."""
        give_up = min(time.monotonic() + self.budget.per_operation, self.budget.hard_deadline)
        for _ in range(10_000):  # bounded; the time budget ends it long before
            if time.monotonic() > give_up:
                return None
            try:
                response = await sir.request_raw(method, path, body)
            except (TimeoutError, aiohttp.ClientError, OSError):
                self.ledger.requests["no answer"] += 1
                await asyncio.sleep(RETRY_PAUSE)
                continue
            code = error_code(response)
            self.ledger.requests[f"{response.status} {code}".strip()] += 1
            if is_retryable(response):
                pause = RETRY_PAUSE
                retry_after = response.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    pause = max(pause, min(float(retry_after), MAX_RETRY_AFTER))
                await asyncio.sleep(pause)
                continue
            if response.status >= 500:
                # A 500 is a bug, never "the database went away" (that is a 503): reported,
                # and retried as a client would, since nothing may have been applied.
                self.ledger.unexpected.append(f"{method} {path}: {response.status} {code}")
                await asyncio.sleep(RETRY_PAUSE)
                continue
            return response
        return None

    # -- submits -----------------------------------------------------------------------------------

    def _submit_body(self, rng: random.Random, key: str) -> dict[str, Any]:
        known = self._known_users and rng.random() < 0.3
        user = rng.choice(self._known_users) if known else f"u-{rng.randrange(USERS)}"
        return {
            "idempotencyKey": key,
            "actionType": rng.choice(("PURCHASE", "DONATION")),
            "amount": str(Decimal(rng.randint(100, 20_000)) / 100),
            "currency": "USD",
            "stakeholders": [{"stakeholderTypeCode": "CUSTOMER", "partnerUserId": user}],
            # A user created through POST /users must be found without auto-creation.
            "autoCreateUsers": not known,
        }

    def _record_submit_answer(self, key: str, response: SirResponse | None) -> None:
        record = self.ledger.submits[key]
        if response is None:
            record.unresolved += 1
            return
        code = error_code(response)
        if response.status == 200:
            record.action_ids.add(response.body["actionId"])
        elif response.status == 409 and code == "IDEMPOTENT":
            record.action_ids.add(response.body["error"]["details"]["original"]["actionId"])
        else:
            record.refusals.append(f"{response.status} {code}")
            return
        if key not in self._applied:
            self._applied.append(key)
            self._reversible.extend(record.action_ids)

    async def submit(self, sir: SirClient, key: str) -> None:
        body = self.ledger.submits[key].body
        response = await self.call(sir, "POST", f"{API}/actions/submit", body)
        self._record_submit_answer(key, response)

    async def op_submit(self, sir: SirClient, rng: random.Random) -> None:
        draw = rng.random()
        if draw < 0.1 and self._applied:
            # A duplicate after the answer: the same key and body, later.
            self.ledger.operations["submit (duplicate key, replay)"] += 1
            await self.submit(sir, rng.choice(self._applied))
            return
        key = self._next("act")
        self.ledger.submits[key] = KeyRecord(self._submit_body(rng, key), expect_apply=True)
        if draw < 0.2:
            # A duplicate in flight: the same key twice at once (one applies, one replays).
            self.ledger.operations["submit (duplicate key, concurrent)"] += 1
            async with self.client() as twin:
                await asyncio.gather(self.submit(sir, key), self.submit(twin, key))
            return
        self.ledger.operations["submit"] += 1
        await self.submit(sir, key)

    async def op_refused(self, sir: SirClient, rng: random.Random) -> None:
        if rng.random() < 0.5 or not self._applied:
            # An unknown user without auto-creation: 422 UNKNOWN_USER, nothing applied.
            self.ledger.operations["submit refused (unknown user)"] += 1
            key = self._next("ref")
            body = self._submit_body(rng, key)
            body["stakeholders"] = [
                {"stakeholderTypeCode": "CUSTOMER", "partnerUserId": self._next("ghost")}
            ]
            body["autoCreateUsers"] = False
            self.ledger.submits[key] = KeyRecord(body, expect_apply=False)
            response = await self.call(sir, "POST", f"{API}/actions/submit", body)
            if response is None:
                self.ledger.submits[key].unresolved += 1
            elif response.status != 422 or error_code(response) != "UNKNOWN_USER":
                self.ledger.unexpected.append(
                    f"unknown user answered {response.status} {error_code(response)}"
                )
            else:
                self.ledger.submits[key].refusals.append("422 UNKNOWN_USER")
            return
        # An applied key with another body: 422 IDEMPOTENCY_KEY_REUSED; the original stands.
        self.ledger.operations["submit refused (key reused, other body)"] += 1
        key = rng.choice(self._applied)
        original = self.ledger.submits[key].body
        self.ledger.reused_key_amounts[key] = original["amount"]
        body = {**original, "amount": str(Decimal(original["amount"]) + 1)}
        response = await self.call(sir, "POST", f"{API}/actions/submit", body)
        if response is not None and (
            response.status != 422 or error_code(response) != "IDEMPOTENCY_KEY_REUSED"
        ):
            self.ledger.unexpected.append(
                f"reused key answered {response.status} {error_code(response)}"
            )

    # -- reversals ---------------------------------------------------------------------------------

    async def reverse(self, sir: SirClient, key: str) -> None:
        record = self.ledger.reversals[key]
        response = await self.call(
            sir, "POST", f"{API}/actions/{segment(record.action_id)}/reverse", record.body
        )
        if response is None:
            record.unresolved += 1
        elif response.status == 200:
            record.reversal_ids.add(response.body["reversalId"])
        elif response.status == 409 and error_code(response) == "IDEMPOTENT":
            record.reversal_ids.add(response.body["error"]["details"]["original"]["reversalId"])
        else:
            record.refusals.append(f"{response.status} {error_code(response)}")

    async def op_reverse(self, sir: SirClient, rng: random.Random) -> None:
        if self.ledger.reversals and rng.random() < 0.2:
            self.ledger.operations["reversal (duplicate key, replay)"] += 1
            await self.reverse(sir, rng.choice(list(self.ledger.reversals)))
            return
        if not self._reversible:
            await self.op_submit(sir, rng)
            return
        action_id = self._reversible.pop(rng.randrange(len(self._reversible)))
        key = self._next("rev")
        body: dict[str, Any] = {"idempotencyKey": key, "reason": "chaos"}
        amounts = [
            r.body["amount"] for r in self.ledger.submits.values() if action_id in r.action_ids
        ]
        if amounts and rng.random() < 0.5:
            body["amount"] = str((Decimal(amounts[0]) / 2).quantize(Decimal("0.01")))
        self.ledger.operations["reversal" if "amount" not in body else "reversal (partial)"] += 1
        self.ledger.reversals[key] = ReversalRecord(action_id, body)
        await self.reverse(sir, key)

    # -- batches -----------------------------------------------------------------------------------

    async def op_batch(self, sir: SirClient, rng: random.Random) -> None:
        self.ledger.operations["batch"] += 1
        items: list[dict[str, Any]] = []
        for _ in range(rng.randint(3, 12)):
            if self._applied and rng.random() < 0.15:
                items.append(self.ledger.submits[rng.choice(self._applied)].body)
                continue
            key = self._next("bat")
            self.ledger.submits[key] = KeyRecord(self._submit_body(rng, key), expect_apply=True)
            items.append(self.ledger.submits[key].body)
        if rng.random() < 0.3:
            key = self._next("bad")
            invalid = {**self._submit_body(rng, key), "amount": "-1"}
            self.ledger.submits[key] = KeyRecord(invalid, expect_apply=False)
            items.append(invalid)
        # An unknown outcome is retried as a new batch: its items' keys make it harmless.
        response = await self.call(sir, "POST", f"{API}/actions/batch", {"actions": items})
        if response is None or response.status != 202:
            if response is not None:
                self.ledger.unexpected.append(f"batch answered {response.status}")
            for item in items:
                self.ledger.submits[item["idempotencyKey"]].unresolved += 1
            return
        rejected = {r["index"] for r in response.body.get("rejected", [])}
        for index in rejected:
            key = items[index]["idempotencyKey"]
            self.ledger.batch_rejected.add(key)
            self.ledger.submits[key].refusals.append("rejected up front")
        self.ledger.batches[response.body["batchId"]] = [
            item["idempotencyKey"] for i, item in enumerate(items) if i not in rejected
        ]

    async def settle_batches(self, sir: SirClient, timeout: float) -> list[str]:
        """Poll every batch until COMPLETED and record its items' answers. Returns the batch
        ids still not completed when `timeout` passed."""
        pending = dict(self.ledger.batches)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            for batch_id in list(pending):
                response = await self.call(sir, "GET", f"{API}/actions/batches/{segment(batch_id)}")
                if response is None or response.status != 200:
                    continue
                if response.body["status"] != "COMPLETED":
                    continue
                del pending[batch_id]
                for result in response.body["results"]:
                    record = self.ledger.submits[result["idempotencyKey"]]
                    if result["status"] == "COMPLETED" and result.get("actionId"):
                        record.action_ids.add(result["actionId"])
                    else:
                        record.refusals.append(f"batch item {result.get('error')}")
            if pending:
                await asyncio.sleep(1)
        return sorted(pending)

    # -- users and webhooks ------------------------------------------------------------------------

    async def op_new_user(self, sir: SirClient, rng: random.Random) -> None:
        self.ledger.operations["new user"] += 1
        external = self._next("nu")
        body = {"externalUserId": external, "email": f"{external}@example.com"}
        response = await self.call(sir, "POST", f"{API}/users", body)
        if response is not None and response.status in (200, 201):
            self.ledger.users.add(external)
            self._known_users.append(external)
        elif response is not None:
            self.ledger.unexpected.append(f"new user answered {response.status}")

    async def register_webhook(
        self, sir: SirClient, label: str, event_types: list[str], receive_all: bool
    ) -> str | None:
        body = {
            "url": self.receiver.url(label),
            "description": f"chaos {label}",
            "eventTypes": event_types,
            "receiveAllEvents": receive_all,
        }
        response = await self.call(sir, "POST", f"{API}/webhooks", body)
        if response is None or response.status not in (200, 201):
            if response is not None:
                self.ledger.unexpected.append(f"webhook registration answered {response.status}")
            return None
        self.ledger.endpoints[response.body["id"]] = (label, response.body["secret"])
        return str(response.body["id"])

    async def op_webhook(self, sir: SirClient, rng: random.Random) -> None:
        if self._registrations >= MAX_REGISTRATIONS:
            await self.op_new_user(sir, rng)
            return
        self._registrations += 1
        self.ledger.operations["webhook registration"] += 1
        # A fresh label: a registration retried after an unknown outcome may leave an endpoint
        # whose secret was never answered; its deliveries stay apart from the verified ones.
        types = [rng.choice(WEBHOOK_EVENT_CHOICES)]
        await self.register_webhook(sir, self._next("ep"), types, receive_all=False)

    # -- the clients -------------------------------------------------------------------------------

    OPERATIONS = (
        ("submit", 0.62),
        ("reverse", 0.1),
        ("batch", 0.05),
        ("new_user", 0.1),
        ("refused", 0.1),
        ("webhook", 0.03),
    )

    async def run_client(self, index: int, load_until: float, interval: float) -> None:
        """One client: an operation every `interval` seconds (later if one takes longer; a
        slow answer is not made up for with a burst)."""
        rng = random.Random(f"client-{self.seed}-{index}")
        names = [name for name, _ in self.OPERATIONS]
        weights = [weight for _, weight in self.OPERATIONS]
        next_at = time.monotonic() + rng.uniform(0, interval)
        async with self.client() as sir:
            for _ in range(1_000_000):  # bounded; the clock ends it
                now = time.monotonic()
                if now >= load_until:
                    return
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                next_at = max(next_at + interval, time.monotonic())
                name = rng.choices(names, weights)[0]
                await getattr(self, f"op_{name}")(sir, rng)

    async def resolve_unresolved(self) -> None:
        """After the faults: retry every operation whose outcome stayed unknown (the client
        keeps its key and tries again, as the contract asks)."""
        async with self.client() as sir:
            for key, record in list(self.ledger.submits.items()):
                if record.unresolved and not record.action_ids and not record.refusals:
                    if key in self.ledger.batch_rejected:
                        continue
                    response = await self.call(sir, "POST", f"{API}/actions/submit", record.body)
                    if response is not None and record.expect_apply:
                        self._record_submit_answer(key, response)
                    elif response is not None:
                        record.refusals.append(f"{response.status} {error_code(response)}")
            for key, reversal in list(self.ledger.reversals.items()):
                if reversal.unresolved and not reversal.reversal_ids and not reversal.refusals:
                    await self.reverse(sir, key)
