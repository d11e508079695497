"""The proofs after the run: what the clients were answered against what the database holds,
what the receiver got against what was committed, and the ledger and dead letters.

Findings fall in three groups, which the table prints:
- lost: an accepted operation with no effect (or another effect than answered), a committed
  event no endpoint got, a batch item accepted and never processed;
- duplicated: one idempotency key with two effects (two answers naming different actions, two
  distribution entries for one action, two reversal entries for one reversal);
- broken: everything else the run must hold (a refused operation that applied something, a row
  no client asked for, `ledger verify`, dead letters other than the injected poison, pool
  balance not equal to funding minus net distribution, a delivery not verifiable with its
  endpoint's secret, a 5xx other than 503, an operation never resolved).
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from engine.db import create_engine
from ops.chaos.cluster import FUNDING, Cluster, Tenant
from ops.chaos.load import Ledger
from ops.chaos.receiver import FlakyReceiver
from ops.processes import sir_engine_argv
from sir_client.webhooks import verify_webhook

LIMIT = 20  # findings listed per group; the counts are always whole


@dataclass
class Findings:
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.broken)


async def _rows(database_url: str, tenant: Tenant) -> dict[str, list[Any]]:
    db = create_engine(database_url)
    scoped = "WHERE partner_id = :partner_id AND environment = :environment"
    queries = {
        "actions": f"SELECT idempotency_key, id, amount::text, tokens_distributed, "
        f"tokens_reversed FROM actions {scoped}",
        "reversals": f"SELECT idempotency_key, id, action_id, tokens_reversed FROM reversals {scoped}",
        "entries": f"SELECT action_id, reversal_id, count(*) FROM journal_entries {scoped} "
        "AND action_id IS NOT NULL GROUP BY action_id, reversal_id",
        "users": f"SELECT external_user_id FROM partner_users {scoped}",
        "events": f"SELECT id, type, relayed_at IS NOT NULL, created_at FROM outbox_events {scoped}",
        "endpoints": f"SELECT id, url, created_at, event_types, receive_all_events "
        f"FROM webhook_endpoints {scoped}",
        "deliveries": f"SELECT event_id, endpoint_id, status FROM webhook_deliveries {scoped}",
        "pool": "SELECT balance FROM ledger_accounts WHERE partner_id = :partner_id "
        "AND environment = :environment AND kind = 'POOL' AND pool_id = :pool_id",
        "batches": f"SELECT id, status FROM action_batches {scoped}",
    }
    params = {**tenant.scope.params, "pool_id": tenant.pool_id}
    try:
        async with db.connect() as conn:
            return {
                name: list((await conn.execute(text(sql), params)).all())
                for name, sql in queries.items()
            }
    finally:
        await db.dispose()


def _check_actions(ledger: Ledger, rows: dict[str, list[Any]], found: Findings) -> None:
    actions = {key: (action_id, amount) for key, action_id, amount, *_ in rows["actions"]}
    entries = Counter[str]()
    for action_id, reversal_id, count in rows["entries"]:
        if reversal_id is None:
            entries[action_id] += count
    accepted = refused = 0
    for key, record in ledger.submits.items():
        row = actions.get(key)
        if len(record.action_ids) > 1:
            found.duplicated.append(f"{key}: answered with {sorted(record.action_ids)}")
        if record.action_ids:
            accepted += 1
            answered = next(iter(record.action_ids))
            if row is None:
                found.lost.append(f"{key}: answered {answered}, no action in the database")
            elif row[0] not in record.action_ids:
                found.lost.append(f"{key}: answered {answered}, the database holds {row[0]}")
            if not record.expect_apply:
                found.broken.append(f"{key}: meant to be refused, answered {answered}")
        elif record.refusals:
            refused += 1
            if row is not None:
                found.broken.append(f"{key}: refused ({record.refusals[-1]}) yet applied {row[0]}")
        elif row is None or record.expect_apply:
            # No answer at all even after the drain's retries: a client left in doubt.
            found.broken.append(f"{key}: never answered ({record.unresolved} budgets spent)")
    for key, amount in ledger.reused_key_amounts.items():
        row = actions.get(key)
        if row is not None and row[1].rstrip("0").rstrip(".") != amount.rstrip("0").rstrip("."):
            found.broken.append(f"{key}: reused with another body, amount now {row[1]}")
    asked = set(ledger.submits)
    for key, (action_id, _) in actions.items():
        if key not in asked:
            found.broken.append(f"{key}: action {action_id} that no client asked for")
        if entries[action_id] != 1:
            target = found.duplicated if entries[action_id] > 1 else found.lost
            target.append(f"{action_id}: {entries[action_id]} distribution entries")
    found.facts["actions accepted (keys)"] = accepted
    found.facts["actions refused (keys)"] = refused
    found.facts["action rows"] = len(actions)


def _check_reversals(ledger: Ledger, rows: dict[str, list[Any]], found: Findings) -> None:
    reversals = {key: (rid, action_id, tokens) for key, rid, action_id, tokens in rows["reversals"]}
    entries = Counter[str]()
    for _, reversal_id, count in rows["entries"]:
        if reversal_id is not None:
            entries[reversal_id] += count
    for key, record in ledger.reversals.items():
        row = reversals.get(key)
        if len(record.reversal_ids) > 1:
            found.duplicated.append(f"{key}: answered with {sorted(record.reversal_ids)}")
        if record.reversal_ids:
            if row is None or row[0] not in record.reversal_ids:
                found.lost.append(f"{key}: answered {record.reversal_ids}, database {row}")
        elif record.refusals:
            if row is not None:
                found.broken.append(f"{key}: refused ({record.refusals[-1]}) yet applied")
        else:
            found.broken.append(f"{key}: reversal never answered")
    for key, (reversal_id, _, _) in reversals.items():
        if key not in ledger.reversals:
            found.broken.append(f"{key}: reversal {reversal_id} that no client asked for")
        if entries[reversal_id] != 1:
            target = found.duplicated if entries[reversal_id] > 1 else found.lost
            target.append(f"{reversal_id}: {entries[reversal_id]} reversal entries")
    by_action: dict[str, int] = defaultdict(int)
    for _, action_id, tokens in reversals.values():
        by_action[action_id] += tokens
    distributed = reversed_total = 0
    for _, action_id, _, tokens, tokens_reversed in rows["actions"]:
        distributed += tokens
        reversed_total += tokens_reversed
        if tokens_reversed != by_action.get(action_id, 0):
            found.broken.append(
                f"{action_id}: tokens_reversed {tokens_reversed} != reversals {by_action[action_id]}"
            )
    pool = rows["pool"][0][0] if rows["pool"] else None
    expected = FUNDING.micro - distributed + reversed_total
    if pool != expected:
        found.broken.append(f"pool balance {pool} != funding - distributed + reversed {expected}")
    found.facts["reversal rows"] = len(reversals)


def _check_users_and_batches(ledger: Ledger, rows: dict[str, list[Any]], found: Findings) -> None:
    users = Counter(external for (external,) in rows["users"])
    for external in ledger.users:
        if users[external] != 1:
            found.lost.append(f"user {external}: {users[external]} rows")
    for batch_id, status in rows["batches"]:
        if status != "COMPLETED":
            found.lost.append(f"batch {batch_id} left {status}")
    found.facts["users"] = len(users)
    found.facts["batches"] = len(rows["batches"])


def _check_webhooks(
    ledger: Ledger, rows: dict[str, list[Any]], receiver: FlakyReceiver, found: Findings
) -> None:
    labels = {endpoint_id: label for endpoint_id, (label, _) in ledger.endpoints.items()}
    secrets_by_label = {label: secret for label, secret in ledger.endpoints.values()}
    verified: set[tuple[str, str]] = set()  # (label, event id)
    copies = Counter[tuple[str, str]]()
    for receipt in receiver.delivered:
        secret = secrets_by_label.get(receipt.path)
        if secret is None:
            continue  # an endpoint whose registration was never answered: no secret to check
        if not verify_webhook(
            secret, receipt.timestamp, receipt.body, receipt.signature, now=receipt.received_at
        ):
            found.broken.append(f"delivery to {receipt.path} not verifiable with its secret")
            continue
        event_id = json.loads(receipt.body)["id"]
        verified.add((receipt.path, event_id))
        copies[(receipt.path, event_id)] += 1
    events = {
        event_id: (kind, relayed, created) for event_id, kind, relayed, created in rows["events"]
    }
    for event_id, (kind, relayed, _) in events.items():
        if not relayed:
            found.lost.append(f"event {event_id} ({kind}) never relayed")
    endpoints = {row[0]: row for row in rows["endpoints"]}
    delivered_to: dict[str, set[str]] = defaultdict(set)
    expected = 0
    for event_id, endpoint_id, status in rows["deliveries"]:
        delivered_to[endpoint_id].add(event_id)
        label = labels.get(endpoint_id)
        if label is None:
            continue
        expected += 1
        if (label, event_id) not in verified:
            found.lost.append(f"event {event_id} never reached {label} ({status})")
        elif status != "SUCCEEDED":
            found.broken.append(f"delivery of {event_id} to {label} left {status}")
    # The fan-out itself: every event committed after an endpoint was registered, of a type it
    # wants, has a delivery to it.
    for endpoint_id, label in labels.items():
        _, _, registered, types, receive_all = endpoints[endpoint_id]
        for event_id, (kind, _, created) in events.items():
            wanted = receive_all or kind in types
            if wanted and created > registered and event_id not in delivered_to[endpoint_id]:
                found.lost.append(f"event {event_id} ({kind}) has no delivery to {label}")
    found.facts["events committed"] = len(events)
    found.facts["deliveries to verify"] = expected
    found.facts["deliveries verified"] = len(verified)
    found.facts["delivered more than once"] = sum(1 for n in copies.values() if n > 1)
    found.facts["endpoints without an answered secret"] = len(
        [e for e in endpoints if e not in labels]
    )


def _check_ledger_and_dead_letters(cluster: Cluster, poison: str, found: Findings) -> None:
    verdict = subprocess.run(
        sir_engine_argv("ledger", "verify"),
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    found.facts["ledger verify"] = verdict.stdout.strip().splitlines()[-1:] or verdict.stderr[-200:]
    if verdict.returncode != 0:
        found.broken.append(f"ledger verify: {verdict.stdout.strip()[-500:]}")
    listed = subprocess.run(
        sir_engine_argv("dead-letters", "list"),
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    letters = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    ids = [letter["messageId"] for letter in letters]
    found.facts["dead letters"] = len(ids)
    if ids != [poison]:
        others = [
            f"{x['queue']}/{x['actor']}: {x.get('error')}"
            for x in letters
            if x["messageId"] != poison
        ]
        if poison not in ids:
            found.broken.append("the injected poison message is not in the dead letters")
        for other in others:
            found.broken.append(f"dead letter not injected: {other}")


async def prove(
    cluster: Cluster, tenant: Tenant, ledger: Ledger, receiver: FlakyReceiver, poison: str
) -> Findings:
    assert cluster.pg is not None
    found = Findings()
    rows = await _rows(cluster.pg.url, tenant)
    _check_actions(ledger, rows, found)
    _check_reversals(ledger, rows, found)
    _check_users_and_batches(ledger, rows, found)
    _check_webhooks(ledger, rows, receiver, found)
    _check_ledger_and_dead_letters(cluster, poison, found)
    if ledger.unexpected:
        found.broken.extend(f"unexpected answer: {u}" for u in ledger.unexpected)
    return found
