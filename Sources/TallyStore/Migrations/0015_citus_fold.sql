-- The fold on Citus (issue 19, docs/scaling.md). pending_charges is distributed by the account,
-- co-located with users and tokens (CitusLayout), so what an account owes lives on its shard.
-- Citus pushes a query on distributed tables down to the workers whole, functions included:
-- the tally_pending_* functions of 0010 would run there and query a distributed table from a
-- shard (refused), so every reader joins pending_charges by the account instead, which Citus
-- runs on the account's shard. On one PostgreSQL these are the same index scans.

-- The views join the pending sums grouped by account: with an account filter both sides read
-- one account (the planner carries id = $1 into the group); the audit's full scans hash-join.
CREATE OR REPLACE VIEW user_balances AS
SELECT u.id, u.quota - coalesce(p.quota, 0) AS quota,
       u.used_quota + coalesce(p.quota, 0) AS used_quota,
       u.request_count + coalesce(p.requests, 0) AS request_count,
       u.reserved - coalesce(p.returned, 0) AS reserved
FROM users u
LEFT JOIN (SELECT c.user_id, sum(c.quota)::bigint AS quota, sum(c.requests)::bigint AS requests,
                  sum(c.user_returned)::bigint AS returned
           FROM pending_charges c GROUP BY c.user_id) p ON p.user_id = u.id;

CREATE OR REPLACE VIEW token_balances AS
SELECT t.id, t.user_id,
       t.remain_quota - CASE WHEN t.unlimited_quota THEN 0 ELSE coalesce(p.quota, 0) END AS remain_quota,
       t.used_quota + coalesce(p.quota, 0) AS used_quota,
       t.request_count + coalesce(p.requests, 0) AS request_count,
       t.reserved - coalesce(p.returned, 0) AS reserved
FROM tokens t
LEFT JOIN (SELECT c.user_id, c.token_id, sum(c.quota)::bigint AS quota, sum(c.requests)::bigint AS requests,
                  sum(c.token_returned)::bigint AS returned
           FROM pending_charges c GROUP BY c.user_id, c.token_id) p ON p.user_id = t.user_id AND p.token_id = t.id;

-- Whether users is distributed by Citus: then a statement that locks rows must name accounts of
-- one shard (Citus refuses FOR UPDATE across shards), so the fold goes account by account.
CREATE FUNCTION tally_on_citus() RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN false;  -- no citus extension (the next statement is planned only when it runs)
    END IF;
    RETURN EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'users'::regclass);
END;
$$;

-- Leases grant as in 0010 (same locks, same order, same grant); the pending figures come from
-- a lateral sum over the account's pending rows instead of the functions (the same index scan).
CREATE OR REPLACE FUNCTION tally_lease(p_instance text, p_user_ids bigint[], p_user_wants bigint[],
                                       p_token_ids bigint[], p_token_wants bigint[])
RETURNS TABLE (kind text, account_id bigint, granted bigint, state text, others bigint)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    grants bigint[];
BEGIN
    PERFORM 1 FROM tally_instances i WHERE i.id = p_instance FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'instance % is not registered', p_instance USING ERRCODE = 'T0L01';
    END IF;

    -- Locked first, read in the next statement: its snapshot then holds every fold that
    -- committed before the lock was granted.
    PERFORM 1 FROM users x WHERE x.id = ANY (p_user_ids) ORDER BY x.id FOR NO KEY UPDATE;
    SELECT array_agg(x.id ORDER BY x.id),
           array_agg(LEAST(w.want, GREATEST(x.quota - p.quota - (x.reserved - p.returned), 0)) ORDER BY x.id)
      INTO ids, grants
      FROM (SELECT u.id, sum(u.want) AS want FROM unnest(p_user_ids, p_user_wants) AS u(id, want) GROUP BY u.id) w
      JOIN users x ON x.id = w.id
      CROSS JOIN LATERAL (SELECT coalesce(sum(c.quota), 0)::bigint AS quota, coalesce(sum(c.user_returned), 0)::bigint AS returned
                          FROM pending_charges c WHERE c.user_id = x.id) p;
    UPDATE users x SET reserved = x.reserved + g.amount
      FROM unnest(ids, grants) AS g(id, amount) WHERE x.id = g.id AND g.amount > 0;
    INSERT INTO user_leases (instance_id, user_id, amount)
      SELECT p_instance, g.id, g.amount FROM unnest(ids, grants) AS g(id, amount) WHERE g.amount > 0
      ON CONFLICT (instance_id, user_id) DO UPDATE SET amount = user_leases.amount + EXCLUDED.amount;
    RETURN QUERY
      WITH w AS (SELECT a.id, sum(a.want) AS want FROM unnest(p_user_ids, p_user_wants) AS a(id, want) GROUP BY a.id),
      r AS (SELECT w.id, w.want, COALESCE(g.amount, 0) AS granted, g.id IS NOT NULL AS found,
                   (SELECT COALESCE(sum(l.amount), 0)::bigint FROM user_leases l
                    WHERE l.user_id = w.id AND l.instance_id <> p_instance) AS others
            FROM w LEFT JOIN unnest(ids, grants) AS g(id, amount) ON g.id = w.id)
      SELECT 'user', r.id, r.granted, CASE WHEN r.found THEN 'ok' ELSE 'unknown' END, r.others
      FROM r;
    PERFORM pg_notify('tally_changes', 'lease-wanted:user:' || w.id)
      FROM (SELECT a.id, sum(a.want) AS want FROM unnest(p_user_ids, p_user_wants) AS a(id, want) GROUP BY a.id) w
      LEFT JOIN unnest(ids, grants) AS g(id, amount) ON g.id = w.id
      WHERE COALESCE(g.amount, 0) < w.want
        AND EXISTS (SELECT 1 FROM user_leases l WHERE l.user_id = w.id AND l.instance_id <> p_instance AND l.amount > 0);

    PERFORM 1 FROM tokens x WHERE x.id = ANY (p_token_ids) ORDER BY x.id FOR NO KEY UPDATE;
    SELECT array_agg(x.id ORDER BY x.id),
           array_agg(CASE WHEN x.unlimited_quota OR b.remain_quota <= 0 THEN 0
                          ELSE LEAST(w.want, GREATEST(b.remain_quota - b.reserved, 0)) END ORDER BY x.id)
      INTO ids, grants
      FROM (SELECT t.id, sum(t.want) AS want FROM unnest(p_token_ids, p_token_wants) AS t(id, want) GROUP BY t.id) w
      JOIN tokens x ON x.id = w.id
      CROSS JOIN LATERAL (SELECT x.remain_quota - coalesce(sum(c.quota), 0) AS remain_quota,
                                 x.reserved - coalesce(sum(c.token_returned), 0) AS reserved
                          FROM pending_charges c WHERE c.user_id = x.user_id AND c.token_id = x.id) b;
    UPDATE tokens x SET reserved = x.reserved + g.amount
      FROM unnest(ids, grants) AS g(id, amount) WHERE x.id = g.id AND g.amount > 0;
    INSERT INTO token_leases (instance_id, token_id, amount)
      SELECT p_instance, g.id, g.amount FROM unnest(ids, grants) AS g(id, amount) WHERE g.amount > 0
      ON CONFLICT (instance_id, token_id) DO UPDATE SET amount = token_leases.amount + EXCLUDED.amount;
    RETURN QUERY
      WITH w AS (SELECT a.id, sum(a.want) AS want FROM unnest(p_token_ids, p_token_wants) AS a(id, want) GROUP BY a.id),
      r AS (SELECT w.id, w.want, COALESCE(g.amount, 0) AS granted,
                   CASE WHEN k.id IS NULL THEN 'unknown' WHEN k.unlimited_quota THEN 'unlimited'
                        WHEN k.remain_quota - p.quota <= 0 THEN 'exhausted'
                        ELSE 'ok' END AS state,
                   (SELECT COALESCE(sum(l.amount), 0)::bigint FROM token_leases l
                    WHERE l.token_id = w.id AND l.instance_id <> p_instance) AS others
            FROM w LEFT JOIN tokens k ON k.id = w.id
            LEFT JOIN LATERAL (SELECT coalesce(sum(c.quota), 0) AS quota FROM pending_charges c
                               WHERE c.user_id = k.user_id AND c.token_id = k.id) p ON true
            LEFT JOIN unnest(ids, grants) AS g(id, amount) ON g.id = w.id)
      SELECT 'token', r.id, r.granted, r.state, r.others
      FROM r;
    PERFORM pg_notify('tally_changes', 'lease-wanted:token:' || w.id)
      FROM (SELECT a.id, sum(a.want) AS want FROM unnest(p_token_ids, p_token_wants) AS a(id, want) GROUP BY a.id) w
      LEFT JOIN unnest(ids, grants) AS g(id, amount) ON g.id = w.id
      WHERE COALESCE(g.amount, 0) < w.want
        AND EXISTS (SELECT 1 FROM token_leases l WHERE l.token_id = w.id AND l.instance_id <> p_instance AND l.amount > 0);
END;
$$;

-- The fold of 0010, with every statement naming the account of the rows it touches (keys by
-- user_id and id, so Citus finds their shard) and the notifications and webhook events built
-- on the coordinator from ids read first (a pg_notify in a query on users would run on a
-- worker, where no instance listens). On Citus, where one statement may lock the rows of one
-- shard only, it folds account by account, in id order (the lock order), in one transaction.
CREATE OR REPLACE FUNCTION tally_fold(p_user_ids bigint[], p_skip_locked boolean DEFAULT true) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    wanted bigint[] := p_user_ids;
    one bigint;
    total integer := 0;
    locked_users bigint[];
    locked_tokens bigint[];
    folded_users bigint[];
    folded_charges bigint[];
    folded_batches bigint[];
    overdrawn bigint[];
BEGIN
    IF wanted IS NULL THEN
        wanted := ARRAY(SELECT DISTINCT user_id FROM pending_charges);
    END IF;
    IF cardinality(wanted) = 0 THEN
        RETURN 0;  -- (Citus refuses to lock rows of no shard)
    END IF;
    IF cardinality(wanted) > 1 AND tally_on_citus() THEN
        FOR one IN SELECT DISTINCT w FROM unnest(wanted) AS w ORDER BY w LOOP
            total := total + tally_fold(ARRAY[one], p_skip_locked);
        END LOOP;
        RETURN total;
    END IF;
    IF p_skip_locked THEN
        locked_users := ARRAY(SELECT u.id FROM users u WHERE u.id = ANY (wanted) ORDER BY u.id FOR NO KEY UPDATE SKIP LOCKED);
    ELSE
        locked_users := ARRAY(SELECT u.id FROM users u WHERE u.id = ANY (wanted) ORDER BY u.id FOR NO KEY UPDATE);
    END IF;
    IF cardinality(locked_users) = 0 THEN
        RETURN 0;
    END IF;
    locked_tokens := ARRAY(
        SELECT k.id FROM tokens k
        WHERE k.user_id = ANY (locked_users)
          AND k.id = ANY (ARRAY(SELECT DISTINCT p.token_id FROM pending_charges p WHERE p.user_id = ANY (locked_users)))
        ORDER BY k.id FOR NO KEY UPDATE);

    -- Only rows of locked tokens (or of no token: imported logs without a key) are taken, so
    -- nothing is locked out of order by a row that committed after the locks were taken. The
    -- updates name the locked ids too, so they look rows up by key instead of scanning.
    WITH gone AS (
        DELETE FROM pending_charges p
        WHERE p.user_id = ANY (locked_users)
          AND (p.token_id = ANY (locked_tokens)
               OR NOT EXISTS (SELECT 1 FROM tokens k WHERE k.user_id = p.user_id AND k.id = p.token_id))
        RETURNING p.*
    ), token_totals AS (
        SELECT g.user_id, g.token_id, sum(g.quota) AS charged, sum(g.requests) AS requests,
               sum(g.token_returned) AS returned, max(g.last_at) AS last_at
        FROM gone g GROUP BY g.user_id, g.token_id
    ), debited_tokens AS (
        -- Unlimited keys keep their remain_quota; every key counts its use.
        UPDATE tokens k SET remain_quota = k.remain_quota - CASE WHEN k.unlimited_quota THEN 0 ELSE t.charged END,
                            used_quota = k.used_quota + t.charged, request_count = k.request_count + t.requests,
                            reserved = k.reserved - t.returned,
                            accessed_at = greatest(k.accessed_at, coalesce(t.last_at, k.accessed_at))
        FROM token_totals t
        WHERE k.user_id = t.user_id AND k.id = t.token_id
          AND k.user_id = ANY (locked_users) AND k.id = ANY (locked_tokens)
    ), user_totals AS (
        SELECT g.user_id, sum(g.quota) AS charged, sum(g.requests) AS requests, sum(g.user_returned) AS returned,
               max(g.batch_id) AS batch_id
        FROM gone g GROUP BY g.user_id
    ), debited_users AS (
        UPDATE users u SET quota = u.quota - t.charged, used_quota = u.used_quota + t.charged,
                           request_count = u.request_count + t.requests, reserved = u.reserved - t.returned,
                           updated_at = now()
        FROM user_totals t WHERE u.id = t.user_id AND u.id = ANY (locked_users)
        RETURNING u.id, t.charged, t.batch_id
    )
    SELECT array_agg(d.id), array_agg(d.charged), array_agg(d.batch_id)
      INTO folded_users, folded_charges, folded_batches
      FROM debited_users d;
    IF folded_users IS NULL THEN
        RETURN 0;
    END IF;

    overdrawn := ARRAY(SELECT u.id FROM users u WHERE u.id = ANY (folded_users) AND u.quota < u.reserved);
    PERFORM pg_notify('tally_changes', 'overdrawn:user:' || o.id) FROM unnest(overdrawn) AS o(id);
    overdrawn := ARRAY(SELECT k.id FROM tokens k
                       WHERE k.user_id = ANY (locked_users) AND k.id = ANY (locked_tokens)
                         AND NOT k.unlimited_quota AND k.remain_quota < k.reserved);
    PERFORM pg_notify('tally_changes', 'overdrawn:token:' || o.id) FROM unnest(overdrawn) AS o(id);

    -- balance.low / balance.exhausted (docs/webhooks.md): the balance before the fold is the
    -- balance after it plus what it charged. The tid is the latest folded batch's.
    IF EXISTS (SELECT 1 FROM webhook_endpoints WHERE removed_at IS NULL) THEN
        WITH folded AS MATERIALIZED (
            SELECT u.id AS user_id, u.username, u.quota, u.low_balance_threshold
            FROM users u WHERE u.id = ANY (folded_users)
        ), crossings AS MATERIALIZED (
            SELECT gen_random_uuid() AS event_id, u.user_id, c.rank, c.type,
                   jsonb_build_object('user_id', u.user_id, 'username', u.username, 'quota', u.quota,
                                      'previous_quota', u.quota + f.charged, 'threshold', c.threshold,
                                      'tid', b.tid) AS payload
            FROM unnest(folded_users, folded_charges, folded_batches) AS f(user_id, charged, batch_id)
            JOIN folded u ON u.user_id = f.user_id
            LEFT JOIN ingest_batches b ON b.id = f.batch_id
            CROSS JOIN LATERAL (VALUES
                (1, 'balance.low', coalesce(u.low_balance_threshold, (SELECT low_balance_threshold FROM webhook_settings))),
                (2, 'balance.exhausted', 0::bigint)) AS c (rank, type, threshold)
            WHERE u.quota <= c.threshold AND u.quota + f.charged > c.threshold
              AND (c.type = 'balance.exhausted' OR c.threshold > 0)
        )
        INSERT INTO webhook_outbox (event_id, endpoint_id, type, payload)
        SELECT c.event_id, e.id, c.type, c.payload
        FROM crossings c JOIN webhook_endpoints e
          ON e.removed_at IS NULL AND (cardinality(e.events) = 0 OR c.type = ANY (e.events))
        ORDER BY c.user_id, c.rank, e.id;
    END IF;

    RETURN cardinality(folded_users);
END;
$$;

-- Nothing calls these any more.
DROP FUNCTION tally_pending_charges(bigint), tally_pending_requests(bigint), tally_pending_returns(bigint),
              tally_pending_token_charges(bigint, bigint), tally_pending_token_requests(bigint, bigint),
              tally_pending_token_returns(bigint, bigint);
