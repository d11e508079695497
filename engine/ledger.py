"""The double-entry ledger: balanced journal entries, balance caches, lots.

Every movement of tokens is a journal entry whose postings sum to zero. The balance of an
account is cached on its row and updated in the same transaction as its postings; `verify.py`
proves the caches equal the postings. PostgreSQL re-checks the balance of every entry (a trigger
in the initial migration), so a bug here fails loudly instead of minting tokens.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ARRAY, BigInteger, DateTime, Text, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.errors import LedgerImbalance
from engine.ids import new_id
from engine.money import Tokens
from engine.scope import Scope
from engine.tables import JOURNAL_KINDS, POSTING_TYPES


@dataclass(frozen=True, slots=True)
class Leg:
    """One posting to be: `amount` is signed (positive raises the account's balance)."""

    account_id: int
    amount: Tokens
    type: str
    # The posting's (partner-visible transaction) id, when the caller must know it before
    # posting (an action's response lists its transaction ids); generated otherwise.
    posting_id: str | None = None

    def __post_init__(self) -> None:
        if self.type not in POSTING_TYPES:
            raise ValueError(f"unknown posting type {self.type}")
        if not self.amount:
            raise ValueError("a posting moves a non-zero amount")


@dataclass(frozen=True, slots=True)
class EntryDraft:
    kind: str
    legs: tuple[Leg, ...]
    action_id: str | None = None
    reversal_id: str | None = None
    order_id: str | None = None
    memo: str | None = None
    entry_id: str = field(default_factory=new_id)

    def __post_init__(self) -> None:
        if self.kind not in JOURNAL_KINDS:
            raise ValueError(f"unknown journal kind {self.kind}")


@dataclass(frozen=True, slots=True)
class PostedEntry:
    entry_id: str
    posting_ids: tuple[str, ...]  # in the order of the draft's legs


def assert_balanced(draft: EntryDraft) -> None:
    """Refuse an entry whose postings do not sum to exactly zero.

    This check cannot be skipped: an unbalanced entry creates or destroys tokens out of nothing,
    and every figure a finance team reconciles (minted = pools + wallets + sinks) would be wrong
    from then on. PostgreSQL enforces it again at commit; this is the clear, early error.
    """
    if len(draft.legs) < 2:
        raise LedgerImbalance(f"journal entry {draft.entry_id} needs at least two postings")
    total = sum(leg.amount.micro for leg in draft.legs)
    if total != 0:
        raise LedgerImbalance(
            f"journal entry {draft.entry_id} ({draft.kind}) is off by {Tokens(total)}",
            details={"entryId": draft.entry_id, "offBy": Tokens(total).format()},
        )


_ENTRIES_SQL = text(
    "INSERT INTO journal_entries (id, partner_id, environment, kind, action_id, reversal_id, "
    "order_id, memo) SELECT unnest(:ids), :partner_id, :environment, unnest(:kinds), "
    "unnest(:action_ids), unnest(:reversal_ids), unnest(:order_ids), unnest(:memos)"
).bindparams(
    bindparam("ids", type_=ARRAY(Text)),
    bindparam("kinds", type_=ARRAY(Text)),
    bindparam("action_ids", type_=ARRAY(Text)),
    bindparam("reversal_ids", type_=ARRAY(Text)),
    bindparam("order_ids", type_=ARRAY(Text)),
    bindparam("memos", type_=ARRAY(Text)),
)

# All postings of all entries in one statement: the balance trigger runs once per statement.
_POSTINGS_SQL = text(
    "INSERT INTO postings (id, partner_id, environment, entry_id, account_id, amount, type) "
    "SELECT unnest(:ids), :partner_id, :environment, unnest(:entry_ids), unnest(:account_ids), "
    "unnest(:amounts), unnest(:types)"
).bindparams(
    bindparam("ids", type_=ARRAY(Text)),
    bindparam("entry_ids", type_=ARRAY(Text)),
    bindparam("account_ids", type_=ARRAY(BigInteger)),
    bindparam("amounts", type_=ARRAY(BigInteger)),
    bindparam("types", type_=ARRAY(Text)),
)

# One aggregated update per account, rows locked in id order so concurrent writers that touch
# the same accounts queue instead of deadlocking. FOR NO KEY UPDATE, not FOR UPDATE: inserting
# postings takes KEY SHARE on every account they reference (the foreign key), and FOR UPDATE
# conflicts with KEY SHARE, so two writers would each wait on the other's postings.
_BALANCES_SQL = text(
    # `a.id = ANY(...)` reaches the rows by primary key; joining the deltas instead made the
    # planner walk every account of the partner (cost grew with the partner's user count).
    "WITH deltas AS (SELECT unnest(:account_ids) AS id, unnest(:deltas) AS delta), "
    "locked AS (SELECT a.id FROM ledger_accounts a WHERE a.id = ANY(:account_ids) "
    "AND a.partner_id = :partner_id AND a.environment = :environment "
    "ORDER BY a.id FOR NO KEY UPDATE) "
    "UPDATE ledger_accounts a SET balance = a.balance + d.delta FROM deltas d "
    "WHERE a.id = d.id AND a.id IN (SELECT id FROM locked) RETURNING a.id, a.balance"
).bindparams(
    bindparam("account_ids", type_=ARRAY(BigInteger)),
    bindparam("deltas", type_=ARRAY(BigInteger)),
)


async def post_entries(
    conn: AsyncConnection,
    scope: Scope,
    drafts: Sequence[EntryDraft],
    *,
    already_applied: Mapping[int, int] | None = None,
) -> tuple[list[PostedEntry], dict[int, int]]:
    """Write balanced journal entries and update the balance caches, in the caller's transaction.

    `already_applied` holds balance changes a guarded debit (`debit_if_covered`) has made to
    the cache already, so they are not applied twice. Returns the posted entries and the new
    cached balance of every account touched.
    Raises LedgerImbalance for an unbalanced draft (nothing is written).
    """
    for draft in drafts:
        assert_balanced(draft)
    if not drafts:
        return [], {}
    posted: list[PostedEntry] = []
    p_ids: list[str] = []
    p_entries: list[str] = []
    p_accounts: list[int] = []
    p_amounts: list[int] = []
    p_types: list[str] = []
    deltas: dict[int, int] = defaultdict(int)
    for draft in drafts:
        leg_ids = []
        for leg in draft.legs:
            posting_id = leg.posting_id or new_id()
            leg_ids.append(posting_id)
            p_ids.append(posting_id)
            p_entries.append(draft.entry_id)
            p_accounts.append(leg.account_id)
            p_amounts.append(leg.amount.micro)
            p_types.append(leg.type)
            deltas[leg.account_id] += leg.amount.micro
        posted.append(PostedEntry(draft.entry_id, tuple(leg_ids)))
    for account_id, applied in (already_applied or {}).items():
        deltas[account_id] -= applied

    await conn.execute(
        _ENTRIES_SQL,
        {
            **scope.params,
            "ids": [d.entry_id for d in drafts],
            "kinds": [d.kind for d in drafts],
            "action_ids": [d.action_id for d in drafts],
            "reversal_ids": [d.reversal_id for d in drafts],
            "order_ids": [d.order_id for d in drafts],
            "memos": [d.memo for d in drafts],
        },
    )
    await conn.execute(
        _POSTINGS_SQL,
        {
            **scope.params,
            "ids": p_ids,
            "entry_ids": p_entries,
            "account_ids": p_accounts,
            "amounts": p_amounts,
            "types": p_types,
        },
    )
    changed = {account: delta for account, delta in deltas.items() if delta}
    balances: dict[int, int] = {}
    if changed:
        ordered = sorted(changed)
        rows = await conn.execute(
            _BALANCES_SQL,
            {**scope.params, "account_ids": ordered, "deltas": [changed[a] for a in ordered]},
        )
        balances = {int(account): int(balance) for account, balance in rows}
        if len(balances) != len(changed):
            missing = sorted(set(changed) - set(balances))
            raise LedgerImbalance(f"accounts {missing} are not in scope {scope}")
    return posted, balances


async def debit_if_covered(
    conn: AsyncConnection, scope: Scope, account_id: int, amount: Tokens
) -> int | None:
    """Conditional debit of a pool (or reserve): take `amount` only if the balance covers it.

    Returns the new balance, or None when the balance is too small (nothing changed). This is
    logic, not an exception, so a batch can refuse one action and carry on with the rest.
    Pair it with `post_entries(..., already_applied={account_id: -amount.micro})`.
    """
    row = await conn.execute(
        text(
            "UPDATE ledger_accounts SET balance = balance - :amount "
            "WHERE id = :id AND partner_id = :partner_id AND environment = :environment "
            "AND balance >= :amount RETURNING balance"
        ),
        {**scope.params, "id": account_id, "amount": amount.micro},
    )
    new_balance = row.scalar_one_or_none()
    return None if new_balance is None else int(new_balance)


# -- lots ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LotCredit:
    """A credit to a wallet account that becomes a lot (vesting and expiry dates ride on it)."""

    account_id: int
    posting_id: str
    amount: Tokens
    action_id: str | None
    vests_at: datetime | None
    expires_at: datetime | None
    locked: bool  # True when account_id is the wallet's WALLET_LOCKED account


def lot_dates(
    credited_at: datetime, vesting_days: int | None, expiration_days: int | None
) -> tuple[datetime | None, datetime | None]:
    """When a lot credited at `credited_at` vests and expires, from its pool's restrictions."""
    vests_at = credited_at + timedelta(days=vesting_days) if vesting_days else None
    expires_at = credited_at + timedelta(days=expiration_days) if expiration_days else None
    return vests_at, expires_at


_LOTS_SQL = text(
    "INSERT INTO lots (partner_id, environment, account_id, posting_id, action_id, amount, "
    "remaining, vests_at, expires_at) SELECT :partner_id, :environment, unnest(:account_ids), "
    "unnest(:posting_ids), unnest(:action_ids), unnest(:amounts), unnest(:remainings), "
    "unnest(:vests), unnest(:expires)"
)


async def open_lots(
    conn: AsyncConnection,
    scope: Scope,
    credits: Iterable[LotCredit],
    balances_after: Mapping[int, int],
) -> None:
    """Record lots for wallet credits just posted (same transaction).

    A wallet in debt (negative available balance after a reversal) is repaid first: the part of
    a credit that covers the debt opens no spendable lot. This keeps the invariant `verify`
    checks: an available account's open lots sum to max(balance, 0); a locked account's to its
    balance. Every leg posted to an available account in this call must be one of `credits`.
    """
    credits = list(credits)
    credited: dict[int, int] = defaultdict(int)
    for credit in credits:
        credited[credit.account_id] += credit.amount.micro
    # Walk each account's credits in order from the balance it had before them.
    running = {account: balances_after[account] - total for account, total in credited.items()}
    rows: dict[str, list] = defaultdict(list)
    for credit in credits:
        before = running[credit.account_id]
        running[credit.account_id] = before + credit.amount.micro
        debt = 0 if credit.locked else max(0, -before)
        remaining = credit.amount.micro - min(credit.amount.micro, debt)
        rows["account_ids"].append(credit.account_id)
        rows["posting_ids"].append(credit.posting_id)
        rows["action_ids"].append(credit.action_id)
        rows["amounts"].append(credit.amount.micro)
        rows["remainings"].append(remaining)
        rows["vests"].append(credit.vests_at if credit.locked else None)
        rows["expires"].append(credit.expires_at)
    if not credits:
        return
    statement = _LOTS_SQL.bindparams(
        bindparam("account_ids", type_=ARRAY(BigInteger)),
        bindparam("posting_ids", type_=ARRAY(Text)),
        bindparam("action_ids", type_=ARRAY(Text)),
        bindparam("amounts", type_=ARRAY(BigInteger)),
        bindparam("remainings", type_=ARRAY(BigInteger)),
        bindparam("vests", type_=ARRAY(DateTime(timezone=True))),
        bindparam("expires", type_=ARRAY(DateTime(timezone=True))),
    )
    await conn.execute(statement, {**scope.params, **rows})


async def consume_lots(
    conn: AsyncConnection, scope: Scope, account_id: int, amount: Tokens
) -> Tokens:
    """Take up to `amount` from an account's open lots, earliest-expiring first.

    Lots with no expiry go last; ties by age. Returns what the lots covered (less than
    `amount` when they ran out; the caller decides whether the rest becomes debt).
    """
    rows = await conn.execute(
        text(
            "SELECT id, remaining FROM lots WHERE account_id = :account_id AND remaining > 0 "
            "AND partner_id = :partner_id AND environment = :environment "
            "ORDER BY expires_at ASC NULLS LAST, id ASC FOR UPDATE"
        ),
        {**scope.params, "account_id": account_id},
    )
    need = amount.micro
    takes: list[tuple[int, int]] = []
    for lot_id, remaining in rows:
        if need == 0:
            break
        take = min(int(remaining), need)
        takes.append((int(lot_id), take))
        need -= take
    if takes:
        await conn.execute(
            text(
                "UPDATE lots SET remaining = remaining - t.take "
                "FROM (SELECT unnest(:ids) AS id, unnest(:takes) AS take) t WHERE lots.id = t.id"
            ).bindparams(
                bindparam("ids", type_=ARRAY(BigInteger)),
                bindparam("takes", type_=ARRAY(BigInteger)),
            ),
            {"ids": [t[0] for t in takes], "takes": [t[1] for t in takes]},
        )
    return Tokens(amount.micro - need)
