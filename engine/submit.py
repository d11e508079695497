"""Distributing actions: the one code path the fast path, group commit and batch workers share.

`apply_actions` applies a list of actions in the caller's transaction and answers one outcome
per action; refusals are outcomes (logic), not exceptions, so one bad action never spoils the
others of a batch. The phases, in order:

1. read-only checks in the contract's order: idempotency, registered types, users and
   organizations, campaign;
2. locks in the one order every writer uses: pool accounts, then campaigns (ids ascending);
3. decisions with running balances: campaign choice and budgets (402/422), then the pool (402);
4. the idempotency claim (`INSERT ... ON CONFLICT DO NOTHING`: a concurrent duplicate waits
   here for the first and then reads its answer) and every write of the applied actions:
   users, wallets, one journal entry each, balance caches, lots, budgets, outbox events.

Nothing is written for a refused action, so its idempotency key stays unused.

Round trips. The front process spends ~0.4 ms of Python/driver CPU per statement
(ops/bench/README.md), so a batch costs a handful of statements whatever its size:

- one read for phase 1 (existing keys, the partner's types, known users and organizations, the
  partner-environment's ACTIVE campaigns, the pools), which also sets the statement deadline
  when the caller asks for one;
- one locking statement for phase 2 (pool accounts, then campaigns), and the per-user spend
  only when a candidate campaign has a per-user budget (read after the campaign locks, so it
  is current);
- one call of `sir_apply_batch` (migration 0004) for phase 4: the claim and every write.

Every decision stays here, in Python, on one code path: the function only performs writes that
need ids the database assigns (new users, wallet accounts, balances for the debt-first lots).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ARRAY, BigInteger, Text, bindparam, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine import campaigns as campaign_rules
from engine.action_request import ORGANIZATION, ActionRequest
from engine.distribution import Distribution, Stakeholder, TooManyTokens, distribute
from engine.errors import (
    CampaignBudgetExhausted,
    CampaignNotApplicable,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    Idempotent,
    InsufficientPool,
    LedgerImbalance,
    NoActivePool,
    ServiceUnavailable,
    SirError,
    UnknownActionType,
    UnknownOrganization,
    UnknownStakeholderType,
    UnknownUser,
    ValidationFailed,
)
from engine.ids import new_event_id, new_id
from engine.ledger import EntryDraft, Leg, assert_balanced, lot_dates
from engine.money import Tokens
from engine.outbox import Event
from engine.scope import Scope
from engine.wire import dumps, loads, utc_iso

# A duplicate in flight is waited for at most this long (contract: 409 IDEMPOTENCY_IN_PROGRESS).
IN_FLIGHT_WAIT = "5s"
# Past this the engine gives up and answers 503 with nothing applied.
STATEMENT_DEADLINE = "10s"


# -- outcomes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    response: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Replayed:
    original: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Refused:
    error: SirError


Outcome = Applied | Replayed | Refused


# -- working state ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pool:
    id: str
    account_id: int
    status: str
    vesting_days: int | None
    expiration_days: int | None
    low_balance_threshold: int


@dataclass
class _Plan:
    """What one action will do, once every check passed."""

    index: int
    request: ActionRequest
    action_id: str
    distribution: Distribution
    campaign: dict[str, Any] | None
    pool: _Pool
    user_ids: dict[str, str | None]  # partnerUserId -> partner_users.id (None: to be created)
    org_ids: dict[str, str]  # organizationSlug -> organizations.id
    posting_ids: list[str] = field(default_factory=list)
    response: dict[str, Any] = field(default_factory=dict)


# -- phase 1: one read ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """What phase 1 reads, in one statement."""

    existing: dict[str, tuple[bytes, Any]]  # idempotency key -> (request hash, response)
    action_types: set[str]
    stakeholder_types: set[str]
    users: dict[str, str]  # partnerUserId -> partner_users.id
    organizations: dict[str, str]  # slug -> organizations.id (ACTIVE only)
    campaigns: list[dict[str, Any]]  # ACTIVE, by priority, age, id
    pools: list[tuple[_Pool, bool]]  # the default pool and the active campaigns' (is_default)


# Scalar subqueries aggregated to JSON: one round trip, parsed with engine.wire.loads so every
# decimal stays exact. The named-campaign case needs no row of its own: a campaign that is not
# ACTIVE never applies, so "not among the ACTIVE ones" answers exactly as "does not apply".
# The deadline rides on this first statement (set_config(..., true) is SET LOCAL).
_SNAPSHOT_SQL = text(
    "SELECT CASE WHEN CAST(:deadline AS text) IS NOT NULL "
    "THEN set_config('statement_timeout', CAST(:deadline AS text), true) END, "
    "CAST(json_build_object("
    "'existing', (SELECT coalesce(json_agg(json_build_array(a.idempotency_key, "
    "encode(a.request_hash, 'hex'), a.response)), '[]') FROM actions a "
    "WHERE a.partner_id = :partner_id AND a.environment = :environment "
    "AND a.idempotency_key = ANY(:keys)), "
    "'partner', (SELECT json_build_array(p.action_types, p.stakeholder_types) FROM partners p "
    "WHERE p.id = :partner_id), "
    "'users', (SELECT coalesce(json_object_agg(u.external_user_id, u.id), '{}') "
    "FROM partner_users u WHERE u.partner_id = :partner_id AND u.environment = :environment "
    "AND u.external_user_id = ANY(:externals)), "
    "'organizations', (SELECT coalesce(json_object_agg(o.slug, o.id), '{}') "
    "FROM organizations o WHERE o.status = 'ACTIVE' AND o.slug = ANY(:slugs)), "
    "'campaigns', (SELECT coalesce(json_agg(c ORDER BY c.priority DESC, c.created_at ASC, "
    "c.id ASC), '[]') FROM campaigns c WHERE c.partner_id = :partner_id "
    "AND c.environment = :environment AND c.status = 'ACTIVE'), "
    "'pools', (SELECT coalesce(json_agg(json_build_array(p.id, a.id, p.status, p.vesting_days, "
    "p.expiration_days, p.low_balance_threshold, p.is_default)), '[]') FROM token_pools p "
    "JOIN ledger_accounts a ON a.pool_id = p.id "
    "WHERE p.partner_id = :partner_id AND p.environment = :environment "
    "AND (p.is_default OR p.id IN (SELECT c.pool_id FROM campaigns c "
    "WHERE c.partner_id = :partner_id AND c.environment = :environment "
    "AND c.status = 'ACTIVE')))) AS text)"
).bindparams(
    bindparam("keys", type_=ARRAY(Text)),
    bindparam("externals", type_=ARRAY(Text)),
    bindparam("slugs", type_=ARRAY(Text)),
)

# Timestamp columns of a campaigns row: JSON carries them as ISO 8601 text.
_CAMPAIGN_TIMES = ("starts_at", "ends_at", "created_at", "updated_at")


def _campaign_row(raw: dict[str, Any]) -> dict[str, Any]:
    """A campaigns row from its JSON form, typed as a SQLAlchemy row would be (datetimes,
    Decimal numerics, int bigints, lists for arrays, parsed JSONB)."""
    row = dict(raw)
    for column in _CAMPAIGN_TIMES:
        if row.get(column) is not None:
            row[column] = datetime.fromisoformat(row[column])
    return row


async def _snapshot(
    conn: AsyncConnection, scope: Scope, requests: Sequence[ActionRequest], deadline: str | None
) -> _Snapshot:
    # Users and organizations of every request, replays included: a superset of what the
    # checks consult, and only read.
    externals = {s.partner_user_id for r in requests for s in r.stakeholders if s.partner_user_id}
    slugs = {s.organization_slug for r in requests for s in r.stakeholders if s.organization_slug}
    raw = (
        await conn.execute(
            _SNAPSHOT_SQL,
            {
                **scope.params,
                "deadline": deadline,
                "keys": sorted({r.idempotency_key for r in requests}),
                "externals": sorted(externals),
                "slugs": sorted(slugs),
            },
        )
    ).one()[1]
    data = loads(raw)
    action_types, stakeholder_types = data["partner"]
    return _Snapshot(
        existing={
            key: (bytes.fromhex(digest), response) for key, digest, response in data["existing"]
        },
        action_types=set(action_types),
        stakeholder_types=set(stakeholder_types),
        users=dict(data["users"]),
        organizations=dict(data["organizations"]),
        campaigns=[_campaign_row(c) for c in data["campaigns"]],
        pools=[
            (_Pool(pool_id, int(account), status, vesting, expiration, int(low)), bool(default))
            for pool_id, account, status, vesting, expiration, low, default in data["pools"]
        ],
    )


_EXISTING_SQL = text(
    "SELECT idempotency_key, request_hash, response FROM actions "
    "WHERE partner_id = :partner_id AND environment = :environment AND idempotency_key = ANY(:keys)"
).bindparams(bindparam("keys", type_=ARRAY(Text)))


async def _existing(
    conn: AsyncConnection, scope: Scope, keys: Sequence[str]
) -> dict[str, tuple[bytes, Any]]:
    """Stored actions by key: for keys a concurrent duplicate claimed first (rare)."""
    rows = await conn.execute(_EXISTING_SQL, {**scope.params, "keys": list(keys)})
    return {key: (bytes(digest), response) for key, digest, response in rows}


def _replay_or_reuse(request: ActionRequest, stored: tuple[bytes, Any]) -> Outcome:
    digest, response = stored
    if digest == request.fingerprint:
        return Replayed(response)
    return Refused(
        IdempotencyKeyReused(
            "This idempotency key was used with a different body",
            details={"idempotencyKey": request.idempotency_key},
        )
    )


async def apply_actions(
    conn: AsyncConnection,
    scope: Scope,
    requests: Sequence[ActionRequest],
    *,
    now: datetime | None = None,
    deadline: str | None = None,
) -> list[Outcome]:
    """Apply `requests` in the caller's transaction; one outcome per request, in order.

    `deadline` (e.g. "10s"), when given, becomes the transaction's statement_timeout with the
    first statement (saving the round trip of its own SET LOCAL).
    Raises only for faults (database errors); every refusal the contract names is an outcome.
    """
    now = now or datetime.now(UTC)
    outcomes: list[Outcome | None] = [None] * len(requests)
    snapshot = await _snapshot(conn, scope, requests, deadline)

    # 1a. idempotency (read-only; the claim comes after the locks)
    stored = snapshot.existing
    first_of_key: dict[str, int] = {}
    repeats: dict[int, int] = {}  # a key repeated within this batch answers like its first use
    for i, request in enumerate(requests):
        key = request.idempotency_key
        if key in stored:
            outcomes[i] = _replay_or_reuse(request, stored[key])
        elif key in first_of_key:
            repeats[i] = first_of_key[key]
        else:
            first_of_key[key] = i
    live = [i for i in range(len(requests)) if outcomes[i] is None and i not in repeats]

    # 1b. registered types, users, organizations
    action_types, stakeholder_types = snapshot.action_types, snapshot.stakeholder_types
    users, orgs = snapshot.users, snapshot.organizations

    checked: list[int] = []
    for i in live:
        refusal = _check_references(requests[i], action_types, stakeholder_types, users, orgs)
        if refusal is not None:
            outcomes[i] = Refused(refusal)
        else:
            checked.append(i)

    # 1c. campaign candidates; their pools and the default pool decide what to lock
    active = {c["id"]: c for c in snapshot.campaigns}
    candidates: dict[int, list[dict[str, Any]]] = {}
    by_type: dict[str, list[dict[str, Any]]] = {}
    for i in checked:
        request = requests[i]
        if request.campaign_id:
            named = active.get(request.campaign_id)
            if named is None or not campaign_rules.applies(
                named, action_type=request.action_type, at=now
            ):
                outcomes[i] = Refused(
                    CampaignNotApplicable(
                        "The named campaign does not apply to this action (status, schedule or action type)",
                        details={"campaignId": request.campaign_id},
                    )
                )
                continue
            candidates[i] = [named]
        else:
            if request.action_type not in by_type:
                # engine.campaigns.applicable_campaigns' filter, on the rows already read
                by_type[request.action_type] = [
                    c
                    for c in snapshot.campaigns
                    if campaign_rules.applies(c, action_type=request.action_type, at=now)
                ]
            candidates[i] = by_type[request.action_type]
    deciding = [i for i in checked if outcomes[i] is None]

    # Replays and refusals only: nothing to decide, so stay off the hot pool row entirely.
    default_pool: _Pool | None = None
    pools: dict[str, _Pool] = {}
    if deciding:
        wanted = {c["pool_id"] for i in deciding for c in candidates[i] if c["pool_id"]}
        for known, is_default in snapshot.pools:
            if is_default or known.id in wanted:
                pools[known.id] = known
            if is_default:
                default_pool = known

    # 2. locks: pool accounts, then campaigns, each in id order
    campaign_ids = sorted({c["id"] for i in deciding for c in candidates[i]})
    pool_balances, fresh = await _lock(
        conn, scope, [p.account_id for p in pools.values()], campaign_ids
    )
    locked_balances = dict(pool_balances)  # before this batch; pool_balances runs below
    per_user_budget = any(
        row["budget_per_user"] is not None
        for row in [*(c for i in deciding for c in candidates[i]), *fresh.values()]
    )
    # Per-user spend matters only under a per-user budget; read after the campaign locks (every
    # writer of it holds its campaign's lock), so it is current.
    user_spend = (
        await _user_spend(conn, campaign_ids, list(users.values())) if per_user_budget else {}
    )

    # 3. decisions, in request order, against running balances
    plans: list[_Plan] = []
    running_spent = {cid: int(row["spent_tokens"]) for cid, row in fresh.items()}
    for i in deciding:
        request = requests[i]
        stakeholders = [Stakeholder(s.stakeholder_type, s.identity) for s in request.stakeholders]
        chosen, dist, budget_refusal = None, None, None
        for candidate in candidates[i]:
            row = fresh.get(candidate["id"], candidate)
            if request.campaign_id is None and not campaign_rules.applies(
                row, action_type=request.action_type, at=now
            ):
                continue  # changed under us between the read and the lock
            try:
                attempt = distribute(campaign_rules.rule_of(row), request.amount, stakeholders)
            except TooManyTokens as exc:
                outcomes[i] = Refused(ValidationFailed({"amount": [str(exc)]}))
                break
            refusal = _budget_refusal(row, attempt, running_spent, user_spend, users)
            if refusal is None:
                chosen, dist = row, attempt
                break
            budget_refusal = budget_refusal or refusal
        if outcomes[i] is not None:
            continue  # refused while choosing (too many tokens)
        if chosen is None and budget_refusal is not None:
            outcomes[i] = Refused(budget_refusal)
            continue
        if chosen is None:
            try:
                dist = distribute(None, request.amount, stakeholders)
            except TooManyTokens as exc:
                outcomes[i] = Refused(ValidationFailed({"amount": [str(exc)]}))
                continue
        assert dist is not None
        pool = (
            pools.get(chosen["pool_id"])
            if chosen is not None and chosen["pool_id"]
            else default_pool
        )
        if pool is None or pool.status == "CLOSED":
            outcomes[i] = Refused(NoActivePool("No open token pool in this environment"))
            continue
        need = dist.tokens_distributed.micro
        if pool_balances[pool.account_id] < need:
            outcomes[i] = Refused(
                InsufficientPool(
                    "The token pool cannot cover this action; nothing was applied",
                    details={"poolId": pool.id, "required": Tokens(need).format()},
                )
            )
            continue
        pool_balances[pool.account_id] -= need
        if chosen is not None:
            running_spent[chosen["id"]] += need
            for share in dist.credited:
                if share.stakeholder_type != ORGANIZATION:
                    uid = users.get(share.identity)
                    if uid is not None:
                        user_spend[(chosen["id"], uid)] = (
                            user_spend.get((chosen["id"], uid), 0) + share.tokens.micro
                        )
        plans.append(
            _Plan(
                index=i,
                request=request,
                action_id=new_id(),
                distribution=dist,
                campaign=chosen,
                pool=pool,
                user_ids={
                    s.partner_user_id: users.get(s.partner_user_id)
                    for s in request.stakeholders
                    if s.partner_user_id
                },
                org_ids={
                    s.organization_slug: orgs[s.organization_slug]
                    for s in request.stakeholders
                    if s.organization_slug
                },
            )
        )

    # 4. claim keys, then write: one server-side call
    if plans:
        for plan in plans:
            plan.posting_ids = [new_id() for _ in plan.distribution.credited]
            plan.response = _response(plan, now)
        result = await _apply_batch(conn, scope, plans, now, locked_balances, fresh, claim=True)
        claimed = set(result["claimed"])
        lost = [p for p in plans if p.request.idempotency_key not in claimed]
        if lost:
            # A concurrent duplicate committed first: answer with its result. The call above
            # claimed the other keys and wrote nothing else; write for those now.
            again = await _existing(conn, scope, [p.request.idempotency_key for p in lost])
            for plan in lost:
                outcomes[plan.index] = _replay_or_reuse(
                    plan.request, again[plan.request.idempotency_key]
                )
            plans = [p for p in plans if p.request.idempotency_key in claimed]
            if plans:
                await _apply_batch(conn, scope, plans, now, locked_balances, fresh, claim=False)
        for plan in plans:
            outcomes[plan.index] = Applied(plan.response)

    for i, first in repeats.items():
        first_outcome = outcomes[first]
        if isinstance(first_outcome, Applied):
            if requests[i].fingerprint == requests[first].fingerprint:
                outcomes[i] = Replayed(first_outcome.response)
            else:
                outcomes[i] = Refused(
                    IdempotencyKeyReused("This idempotency key was used with a different body")
                )
        else:
            outcomes[i] = first_outcome
    return [o for o in outcomes if o is not None]


# -- phase 1 helpers ----------------------------------------------------------------------------


def _check_references(
    request: ActionRequest,
    action_types: set[str],
    stakeholder_types: set[str],
    users: dict[str, str],
    orgs: dict[str, str],
) -> SirError | None:
    if request.action_type not in action_types:
        return UnknownActionType(
            f"Action type {request.action_type!r} is not registered for this partner",
            details={"actionType": request.action_type},
        )
    for position, stakeholder in enumerate(request.stakeholders):
        if stakeholder.stakeholder_type not in stakeholder_types:
            return UnknownStakeholderType(
                f"Stakeholder type {stakeholder.stakeholder_type!r} is not registered for this partner",
                details={"index": position, "stakeholderTypeCode": stakeholder.stakeholder_type},
            )
    for position, stakeholder in enumerate(request.stakeholders):
        if stakeholder.organization_slug and stakeholder.organization_slug not in orgs:
            return UnknownOrganization(
                f"No active organization {stakeholder.organization_slug!r} in the directory",
                details={"index": position, "organizationSlug": stakeholder.organization_slug},
            )
        if (
            stakeholder.partner_user_id
            and stakeholder.partner_user_id not in users
            and not request.auto_create_users
        ):
            return UnknownUser(
                f"No user {stakeholder.partner_user_id!r}, and autoCreateUsers is false",
                details={"index": position, "partnerUserId": stakeholder.partner_user_id},
            )
    return None


# -- phase 2: locks -----------------------------------------------------------------------------

# One statement, pool accounts first: the campaigns scan is gated on the pool CTE having run
# (an InitPlan over it), so the pool rows are locked before any campaign row, as every writer
# does. Locked rows are read in their latest committed version. FOR NO KEY UPDATE, as the
# other writers since the deadlock fix: it serialises writers alike but does not conflict with
# the KEY SHARE locks foreign-key checks take (postings on the pool account, per-user spend
# rows of the campaign).
_LOCK_SQL = text(
    "WITH p AS MATERIALIZED (SELECT id, balance FROM ledger_accounts WHERE id = ANY(:accounts) "
    "ORDER BY id FOR NO KEY UPDATE), "
    "c AS MATERIALIZED (SELECT * FROM campaigns WHERE partner_id = :partner_id "
    "AND environment = :environment AND id = ANY(:campaigns) "
    "AND (SELECT count(*) FROM p) >= 0 ORDER BY id FOR NO KEY UPDATE) "
    "SELECT CAST(json_build_object("
    "'pools', (SELECT coalesce(json_agg(json_build_array(p.id, p.balance)), '[]') FROM p), "
    "'campaigns', (SELECT coalesce(json_agg(c), '[]') FROM c)) AS text)"
).bindparams(
    bindparam("accounts", type_=ARRAY(BigInteger)), bindparam("campaigns", type_=ARRAY(Text))
)


async def _lock(
    conn: AsyncConnection, scope: Scope, account_ids: list[int], campaign_ids: list[str]
) -> tuple[dict[int, int], dict[str, dict[str, Any]]]:
    """Lock pool accounts, then campaigns (ids ascending); their balances and fresh rows."""
    if not account_ids and not campaign_ids:
        return {}, {}
    raw = (
        await conn.execute(
            _LOCK_SQL,
            {**scope.params, "accounts": sorted(account_ids), "campaigns": campaign_ids},
        )
    ).scalar_one()
    data = loads(raw)
    balances = {int(account_id): int(balance) for account_id, balance in data["pools"]}
    fresh = {row["id"]: _campaign_row(row) for row in data["campaigns"]}
    return balances, fresh


async def _user_spend(
    conn: AsyncConnection, campaign_ids: list[str], user_ids: list[str]
) -> dict[tuple[str, str], int]:
    if not campaign_ids or not user_ids:
        return {}
    rows = await conn.execute(
        text(
            "SELECT campaign_id, partner_user_id, spent_tokens FROM campaign_user_spend "
            "WHERE campaign_id = ANY(:campaigns) AND partner_user_id = ANY(:users)"
        ).bindparams(
            bindparam("campaigns", type_=ARRAY(Text)), bindparam("users", type_=ARRAY(Text))
        ),
        {"campaigns": campaign_ids, "users": sorted(set(user_ids))},
    )
    return {(campaign, user): int(spent) for campaign, user, spent in rows}


# -- phase 3: budgets ---------------------------------------------------------------------------


def _budget_refusal(
    campaign: dict[str, Any],
    dist: Distribution,
    running_spent: dict[str, int],
    user_spend: dict[tuple[str, str], int],
    users: dict[str, str],
) -> SirError | None:
    """Budgets never go over: an action that would pass either budget is refused whole."""
    total = campaign["budget_total"]
    spent = running_spent.get(campaign["id"], int(campaign["spent_tokens"]))
    if total is not None and spent + dist.tokens_distributed.micro > int(total):
        return CampaignBudgetExhausted(
            "The campaign's budget cannot cover this action; nothing was applied",
            details={"scope": "campaign", "campaignId": campaign["id"]},
        )
    per_user = campaign["budget_per_user"]
    if per_user is not None:
        wants: dict[str, int] = defaultdict(int)
        for share in dist.credited:
            if share.stakeholder_type != ORGANIZATION:
                wants[share.identity] += share.tokens.micro
        for external, amount in wants.items():
            already = user_spend.get((campaign["id"], users.get(external, "")), 0)
            if already + amount > int(per_user):
                return CampaignBudgetExhausted(
                    "A user's budget in this campaign cannot cover this action; nothing was applied",
                    details={
                        "scope": "user",
                        "campaignId": campaign["id"],
                        "partnerUserId": external,
                    },
                )
    return None


# -- phase 4: claim and write ---------------------------------------------------------------------


def _response(plan: _Plan, now: datetime) -> dict[str, Any]:
    vests_at, expires_at = lot_dates(now, plan.pool.vesting_days, plan.pool.expiration_days)
    distributions = []
    for share, posting_id in zip(plan.distribution.credited, plan.posting_ids, strict=True):
        identity_key = (
            "organizationSlug" if share.stakeholder_type == ORGANIZATION else "partnerUserId"
        )
        distributions.append(
            {
                "stakeholderTypeCode": share.stakeholder_type,
                identity_key: share.identity,
                "tokens": share.tokens,
                "transactionId": posting_id,
                "vestsAt": utc_iso(vests_at) if vests_at else None,
                "expiresAt": utc_iso(expires_at) if expires_at else None,
            }
        )
    return {
        "actionId": plan.action_id,
        "idempotencyKey": plan.request.idempotency_key,
        "status": "COMPLETED",
        "tokensDistributed": plan.distribution.tokens_distributed,
        "transactionIds": list(plan.posting_ids),
        "campaignId": plan.campaign["id"] if plan.campaign else None,
        "poolId": plan.pool.id,
        "distributions": distributions,
    }


_APPLY_SQL = text("SELECT CAST(sir_apply_batch(CAST(:payload AS jsonb)) AS text)")


def _wallet_key(plan: _Plan, stakeholder_type: str, identity: str, locked: bool) -> str:
    """How sir_apply_batch names a wallet account before its id is known: A|L (available or
    locked), then U:<partnerUserId> (the user may be created in the same call) or O:<org id>."""
    kind = "L" if locked else "A"
    if stakeholder_type == ORGANIZATION:
        return f"{kind}O:{plan.org_ids[identity]}"
    return f"{kind}U:{identity}"


def _payload(
    scope: Scope,
    plans: list[_Plan],
    now: datetime,
    locked_balances: dict[int, int],
    fresh: dict[str, dict[str, Any]],
    *,
    claim: bool,
) -> tuple[dict[str, Any], dict[int, int]]:
    """The argument of sir_apply_batch for `plans`, and the pool balances it must leave.

    Everything is decided here, as the step-by-step writes did: journal legs (checked by
    `assert_balanced`), lots, budgets and every event with its payload. The pool accounts and
    campaigns are locked by this transaction, so their values after the writes are known
    exactly; only the EXHAUSTED transition depends on the pool row (status) and is tagged.
    """
    actions: list[dict[str, Any]] = []
    if claim:
        # Rows in key order: two batches (two front processes) claiming overlapping keys then
        # wait on each other in the same order and cannot deadlock.
        for plan in sorted(plans, key=lambda p: p.request.idempotency_key):
            request = plan.request
            actions.append(
                {
                    "id": plan.action_id,
                    "key": request.idempotency_key,
                    "hash": request.fingerprint.hex(),
                    "type": request.action_type,
                    "amount": format(request.amount, "f"),
                    "currency": request.currency,
                    "campaign_id": plan.campaign["id"] if plan.campaign else None,
                    "pool_id": plan.pool.id,
                    "tokens": plan.distribution.tokens_distributed.micro,
                    "occurred_at": request.occurred_at.isoformat() if request.occurred_at else None,
                    "metadata": request.metadata,
                    "response": plan.response,
                }
            )

    # Users to auto-create (only for actions being applied), sorted.
    new: dict[str, Any] = {}
    for plan in plans:
        for stakeholder in plan.request.stakeholders:
            external = stakeholder.partner_user_id
            if external and plan.user_ids.get(external) is None and external not in new:
                new[external] = stakeholder
    new_users = [
        {
            "id": new_id(),
            "external": external,
            "email": new[external].email,
            "first_name": new[external].first_name,
            "last_name": new[external].last_name,
        }
        for external in sorted(new)
    ]

    entries: list[dict[str, Any]] = []
    postings: list[dict[str, Any]] = []
    lots: list[dict[str, Any]] = []
    debited: dict[str, int] = {}
    per_campaign: dict[str, int] = defaultdict(int)
    per_user: dict[tuple[str, str], int] = defaultdict(int)
    for plan in plans:
        tokens = plan.distribution.tokens_distributed
        if not tokens.is_positive:
            continue
        vests_at, expires_at = lot_dates(now, plan.pool.vesting_days, plan.pool.expiration_days)
        locked = vests_at is not None
        legs = [Leg(plan.pool.account_id, -tokens, "DEBIT", posting_id=new_id())]
        wallets: list[str | None] = [None]
        for share, posting_id in zip(plan.distribution.credited, plan.posting_ids, strict=True):
            wallet = _wallet_key(plan, share.stakeholder_type, share.identity, locked)
            # Account 0: the database resolves the wallet's account from `wallet`.
            legs.append(Leg(0, share.tokens, "CREDIT", posting_id=posting_id))
            wallets.append(wallet)
            lots.append(
                {
                    "wallet": wallet,
                    "posting_id": posting_id,
                    "action_id": plan.action_id,
                    "amount": share.tokens.micro,
                    "locked": locked,
                    "vests_at": vests_at if locked else None,
                    "expires_at": expires_at,
                }
            )
            if plan.campaign is not None and share.stakeholder_type != ORGANIZATION:
                per_user[(plan.campaign["id"], share.identity)] += share.tokens.micro
        draft = EntryDraft("DISTRIBUTION", tuple(legs), action_id=plan.action_id)
        assert_balanced(draft)
        entries.append({"id": draft.entry_id, "action_id": plan.action_id})
        for leg, leg_wallet in zip(legs, wallets, strict=True):
            postings.append(
                {
                    "id": leg.posting_id,
                    "entry_id": draft.entry_id,
                    "account": leg.account_id if leg_wallet is None else None,
                    "wallet": leg_wallet,
                    "amount": leg.amount.micro,
                    "type": leg.type,
                }
            )
        debited[plan.pool.id] = debited.get(plan.pool.id, 0) + tokens.micro
        if plan.campaign is not None:
            per_campaign[plan.campaign["id"]] += tokens.micro

    events: list[dict[str, Any]] = []

    def add(event: Event, if_exhausted: str | None = None) -> None:
        events.append(
            {
                "id": new_event_id(),
                "type": event.type,
                "payload": event.data,
                "if_exhausted": if_exhausted,
            }
        )

    # Budgets: the campaign rows are locked, so spent after = locked spent + this batch.
    for campaign_id in sorted(per_campaign):
        row = fresh.get(campaign_id)
        if row is None:
            continue  # not updated (no such row in scope), as the UPDATE would have found
        spent = int(row["spent_tokens"]) + per_campaign[campaign_id]
        total = row["budget_total"]
        if total is not None and spent == int(total):
            add(
                Event(
                    "campaign.budget_exhausted",
                    {
                        "campaignId": campaign_id,
                        "name": row["name"],
                        "budget": {"totalTokens": Tokens(int(total)), "spentTokens": Tokens(spent)},
                    },
                )
            )

    # Pools that crossed their low-balance threshold or ran dry in this batch.
    expected: dict[int, int] = {}
    exhaust: list[str] = []
    for plan in plans:
        pool = plan.pool
        if pool.account_id in expected or pool.id not in debited:
            continue
        after = locked_balances[pool.account_id] - debited[pool.id]
        expected[pool.account_id] = after
        before = after + debited[pool.id]
        data = {
            "poolId": pool.id,
            "balance": Tokens(after),
            "lowBalanceThreshold": Tokens(pool.low_balance_threshold),
        }
        if pool.low_balance_threshold and before >= pool.low_balance_threshold > after:
            add(Event("token_pool.low_balance", data))
        if after == 0:
            exhaust.append(pool.id)
            # Recorded only if the pool was still ACTIVE (the function's UPDATE found it).
            add(Event("token_pool.exhausted", {**data, "status": "EXHAUSTED"}), pool.id)

    for plan in plans:
        add(Event("action.completed", plan.response))
        for distribution in plan.response["distributions"]:
            add(
                Event(
                    "transaction.completed",
                    {
                        "transactionId": distribution["transactionId"],
                        "type": "CREDIT",
                        "amount": distribution["tokens"],
                        "actionId": plan.action_id,
                        "poolId": plan.pool.id,
                        **{
                            k: distribution[k]
                            for k in ("partnerUserId", "organizationSlug")
                            if k in distribution
                        },
                    },
                )
            )

    payload = {
        **scope.params,
        "lock_timeout": IN_FLIGHT_WAIT,
        "actions": actions,
        "new_users": new_users,
        "wallet_users": sorted({external for p in plans for external in p.user_ids}),
        "wallet_orgs": sorted({org_id for p in plans for org_id in p.org_ids.values()}),
        "entries": entries,
        "postings": postings,
        "lots": lots,
        "campaigns": [{"id": cid, "delta": per_campaign[cid]} for cid in sorted(per_campaign)],
        "user_spend": [
            {"campaign_id": cid, "external": external, "amount": amount}
            for (cid, external), amount in sorted(per_user.items())
        ],
        "exhaust": exhaust,
        "events": events,
    }
    return payload, expected


async def _apply_batch(
    conn: AsyncConnection,
    scope: Scope,
    plans: list[_Plan],
    now: datetime,
    locked_balances: dict[int, int],
    fresh: dict[str, dict[str, Any]],
    *,
    claim: bool,
) -> dict[str, Any]:
    """Claim the plans' keys (with `claim`) and write everything, in one call.

    A duplicate still in flight in another transaction makes the claim wait for it (the unique
    index); past IN_FLIGHT_WAIT it gives up with 409 IDEMPOTENCY_IN_PROGRESS. When a concurrent
    duplicate committed first, the answer is `complete: false` with the keys won, and nothing
    but the claim was written.
    """
    payload, expected = _payload(scope, plans, now, locked_balances, fresh, claim=claim)
    try:
        raw = (await conn.execute(_APPLY_SQL, {"payload": dumps(payload)})).scalar_one()
    except DBAPIError as exc:
        if "LockNotAvailable" in type(exc.orig).__name__ or "lock timeout" in str(exc.orig):
            raise IdempotencyInProgress(
                "A request with this idempotency key is still being processed; retry shortly"
            ) from None
        raise
    result: dict[str, Any] = loads(raw)
    if result["complete"]:
        # The pools are locked by this transaction: their balances after are known exactly,
        # and the low-balance/exhausted events were decided from them.
        got = {int(a): int(b) for a, b in result["balances"].items() if int(a) in expected}
        if got != expected:
            raise LedgerImbalance(f"pool balances after the batch {got} are not {expected}")
    else:
        result["claimed"] = list(result["claimed"])
    return result


# -- the fast path ------------------------------------------------------------------------------------


async def apply_in_transaction(
    db: AsyncEngine, scope: Scope, requests: Sequence[ActionRequest], *, now: datetime | None = None
) -> list[Outcome]:
    """`apply_actions` in a transaction of its own, under the engine's deadline.

    Raises ServiceUnavailable when the deadline passes (nothing applied, keys stay unused),
    IdempotencyInProgress, or the database's own errors.
    """
    try:
        async with db.begin() as conn:
            return await apply_actions(conn, scope, requests, now=now, deadline=STATEMENT_DEADLINE)
    except DBAPIError as exc:
        if "QueryCanceled" in type(exc.orig).__name__ or "statement timeout" in str(exc.orig):
            raise ServiceUnavailable(
                "The engine could not finish in time; nothing was applied"
            ) from None
        raise


def answer(outcome: Outcome) -> dict[str, Any]:
    """The response body of an applied action; a refusal or replay raised as its error."""
    if isinstance(outcome, Refused):
        raise outcome.error
    if isinstance(outcome, Replayed):
        raise Idempotent(outcome.original)
    return outcome.response


async def submit_action(
    db: AsyncEngine, scope: Scope, request: ActionRequest, *, now: datetime | None = None
) -> dict[str, Any]:
    """`POST /actions/submit` without coalescing: one action, one transaction.

    Returns the response body. Raises Idempotent (409, original attached), the refusal's
    SirError, IdempotencyInProgress, or ServiceUnavailable (nothing applied).
    """
    (outcome,) = await apply_in_transaction(db, scope, [request], now=now)
    return answer(outcome)
