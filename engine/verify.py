"""`ledger verify`: prove the ledger is whole.

Checks, each a single set-based query so it stays fast on a large ledger:
1. every journal entry's postings sum to zero (and it has at least two);
2. every account's cached balance equals the sum of its postings;
3. every wallet's open lots agree with its balance (locked: equal; available: max(balance, 0));
4. per partner and environment, all balances sum to zero (tokens minted = pools + wallets + sinks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from engine.money import Tokens
from engine.scope import Scope


@dataclass(frozen=True)
class Problem:
    check: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.subject}: {self.detail}"


@dataclass
class VerifyReport:
    accounts_checked: int = 0
    entries_checked: int = 0
    postings_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def drift_micro(self) -> int:
        """Total absolute difference between caches and postings (for reconciliation)."""
        return sum(int(p.detail.split("drift=")[1]) for p in self.problems if "drift=" in p.detail)

    def render(self) -> str:
        head = (
            f"accounts checked: {self.accounts_checked}, journal entries: {self.entries_checked}, "
            f"postings: {self.postings_checked}"
        )
        if self.ok:
            return f"ledger OK: {head}"
        lines = [f"ledger BROKEN: {len(self.problems)} problem(s); {head}"]
        lines.extend(f"  {p}" for p in self.problems)
        return "\n".join(lines)


def _filter(scope: Scope | None, alias: str) -> str:
    if scope is None:
        return "true"
    return f"{alias}.partner_id = :partner_id AND {alias}.environment = :environment"


async def verify_ledger(
    conn: AsyncConnection, scope: Scope | None = None, *, limit: int = 100
) -> VerifyReport:
    """Run every check, over the whole ledger or one partner-environment. Read-only.

    Run it in a REPEATABLE READ transaction (the CLI does) so all checks see one snapshot.
    """
    params = {"limit": limit, **(scope.params if scope else {})}
    report = VerifyReport()

    counts = await conn.execute(
        text(
            f"SELECT (SELECT count(*) FROM ledger_accounts a WHERE {_filter(scope, 'a')}), "  # noqa: S608
            f"(SELECT count(*) FROM journal_entries e WHERE {_filter(scope, 'e')}), "
            f"(SELECT count(*) FROM postings p WHERE {_filter(scope, 'p')})"
        ),
        params,
    )
    report.accounts_checked, report.entries_checked, report.postings_checked = (
        int(v) for v in counts.one()
    )

    unbalanced = await conn.execute(
        text(
            "SELECT e.id, e.kind, coalesce(sum(p.amount), 0), count(p.id) FROM journal_entries e "  # noqa: S608
            f"LEFT JOIN postings p ON p.entry_id = e.id WHERE {_filter(scope, 'e')} "
            "GROUP BY e.id, e.kind HAVING coalesce(sum(p.amount), 0) <> 0 OR count(p.id) < 2 "
            "ORDER BY e.id LIMIT :limit"
        ),
        params,
    )
    for entry_id, kind, total, n in unbalanced:
        report.problems.append(
            Problem(
                "entry-balance",
                f"journal entry {entry_id} ({kind})",
                f"postings sum to {Tokens(int(total))} over {n} posting(s); must be 0 over >= 2",
            )
        )

    drifted = await conn.execute(
        text(
            "SELECT a.id, a.kind, a.partner_id, a.environment, a.balance, coalesce(s.total, 0) "  # noqa: S608
            "FROM ledger_accounts a LEFT JOIN (SELECT account_id, sum(amount) AS total "
            "FROM postings GROUP BY account_id) s ON s.account_id = a.id "
            f"WHERE {_filter(scope, 'a')} AND a.balance <> coalesce(s.total, 0) "
            "ORDER BY a.id LIMIT :limit"
        ),
        params,
    )
    for account_id, kind, partner, env, cached, posted in drifted:
        report.problems.append(
            Problem(
                "balance-cache",
                f"account {account_id} ({kind}, partner {partner}, {env})",
                f"cached {Tokens(int(cached))} but postings sum to {Tokens(int(posted))} "
                f"drift={abs(int(cached) - int(posted))}",
            )
        )

    lot_mismatch = await conn.execute(
        text(
            "SELECT a.id, a.kind, a.balance, coalesce(l.open, 0) FROM ledger_accounts a "  # noqa: S608
            "LEFT JOIN (SELECT account_id, sum(remaining) AS open FROM lots GROUP BY account_id) l "
            f"ON l.account_id = a.id WHERE {_filter(scope, 'a')} "
            "AND a.kind IN ('WALLET_AVAILABLE', 'WALLET_LOCKED') "
            "AND coalesce(l.open, 0) <> greatest(a.balance, 0) ORDER BY a.id LIMIT :limit"
        ),
        params,
    )
    for account_id, kind, balance, open_total in lot_mismatch:
        report.problems.append(
            Problem(
                "lots",
                f"account {account_id} ({kind})",
                f"open lots hold {Tokens(int(open_total))} but the balance is {Tokens(int(balance))}",
            )
        )

    nonzero = await conn.execute(
        text(
            "SELECT a.partner_id, a.environment, sum(a.balance) FROM ledger_accounts a "  # noqa: S608
            f"WHERE {_filter(scope, 'a')} GROUP BY a.partner_id, a.environment "
            "HAVING sum(a.balance) <> 0 ORDER BY 1, 2 LIMIT :limit"
        ),
        params,
    )
    for partner, env, total in nonzero:
        report.problems.append(
            Problem(
                "conservation",
                f"partner {partner} ({env})",
                f"balances sum to {Tokens(int(total))}; minted tokens must equal pools + wallets + sinks",
            )
        )
    return report
