"""apply_batch: the writes of one distribution batch in one server-side call

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 10:00:00

Additive only (one function), so the previous release of the code keeps working.

`engine.submit` decides everything in Python (campaign, distribution, budgets, pool coverage,
response bodies, event payloads) and hands the result to `sir_apply_batch(payload jsonb)`, which
performs the writes in the order the hot path has always used. Profiling found the front spent
~0.4 ms of Python/driver CPU per statement; one call replaces about fifteen statements.

The function holds no rule of its own beyond what needs ids only the database knows (new users,
wallet accounts, balances after the update):

1. the idempotency claim, rows in key order, under `lock_timeout` (the in-flight wait); when a
   concurrent duplicate committed first, it returns at once with the keys it did claim and
   writes nothing else (`complete: false`): the caller answers the lost keys from the winner's
   row and calls again, with no actions to claim, for the rest;
2. users to auto-create (sorted), then their wallets and the organizations' (sorted);
3. the journal entries, then every posting in ONE insert (the statement-level balance trigger
   runs once);
4. the balance caches: accounts locked in id order, then one update;
5. lots, repaying debt first exactly as `engine.ledger.open_lots` does: a credit to an
   available account whose balance before it was negative opens a lot only for what exceeds
   the debt. Walking an account's credits in order from the balance before them, the balance
   before credit i is `balance_after - (credit i + every later credit to that account)`;
6. campaign spend and per-user spend (sorted), the EXHAUSTED transition of pools the caller
   found at zero, then the outbox events (an event tagged `if_exhausted` only when that pool
   did change status here).

It answers `{"claimed": [...], "complete": bool, "exhausted": [...], "balances": {id: balance}}`.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_APPLY_BATCH = r"""
CREATE FUNCTION sir_apply_batch(payload jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    pid text := payload->>'partner_id';
    env text := payload->>'environment';
    wanted integer := jsonb_array_length(payload->'actions');
    claimed text[] := '{}';
    users jsonb := '{}';
    user_ids text[] := '{}';
    org_ids text[] := ARRAY(SELECT o FROM jsonb_array_elements_text(payload->'wallet_orgs') AS o
                             ORDER BY o COLLATE "C");
    accounts jsonb := '{}';
    acct_ids bigint[];
    acct_deltas bigint[];
    balances jsonb := '{}';
    updated integer;
    pool text;
    exhausted text[] := '{}';
BEGIN
    -- 1. the claim: a duplicate in flight elsewhere makes this wait (unique index), at most
    --    lock_timeout; the caller maps the lock timeout to 409 IDEMPOTENCY_IN_PROGRESS.
    IF wanted > 0 THEN
        PERFORM set_config('lock_timeout', payload->>'lock_timeout', true);
        WITH ins AS (
            INSERT INTO actions (id, partner_id, environment, idempotency_key, request_hash,
                                 action_type, amount, currency, campaign_id, pool_id,
                                 tokens_distributed, occurred_at, metadata, response)
            SELECT a.v->>'id', pid, env, a.v->>'key', decode(a.v->>'hash', 'hex'),
                   a.v->>'type', (a.v->>'amount')::numeric, a.v->>'currency',
                   a.v->>'campaign_id', a.v->>'pool_id', (a.v->>'tokens')::bigint,
                   (a.v->>'occurred_at')::timestamptz, a.v->'metadata', a.v->'response'
              FROM jsonb_array_elements(payload->'actions') WITH ORDINALITY AS a(v, ord)
             ORDER BY a.ord
            ON CONFLICT (partner_id, environment, idempotency_key) DO NOTHING
            RETURNING idempotency_key
        )
        SELECT coalesce(array_agg(idempotency_key), '{}') INTO claimed FROM ins;
        PERFORM set_config('lock_timeout', '0', true);
        IF cardinality(claimed) < wanted THEN
            RETURN jsonb_build_object('claimed', to_jsonb(claimed), 'complete', false,
                                      'exhausted', '[]'::jsonb, 'balances', '{}'::jsonb);
        END IF;
    END IF;

    -- 2. users (a concurrent action may create the same user first: read back below)
    INSERT INTO partner_users (id, partner_id, environment, external_user_id, email,
                               first_name, last_name)
    SELECT u.v->>'id', pid, env, u.v->>'external', u.v->>'email', u.v->>'first_name',
           u.v->>'last_name'
      FROM jsonb_array_elements(payload->'new_users') WITH ORDINALITY AS u(v, ord)
     ORDER BY u.ord
    ON CONFLICT (partner_id, environment, external_user_id) DO NOTHING;

    IF jsonb_array_length(payload->'wallet_users') > 0 THEN
        SELECT coalesce(jsonb_object_agg(pu.external_user_id, pu.id), '{}') INTO users
          FROM partner_users pu
         WHERE pu.partner_id = pid AND pu.environment = env
           AND pu.external_user_id = ANY(ARRAY(
               SELECT jsonb_array_elements_text(payload->'wallet_users')));
        user_ids := ARRAY(SELECT u.value FROM jsonb_each_text(users) AS u
                           ORDER BY u.value COLLATE "C");
        INSERT INTO ledger_accounts (partner_id, environment, kind, partner_user_id)
        SELECT pid, env, k.kind, u.id FROM unnest(user_ids) WITH ORDINALITY AS u(id, ord)
         CROSS JOIN (VALUES (1, 'WALLET_AVAILABLE'), (2, 'WALLET_LOCKED')) AS k(n, kind)
         ORDER BY u.ord, k.n
        ON CONFLICT (partner_user_id, kind) WHERE partner_user_id IS NOT NULL DO NOTHING;
    END IF;
    IF cardinality(org_ids) > 0 THEN
        INSERT INTO ledger_accounts (partner_id, environment, kind, organization_id)
        SELECT pid, env, k.kind, o.id FROM unnest(org_ids) WITH ORDINALITY AS o(id, ord)
         CROSS JOIN (VALUES (1, 'WALLET_AVAILABLE'), (2, 'WALLET_LOCKED')) AS k(n, kind)
         ORDER BY o.ord, k.n
        ON CONFLICT (partner_id, environment, organization_id, kind)
        WHERE organization_id IS NOT NULL DO NOTHING;
    END IF;
    IF cardinality(user_ids) > 0 OR cardinality(org_ids) > 0 THEN
        -- Wallet keys as the caller names them: A|L (available|locked), U:<partnerUserId>
        -- or O:<organization id>.
        SELECT coalesce(jsonb_object_agg(
                   CASE la.kind WHEN 'WALLET_AVAILABLE' THEN 'A' ELSE 'L' END
                   || CASE WHEN la.partner_user_id IS NOT NULL THEN 'U:' || u.key
                           ELSE 'O:' || la.organization_id END,
                   la.id), '{}')
          INTO accounts
          FROM ledger_accounts la
          LEFT JOIN jsonb_each_text(users) AS u ON u.value = la.partner_user_id
         WHERE la.partner_id = pid AND la.environment = env
           AND la.kind IN ('WALLET_AVAILABLE', 'WALLET_LOCKED')
           AND (la.partner_user_id = ANY(user_ids) OR la.organization_id = ANY(org_ids));
    END IF;

    -- 3. journal entries, then all postings in one statement
    INSERT INTO journal_entries (id, partner_id, environment, kind, action_id)
    SELECT e.v->>'id', pid, env, 'DISTRIBUTION', e.v->>'action_id'
      FROM jsonb_array_elements(payload->'entries') WITH ORDINALITY AS e(v, ord)
     ORDER BY e.ord;
    INSERT INTO postings (id, partner_id, environment, entry_id, account_id, amount, type)
    SELECT p.v->>'id', pid, env, p.v->>'entry_id',
           coalesce((p.v->>'account')::bigint, (accounts->>(p.v->>'wallet'))::bigint),
           (p.v->>'amount')::bigint, p.v->>'type'
      FROM jsonb_array_elements(payload->'postings') WITH ORDINALITY AS p(v, ord)
     ORDER BY p.ord;

    -- 4. balance caches: one aggregated delta per account, rows locked in id order so
    --    concurrent writers touching the same accounts queue instead of deadlocking. FOR NO
    --    KEY UPDATE (as engine.ledger.post_entries): the postings above took KEY SHARE on
    --    their accounts (foreign key), which FOR UPDATE would conflict with.
    SELECT array_agg(d.id ORDER BY d.id), array_agg(d.delta ORDER BY d.id)
      INTO acct_ids, acct_deltas
      FROM (SELECT coalesce((p.v->>'account')::bigint,
                            (accounts->>(p.v->>'wallet'))::bigint) AS id,
                   sum((p.v->>'amount')::bigint)::bigint AS delta
              FROM jsonb_array_elements(payload->'postings') AS p(v)
             GROUP BY 1) d
     WHERE d.delta <> 0;
    IF acct_ids IS NOT NULL THEN
        PERFORM 1 FROM ledger_accounts a
          WHERE a.id = ANY(acct_ids) AND a.partner_id = pid AND a.environment = env
          ORDER BY a.id FOR NO KEY UPDATE;
        WITH upd AS (
            UPDATE ledger_accounts a SET balance = a.balance + d.delta
              FROM unnest(acct_ids, acct_deltas) AS d(id, delta)
             WHERE a.id = d.id AND a.id = ANY(acct_ids)
               AND a.partner_id = pid AND a.environment = env
            RETURNING a.id, a.balance
        )
        SELECT count(*), coalesce(jsonb_object_agg(upd.id::text, upd.balance), '{}')
          INTO updated, balances FROM upd;
        IF updated <> cardinality(acct_ids) THEN
            RAISE EXCEPTION 'accounts of this batch are not in scope %/%', pid, env
                  USING ERRCODE = 'check_violation';
        END IF;
    END IF;

    -- 5. lots (engine.ledger.open_lots): debt is repaid first on available accounts
    INSERT INTO lots (partner_id, environment, account_id, posting_id, action_id, amount,
                      remaining, vests_at, expires_at)
    SELECT pid, env, l.account, l.posting_id, l.action_id, l.amount,
           CASE WHEN l.locked THEN l.amount
                ELSE l.amount - least(l.amount,
                                      greatest(0, l.from_here - (balances->>l.account::text)::bigint))
           END,
           l.vests_at, l.expires_at
      FROM (SELECT (accounts->>(c.v->>'wallet'))::bigint AS account,
                   c.v->>'posting_id' AS posting_id, c.v->>'action_id' AS action_id,
                   (c.v->>'amount')::bigint AS amount, (c.v->>'locked')::boolean AS locked,
                   (c.v->>'vests_at')::timestamptz AS vests_at,
                   (c.v->>'expires_at')::timestamptz AS expires_at, c.ord,
                   sum((c.v->>'amount')::bigint) OVER (
                       PARTITION BY c.v->>'wallet' ORDER BY c.ord
                       ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS from_here
              FROM jsonb_array_elements(payload->'lots') WITH ORDINALITY AS c(v, ord)) l
     ORDER BY l.ord;

    -- 6. budgets (campaign rows are locked by the caller already), pools, events
    UPDATE campaigns c SET spent_tokens = c.spent_tokens + (d.v->>'delta')::bigint,
                           updated_at = now()
      FROM jsonb_array_elements(payload->'campaigns') AS d(v)
     WHERE c.id = d.v->>'id' AND c.partner_id = pid AND c.environment = env;
    INSERT INTO campaign_user_spend (campaign_id, partner_user_id, spent_tokens)
    SELECT s.campaign_id, s.user_id, s.amount
      FROM (SELECT d.v->>'campaign_id' AS campaign_id,
                   users->>(d.v->>'external') AS user_id,
                   sum((d.v->>'amount')::bigint)::bigint AS amount
              FROM jsonb_array_elements(payload->'user_spend') AS d(v)
             GROUP BY 1, 2) s
     ORDER BY s.campaign_id COLLATE "C", s.user_id COLLATE "C"
    ON CONFLICT (campaign_id, partner_user_id) DO UPDATE
        SET spent_tokens = campaign_user_spend.spent_tokens + EXCLUDED.spent_tokens;
    FOR pool IN SELECT jsonb_array_elements_text(payload->'exhaust') LOOP
        UPDATE token_pools SET status = 'EXHAUSTED', updated_at = now()
         WHERE id = pool AND status = 'ACTIVE';
        IF FOUND THEN
            exhausted := exhausted || pool;
        END IF;
    END LOOP;
    INSERT INTO outbox_events (id, partner_id, environment, type, payload)
    SELECT e.v->>'id', pid, env, e.v->>'type', e.v->'payload'
      FROM jsonb_array_elements(payload->'events') WITH ORDINALITY AS e(v, ord)
     WHERE e.v->>'if_exhausted' IS NULL OR e.v->>'if_exhausted' = ANY(exhausted)
     ORDER BY e.ord;

    RETURN jsonb_build_object('claimed', to_jsonb(claimed), 'complete', true,
                              'exhausted', to_jsonb(exhausted), 'balances', balances);
END $$
"""


def upgrade() -> None:
    op.execute(_APPLY_BATCH)


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS sir_apply_batch(jsonb)")
