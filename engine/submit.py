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
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ARRAY, BigInteger, LargeBinary, Text, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine import campaigns as campaign_rules
from engine.accounts import wallets_for
from engine.action_request import ORGANIZATION, ActionRequest
from engine.distribution import Distribution, Stakeholder, distribute
from engine.errors import (
    CampaignBudgetExhausted,
    CampaignNotApplicable,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    Idempotent,
    InsufficientPool,
    NoActivePool,
    ServiceUnavailable,
    SirError,
    UnknownActionType,
    UnknownOrganization,
    UnknownStakeholderType,
    UnknownUser,
)
from engine.ids import new_id
from engine.ledger import EntryDraft, Leg, LotCredit, lot_dates, open_lots, post_entries
from engine.money import Tokens
from engine.outbox import Event, record_events
from engine.scope import Scope
from engine.wire import utc_iso

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


_EXISTING_SQL = text(
    "SELECT idempotency_key, request_hash, response FROM actions "
    "WHERE partner_id = :partner_id AND environment = :environment AND idempotency_key = ANY(:keys)"
).bindparams(bindparam("keys", type_=ARRAY(Text)))


async def _existing(
    conn: AsyncConnection, scope: Scope, keys: Sequence[str]
) -> dict[str, tuple[bytes, Any]]:
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
) -> list[Outcome]:
    """Apply `requests` in the caller's transaction; one outcome per request, in order.

    Raises only for faults (database errors); every refusal the contract names is an outcome.
    """
    now = now or datetime.now(UTC)
    outcomes: list[Outcome | None] = [None] * len(requests)

    # 1a. idempotency (read-only; the claim comes after the locks)
    stored = await _existing(conn, scope, [r.idempotency_key for r in requests])
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
    partner = (
        await conn.execute(
            text("SELECT action_types, stakeholder_types FROM partners WHERE id = :partner_id"),
            scope.params,
        )
    ).one()
    action_types, stakeholder_types = set(partner[0]), set(partner[1])
    external_ids = {
        s.partner_user_id for i in live for s in requests[i].stakeholders if s.partner_user_id
    }
    slugs = {
        s.organization_slug for i in live for s in requests[i].stakeholders if s.organization_slug
    }
    users = await _user_ids(conn, scope, external_ids)
    orgs = await _organization_ids(conn, slugs)

    checked: list[int] = []
    for i in live:
        refusal = _check_references(requests[i], action_types, stakeholder_types, users, orgs)
        if refusal is not None:
            outcomes[i] = Refused(refusal)
        else:
            checked.append(i)

    # 1c. campaign candidates (read); their pools and the default pool decide what to lock
    candidates: dict[int, list[dict[str, Any]]] = {}
    by_type: dict[str, list[dict[str, Any]]] = {}
    for i in checked:
        request = requests[i]
        if request.campaign_id:
            try:
                named = await campaign_rules.get_campaign_row(conn, scope, request.campaign_id)
            except SirError:
                named = None
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
                by_type[request.action_type] = await campaign_rules.applicable_campaigns(
                    conn, scope, action_type=request.action_type, at=now
                )
            candidates[i] = by_type[request.action_type]
    deciding = [i for i in checked if outcomes[i] is None]

    # Replays and refusals only: nothing to decide, so stay off the hot pool row entirely.
    default_pool, pools = (
        await _pools(
            conn, scope, {c["pool_id"] for i in deciding for c in candidates[i] if c["pool_id"]}
        )
        if deciding
        else (None, {})
    )

    # 2. locks: pool accounts, then campaigns, each in id order
    pool_balances = await _lock_pools(conn, [p.account_id for p in pools.values()])
    campaign_ids = sorted({c["id"] for i in deciding for c in candidates[i]})
    fresh = await _lock_campaigns(conn, scope, campaign_ids)
    user_spend = await _user_spend(conn, campaign_ids, [uid for uid in users.values()])

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
            attempt = distribute(campaign_rules.rule_of(row), request.amount, stakeholders)
            refusal = _budget_refusal(row, attempt, running_spent, user_spend, users)
            if refusal is None:
                chosen, dist = row, attempt
                break
            budget_refusal = budget_refusal or refusal
        if chosen is None and budget_refusal is not None:
            outcomes[i] = Refused(budget_refusal)
            continue
        if chosen is None:
            dist = distribute(None, request.amount, stakeholders)
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

    # 4. claim keys, then write
    if plans:
        claimed = await _claim(conn, scope, plans, now)
        for plan in plans:
            if plan.request.idempotency_key not in claimed:
                # A concurrent duplicate committed first: answer with its result.
                again = await _existing(conn, scope, [plan.request.idempotency_key])
                outcomes[plan.index] = _replay_or_reuse(
                    plan.request, again[plan.request.idempotency_key]
                )
        plans = [p for p in plans if p.request.idempotency_key in claimed]
        await _write(conn, scope, plans, now)
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


async def _user_ids(conn: AsyncConnection, scope: Scope, external_ids: set[str]) -> dict[str, str]:
    if not external_ids:
        return {}
    rows = await conn.execute(
        text(
            "SELECT external_user_id, id FROM partner_users WHERE partner_id = :partner_id "
            "AND environment = :environment AND external_user_id = ANY(:ids)"
        ).bindparams(bindparam("ids", type_=ARRAY(Text))),
        {**scope.params, "ids": sorted(external_ids)},
    )
    return {external: user_id for external, user_id in rows}


async def _organization_ids(conn: AsyncConnection, slugs: set[str]) -> dict[str, str]:
    if not slugs:
        return {}
    rows = await conn.execute(
        text(
            "SELECT slug, id FROM organizations WHERE status = 'ACTIVE' AND slug = ANY(:slugs)"
        ).bindparams(bindparam("slugs", type_=ARRAY(Text))),
        {"slugs": sorted(slugs)},
    )
    return {slug: org_id for slug, org_id in rows}


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


async def _pools(
    conn: AsyncConnection, scope: Scope, campaign_pool_ids: set[str]
) -> tuple[_Pool | None, dict[str, _Pool]]:
    rows = await conn.execute(
        text(
            "SELECT p.id, a.id AS account_id, p.status, p.vesting_days, p.expiration_days, "
            "p.low_balance_threshold, p.is_default FROM token_pools p "
            "JOIN ledger_accounts a ON a.pool_id = p.id "
            "WHERE p.partner_id = :partner_id AND p.environment = :environment "
            "AND (p.is_default OR p.id = ANY(:ids))"
        ).bindparams(bindparam("ids", type_=ARRAY(Text))),
        {**scope.params, "ids": sorted(campaign_pool_ids)},
    )
    pools: dict[str, _Pool] = {}
    default = None
    for row in rows.mappings():
        pool = _Pool(
            row["id"],
            int(row["account_id"]),
            row["status"],
            row["vesting_days"],
            row["expiration_days"],
            int(row["low_balance_threshold"]),
        )
        pools[pool.id] = pool
        if row["is_default"]:
            default = pool
    return default, pools


# -- phase 2: locks -----------------------------------------------------------------------------


async def _lock_pools(conn: AsyncConnection, account_ids: list[int]) -> dict[int, int]:
    if not account_ids:
        return {}
    rows = await conn.execute(
        text(
            "SELECT id, balance FROM ledger_accounts WHERE id = ANY(:ids) ORDER BY id FOR UPDATE"
        ).bindparams(bindparam("ids", type_=ARRAY(BigInteger))),
        {"ids": sorted(account_ids)},
    )
    return {int(account_id): int(balance) for account_id, balance in rows}


async def _lock_campaigns(
    conn: AsyncConnection, scope: Scope, campaign_ids: list[str]
) -> dict[str, dict[str, Any]]:
    if not campaign_ids:
        return {}
    rows = await conn.execute(
        text(
            "SELECT * FROM campaigns WHERE partner_id = :partner_id AND environment = :environment "
            "AND id = ANY(:ids) ORDER BY id FOR UPDATE"
        ).bindparams(bindparam("ids", type_=ARRAY(Text))),
        {**scope.params, "ids": campaign_ids},
    )
    return {row["id"]: dict(row) for row in rows.mappings()}


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


_CLAIM_SQL = text(
    "INSERT INTO actions (id, partner_id, environment, idempotency_key, request_hash, action_type, "
    "amount, currency, campaign_id, pool_id, tokens_distributed, occurred_at, metadata, response) "
    "SELECT unnest(:ids), :partner_id, :environment, unnest(:keys), unnest(:hashes), unnest(:types), "
    "unnest(CAST(:amounts AS numeric[])), unnest(:currencies), unnest(:campaigns), unnest(:pools), "
    "unnest(:tokens), unnest(CAST(:occurred AS timestamptz[])), unnest(CAST(:metadata AS jsonb[])), "
    "unnest(CAST(:responses AS jsonb[])) "
    "ON CONFLICT (partner_id, environment, idempotency_key) DO NOTHING RETURNING idempotency_key"
).bindparams(
    bindparam("ids", type_=ARRAY(Text)),
    bindparam("keys", type_=ARRAY(Text)),
    bindparam("hashes", type_=ARRAY(LargeBinary)),
    bindparam("types", type_=ARRAY(Text)),
    bindparam("amounts", type_=ARRAY(Text)),
    bindparam("currencies", type_=ARRAY(Text)),
    bindparam("campaigns", type_=ARRAY(Text)),
    bindparam("pools", type_=ARRAY(Text)),
    bindparam("tokens", type_=ARRAY(BigInteger)),
    bindparam("occurred", type_=ARRAY(Text)),
    bindparam("metadata", type_=ARRAY(JSONB)),
    bindparam("responses", type_=ARRAY(JSONB)),
)


async def _claim(
    conn: AsyncConnection, scope: Scope, plans: list[_Plan], now: datetime
) -> set[str]:
    """Insert the action rows, which claims their keys. Returns the keys this transaction won.

    A duplicate still in flight in another transaction makes this insert wait for it (the
    unique index); past IN_FLIGHT_WAIT it gives up with 409 IDEMPOTENCY_IN_PROGRESS.
    """
    for plan in plans:
        plan.posting_ids = [new_id() for _ in plan.distribution.credited]
        plan.response = _response(plan, now)
    # Rows in key order: two batches (two front processes) claiming overlapping keys then
    # wait on each other in the same order and cannot deadlock.
    plans = sorted(plans, key=lambda p: p.request.idempotency_key)
    await conn.execute(text(f"SET LOCAL lock_timeout = '{IN_FLIGHT_WAIT}'"))
    try:
        rows = await conn.execute(
            _CLAIM_SQL,
            {
                **scope.params,
                "ids": [p.action_id for p in plans],
                "keys": [p.request.idempotency_key for p in plans],
                "hashes": [p.request.fingerprint for p in plans],
                "types": [p.request.action_type for p in plans],
                "amounts": [format(p.request.amount, "f") for p in plans],
                "currencies": [p.request.currency for p in plans],
                "campaigns": [p.campaign["id"] if p.campaign else None for p in plans],
                "pools": [p.pool.id for p in plans],
                "tokens": [p.distribution.tokens_distributed.micro for p in plans],
                "occurred": [
                    p.request.occurred_at.isoformat() if p.request.occurred_at else None
                    for p in plans
                ],
                "metadata": [p.request.metadata for p in plans],
                "responses": [p.response for p in plans],
            },
        )
    except DBAPIError as exc:
        if "LockNotAvailable" in type(exc.orig).__name__ or "lock timeout" in str(exc.orig):
            raise IdempotencyInProgress(
                "A request with this idempotency key is still being processed; retry shortly"
            ) from None
        raise
    await conn.execute(text("SET LOCAL lock_timeout = 0"))
    return {key for (key,) in rows}


async def _write(conn: AsyncConnection, scope: Scope, plans: list[_Plan], now: datetime) -> None:
    if not plans:
        return
    await _create_users(conn, scope, plans)
    wallets = await wallets_for(
        conn,
        scope,
        user_ids=[uid for p in plans for uid in p.user_ids.values() if uid],
        organization_ids=[oid for p in plans for oid in p.org_ids.values()],
    )
    drafts: list[EntryDraft] = []
    credits: list[LotCredit] = []
    pool_before: dict[str, int] = {}
    for plan in plans:
        if not plan.distribution.tokens_distributed.is_positive:
            continue
        vests_at, expires_at = lot_dates(now, plan.pool.vesting_days, plan.pool.expiration_days)
        locked = vests_at is not None
        legs = [Leg(plan.pool.account_id, -plan.distribution.tokens_distributed, "DEBIT")]
        for share, posting_id in zip(plan.distribution.credited, plan.posting_ids, strict=True):
            owner = (
                ("organization", plan.org_ids[share.identity])
                if share.stakeholder_type == ORGANIZATION
                else ("user", plan.user_ids[share.identity] or "")
            )
            wallet = wallets[owner]
            account = wallet.locked_id if locked else wallet.available_id
            legs.append(Leg(account, share.tokens, "CREDIT", posting_id=posting_id))
            credits.append(
                LotCredit(
                    account, posting_id, share.tokens, plan.action_id, vests_at, expires_at, locked
                )
            )
        drafts.append(EntryDraft("DISTRIBUTION", tuple(legs), action_id=plan.action_id))
        pool_before.setdefault(plan.pool.id, 0)
        pool_before[plan.pool.id] += plan.distribution.tokens_distributed.micro
    _, balances = await post_entries(conn, scope, drafts)
    await open_lots(conn, scope, credits, balances)
    events = await _budgets(conn, scope, plans)
    events += await _pool_status(conn, plans, balances, pool_before)
    for plan in plans:
        events.append(Event("action.completed", plan.response))
        for distribution in plan.response["distributions"]:
            events.append(
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
    await record_events(conn, scope, events)


async def _create_users(conn: AsyncConnection, scope: Scope, plans: list[_Plan]) -> None:
    """Auto-create the users that do not exist yet (only for actions being applied)."""
    new: dict[str, Any] = {}
    for plan in plans:
        for stakeholder in plan.request.stakeholders:
            external = stakeholder.partner_user_id
            if external and plan.user_ids.get(external) is None and external not in new:
                new[external] = stakeholder
    created: dict[str, str] = {}
    if new:
        externals = sorted(new)
        await conn.execute(
            text(
                "INSERT INTO partner_users (id, partner_id, environment, external_user_id, email, first_name, last_name) "
                "SELECT unnest(:ids), :partner_id, :environment, unnest(:externals), unnest(:emails), "
                "unnest(:firsts), unnest(:lasts) "
                "ON CONFLICT (partner_id, environment, external_user_id) DO NOTHING"
            ).bindparams(
                *(
                    bindparam(n, type_=ARRAY(Text))
                    for n in ("ids", "externals", "emails", "firsts", "lasts")
                )
            ),
            {
                **scope.params,
                "ids": [new_id() for _ in externals],
                "externals": externals,
                "emails": [new[e].email for e in externals],
                "firsts": [new[e].first_name for e in externals],
                "lasts": [new[e].last_name for e in externals],
            },
        )
        # Read back: a concurrent action may have created the same user first.
        created = await _user_ids(conn, scope, set(externals))
    for plan in plans:
        for external, user_id in list(plan.user_ids.items()):
            if user_id is None:
                plan.user_ids[external] = created[external]


async def _budgets(conn: AsyncConnection, scope: Scope, plans: list[_Plan]) -> list[Event]:
    """One aggregated update per campaign (hot row) and per user budget."""
    per_campaign: dict[str, int] = defaultdict(int)
    per_user: dict[tuple[str, str], int] = defaultdict(int)
    for plan in plans:
        if plan.campaign is None or not plan.distribution.tokens_distributed.is_positive:
            continue
        per_campaign[plan.campaign["id"]] += plan.distribution.tokens_distributed.micro
        for share in plan.distribution.credited:
            if share.stakeholder_type != ORGANIZATION:
                user_id = plan.user_ids[share.identity]
                assert user_id is not None
                per_user[(plan.campaign["id"], user_id)] += share.tokens.micro
    if not per_campaign:
        return []
    ids = sorted(per_campaign)
    rows = await conn.execute(
        text(
            "UPDATE campaigns c SET spent_tokens = c.spent_tokens + d.delta, updated_at = now() "
            "FROM (SELECT unnest(:ids) AS id, unnest(:deltas) AS delta) d "
            "WHERE c.id = d.id AND c.partner_id = :partner_id AND c.environment = :environment "
            "RETURNING c.id, c.spent_tokens, c.budget_total, c.name"
        ).bindparams(
            bindparam("ids", type_=ARRAY(Text)), bindparam("deltas", type_=ARRAY(BigInteger))
        ),
        {**scope.params, "ids": ids, "deltas": [per_campaign[i] for i in ids]},
    )
    events = []
    for campaign_id, spent, total, name in rows:
        if total is not None and int(spent) == int(total):
            events.append(
                Event(
                    "campaign.budget_exhausted",
                    {
                        "campaignId": campaign_id,
                        "name": name,
                        "budget": {
                            "totalTokens": Tokens(int(total)),
                            "spentTokens": Tokens(int(spent)),
                        },
                    },
                )
            )
    if per_user:
        keys = sorted(per_user)
        await conn.execute(
            text(
                "INSERT INTO campaign_user_spend (campaign_id, partner_user_id, spent_tokens) "
                "SELECT unnest(:campaigns), unnest(:users), unnest(:amounts) "
                "ON CONFLICT (campaign_id, partner_user_id) DO UPDATE "
                "SET spent_tokens = campaign_user_spend.spent_tokens + EXCLUDED.spent_tokens"
            ).bindparams(
                bindparam("campaigns", type_=ARRAY(Text)),
                bindparam("users", type_=ARRAY(Text)),
                bindparam("amounts", type_=ARRAY(BigInteger)),
            ),
            {
                "campaigns": [k[0] for k in keys],
                "users": [k[1] for k in keys],
                "amounts": [per_user[k] for k in keys],
            },
        )
    return events


async def _pool_status(
    conn: AsyncConnection, plans: list[_Plan], balances: dict[int, int], debited: dict[str, int]
) -> list[Event]:
    """Events for pools that crossed their low-balance threshold or ran dry in this batch."""
    events: list[Event] = []
    seen: set[str] = set()
    for plan in plans:
        pool = plan.pool
        if pool.id in seen or pool.id not in debited:
            continue
        seen.add(pool.id)
        after = balances[pool.account_id]
        before = after + debited[pool.id]
        data = {
            "poolId": pool.id,
            "balance": Tokens(after),
            "lowBalanceThreshold": Tokens(pool.low_balance_threshold),
        }
        if pool.low_balance_threshold and before >= pool.low_balance_threshold > after:
            events.append(Event("token_pool.low_balance", data))
        if after == 0:
            changed = await conn.execute(
                text(
                    "UPDATE token_pools SET status = 'EXHAUSTED', updated_at = now() WHERE id = :id AND status = 'ACTIVE'"
                ),
                {"id": pool.id},
            )
            if changed.rowcount:
                events.append(Event("token_pool.exhausted", {**data, "status": "EXHAUSTED"}))
    return events


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
            await conn.execute(text(f"SET LOCAL statement_timeout = '{STATEMENT_DEADLINE}'"))
            return await apply_actions(conn, scope, requests, now=now)
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
