-- Ingest that grows with the machine (issue 14; docs/ingest.md, "Append, then fold").
--
-- A batch's transaction only appends: its request rows, its ledger charges (one row per batch ×
-- user × token × month, as before) and what balances and rollups still owe:
--   pending_charges  one row per batch × user × token: what its lines charged (and how many),
--                    and the reservations of the holds they settled (the holds themselves are
--                    closed in the batch's transaction);
--   pending_usage    one row per batch × user × token × UTC day × model × group × kind, the
--                    usage_daily measures of its lines.
-- It locks no account row. Two folds consume them, each in the transaction that applies them,
-- so each is exactly once and crash-safe with no watermark (batch ids commit out of order; a
-- consumed queue does not care):
--   tally_fold       pending_charges → users, tokens (balances, reservations, counters), every
--                    ~100 ms, each account once per fold (tally_settle runs it per shard);
--   tally_roll_up    pending_usage → usage_daily, every few seconds, so that many batches of the
--                    same account, model and day become one upsert.
--
-- Every reader adds what is still pending (committed, not folded):
--     quota     = users.quota − Σ pending_charges.quota          (user_balances, token_balances)
--     reserved  = users.reserved − Σ pending_charges.user_returned
--     rollups   = usage_daily + pending_usage                     (usage_rollups)
-- so `tally audit` proves balance = Σ ledger at any instant, and tally_lease grants from
-- quota − reserved − pending.
--
-- Keys: the account (user_id) leads every key written per account, and no foreign key points
-- from these tables at an account table (a foreign-key check locks the referenced row), so a
-- batch's work per account is local to the account (docs/scaling.md, Citus).

CREATE TABLE pending_charges (
    user_id        bigint NOT NULL,
    token_id       bigint NOT NULL,
    batch_id       bigint NOT NULL,
    quota          bigint NOT NULL,        -- charged by the batch's lines
    requests       bigint NOT NULL,
    last_at        timestamptz,            -- their latest created_at (tokens.accessed_at)
    user_returned  bigint NOT NULL,        -- settled holds' reservations, back to users.reserved
    token_returned bigint NOT NULL         -- … and to tokens.reserved (limited keys' holds)
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
        autovacuum_vacuum_cost_delay = 0);
CREATE INDEX pending_charges_user_idx ON pending_charges (user_id, token_id);

-- Read whole by the roll-up (per shard) and by usage_rollups, so it has no index to maintain.
CREATE TABLE pending_usage (
    day                 date NOT NULL,
    user_id             bigint NOT NULL,
    token_id            bigint NOT NULL,
    model               text NOT NULL,
    "group"             text NOT NULL,
    kind                text NOT NULL,
    requests            bigint NOT NULL,
    failed_requests     bigint NOT NULL,
    prompt_tokens       bigint NOT NULL,
    completion_tokens   bigint NOT NULL,
    cached_tokens       bigint NOT NULL,
    cache_write_tokens  bigint NOT NULL,
    audio_input_tokens  bigint NOT NULL,
    audio_output_tokens bigint NOT NULL,
    images              bigint NOT NULL,
    video_seconds       numeric NOT NULL,
    calls               bigint NOT NULL,
    predict_time        numeric NOT NULL,
    quota               bigint NOT NULL,
    batch_id            bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 50000,
        autovacuum_vacuum_cost_delay = 0);

-- What is pending for one account. Inlined by the planner (one index scan each).
CREATE FUNCTION tally_pending_charges(p_user_id bigint) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(quota), 0)::bigint FROM pending_charges WHERE user_id = p_user_id
$$;
CREATE FUNCTION tally_pending_requests(p_user_id bigint) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(requests), 0)::bigint FROM pending_charges WHERE user_id = p_user_id
$$;
CREATE FUNCTION tally_pending_returns(p_user_id bigint) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(user_returned), 0)::bigint FROM pending_charges WHERE user_id = p_user_id
$$;
CREATE FUNCTION tally_pending_token_charges(p_user_id bigint, p_token_id bigint) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(quota), 0)::bigint FROM pending_charges WHERE user_id = p_user_id AND token_id = p_token_id
$$;
CREATE FUNCTION tally_pending_token_requests(p_user_id bigint, p_token_id bigint) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(requests), 0)::bigint FROM pending_charges WHERE user_id = p_user_id AND token_id = p_token_id
$$;
CREATE FUNCTION tally_pending_token_returns(p_user_id bigint, p_token_id bigint) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(token_returned), 0)::bigint FROM pending_charges WHERE user_id = p_user_id AND token_id = p_token_id
$$;

-- Balances as every reader must see them: folded figures with the pending ones applied.
CREATE VIEW user_balances AS
SELECT u.id, u.quota - tally_pending_charges(u.id) AS quota,
       u.used_quota + tally_pending_charges(u.id) AS used_quota,
       u.request_count + tally_pending_requests(u.id) AS request_count,
       u.reserved - tally_pending_returns(u.id) AS reserved
FROM users u;

CREATE VIEW token_balances AS
SELECT t.id, t.user_id,
       t.remain_quota - CASE WHEN t.unlimited_quota THEN 0 ELSE tally_pending_token_charges(t.user_id, t.id) END
           AS remain_quota,
       t.used_quota + tally_pending_token_charges(t.user_id, t.id) AS used_quota,
       t.request_count + tally_pending_token_requests(t.user_id, t.id) AS request_count,
       t.reserved - tally_pending_token_returns(t.user_id, t.id) AS reserved
FROM tokens t;

-- The usage rollups exports, statements and audits sum: rolled up and pending alike.
CREATE VIEW usage_rollups AS
SELECT day, user_id, token_id, model, "group", kind, requests, failed_requests, prompt_tokens, completion_tokens,
       cached_tokens, cache_write_tokens, audio_input_tokens, audio_output_tokens, images, video_seconds, calls,
       predict_time, quota
FROM usage_daily
UNION ALL
SELECT day, user_id, token_id, model, "group", kind, requests, failed_requests, prompt_tokens, completion_tokens,
       cached_tokens, cache_write_tokens, audio_input_tokens, audio_output_tokens, images, video_seconds, calls,
       predict_time, quota
FROM pending_usage;

-- Folds the pending charges of p_user_ids (NULL: of every account with some) into users and
-- tokens, in one transaction with their deletion. Locks users, then tokens, in id order (the
-- order of tally_lease, tally_close_holds and tally_return_leases). With p_skip_locked, users
-- locked by someone else (a lease refill, a top-up) are left for the next tick. Then, as ingest
-- used to: 'overdrawn:' notifications for accounts left with less than they reserved (every
-- instance gives its lease back), and balance.low / balance.exhausted webhook events for
-- balances the fold took across a threshold. Returns the number of users folded.
CREATE FUNCTION tally_fold(p_user_ids bigint[], p_skip_locked boolean DEFAULT true) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    wanted bigint[] := p_user_ids;
    locked_users bigint[];
    locked_tokens bigint[];
    folded_users bigint[];
    folded_charges bigint[];
    folded_batches bigint[];
BEGIN
    IF wanted IS NULL THEN
        wanted := ARRAY(SELECT DISTINCT user_id FROM pending_charges);
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
        WHERE k.id = ANY (ARRAY(SELECT DISTINCT p.token_id FROM pending_charges p WHERE p.user_id = ANY (locked_users)))
        ORDER BY k.id FOR NO KEY UPDATE);

    -- Only rows of locked tokens (or of no token: imported logs without a key) are taken, so
    -- nothing is locked out of order by a row that committed after the locks were taken. The
    -- updates name the locked ids too, so they look rows up by key instead of scanning.
    WITH gone AS (
        DELETE FROM pending_charges p
        WHERE p.user_id = ANY (locked_users)
          AND (p.token_id = ANY (locked_tokens) OR NOT EXISTS (SELECT 1 FROM tokens k WHERE k.id = p.token_id))
        RETURNING p.*
    ), token_totals AS (
        SELECT g.token_id, sum(g.quota) AS charged, sum(g.requests) AS requests, sum(g.token_returned) AS returned,
               max(g.last_at) AS last_at
        FROM gone g GROUP BY g.token_id
    ), debited_tokens AS (
        -- Unlimited keys keep their remain_quota; every key counts its use.
        UPDATE tokens k SET remain_quota = k.remain_quota - CASE WHEN k.unlimited_quota THEN 0 ELSE t.charged END,
                            used_quota = k.used_quota + t.charged, request_count = k.request_count + t.requests,
                            reserved = k.reserved - t.returned,
                            accessed_at = greatest(k.accessed_at, coalesce(t.last_at, k.accessed_at))
        FROM token_totals t WHERE k.id = t.token_id AND k.id = ANY (locked_tokens)
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

    PERFORM pg_notify('tally_changes', 'overdrawn:user:' || u.id)
       FROM users u WHERE u.id = ANY (folded_users) AND u.quota < u.reserved;
    PERFORM pg_notify('tally_changes', 'overdrawn:token:' || k.id)
       FROM tokens k WHERE k.id = ANY (locked_tokens) AND NOT k.unlimited_quota AND k.remain_quota < k.reserved;

    -- balance.low / balance.exhausted (docs/webhooks.md): the balance before the fold is the
    -- balance after it plus what it charged. The tid is the latest folded batch's.
    WITH crossings AS MATERIALIZED (
        SELECT gen_random_uuid() AS event_id, u.id AS user_id, c.rank, c.type,
               jsonb_build_object('user_id', u.id, 'username', u.username, 'quota', u.quota,
                                  'previous_quota', u.quota + f.charged, 'threshold', c.threshold, 'tid', b.tid) AS payload
        FROM unnest(folded_users, folded_charges, folded_batches) AS f(user_id, charged, batch_id)
        JOIN users u ON u.id = f.user_id
        LEFT JOIN ingest_batches b ON b.id = f.batch_id
        CROSS JOIN LATERAL (VALUES
            (1, 'balance.low', coalesce(u.low_balance_threshold, (SELECT low_balance_threshold FROM webhook_settings))),
            (2, 'balance.exhausted', 0::bigint)) AS c (rank, type, threshold)
        WHERE EXISTS (SELECT 1 FROM webhook_endpoints WHERE removed_at IS NULL)
          AND u.quota <= c.threshold AND u.quota + f.charged > c.threshold
          AND (c.type = 'balance.exhausted' OR c.threshold > 0)
    )
    INSERT INTO webhook_outbox (event_id, endpoint_id, type, payload)
    SELECT c.event_id, e.id, c.type, c.payload
    FROM crossings c JOIN webhook_endpoints e
      ON e.removed_at IS NULL AND (cardinality(e.events) = 0 OR c.type = ANY (e.events))
    ORDER BY c.user_id, c.rank, e.id;

    RETURN cardinality(folded_users);
END;
$$;

-- Claims shards of accounts (user_id mod p_shards) with transaction-scoped advisory locks in
-- lock space p_space: with p_wait every shard, waiting, in order; otherwise those no other
-- settler holds right now, tried in random order so that several instances spread over them.
CREATE FUNCTION tally_claim_shards(p_space integer, p_shards integer, p_wait boolean) RETURNS integer[]
LANGUAGE plpgsql AS $$
BEGIN
    IF p_wait THEN
        PERFORM pg_advisory_xact_lock(p_space, g) FROM generate_series(0, p_shards - 1) AS g ORDER BY g;
        RETURN ARRAY(SELECT generate_series(0, p_shards - 1));
    END IF;
    RETURN ARRAY(SELECT s.shard
                 FROM (SELECT g AS shard FROM generate_series(0, p_shards - 1) AS g ORDER BY random()) s
                 WHERE pg_try_advisory_xact_lock(p_space, s.shard));
END;
$$;

-- One settler tick: folds up to p_limit waiting accounts of the shards it can claim. Returns
-- how many accounts it folded (p_limit: more may wait, call again).
CREATE FUNCTION tally_settle(p_shards integer, p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    claimed integer[] := tally_claim_shards(2047934480, p_shards, false);  -- 0x7A110010
BEGIN
    IF cardinality(claimed) = 0 THEN
        RETURN 0;
    END IF;
    RETURN tally_fold(ARRAY(SELECT DISTINCT p.user_id FROM pending_charges p
                            WHERE mod(p.user_id, p_shards)::integer = ANY (claimed) LIMIT p_limit), true);
END;
$$;

-- Rolls the pending usage of the shards it claims (every shard, waiting, with p_wait) up into
-- usage_daily: one upsert per account × key × day × model × group × kind however many batches
-- it came from, in key order. Only roll-ups write usage_daily, and the shards they claim are
-- disjoint, so no account row is locked. Returns the pending rows consumed.
CREATE FUNCTION tally_roll_up(p_shards integer, p_wait boolean DEFAULT false) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    claimed integer[] := tally_claim_shards(2047934481, p_shards, p_wait);  -- 0x7A110011
    consumed bigint;
BEGIN
    IF cardinality(claimed) = 0 THEN
        RETURN 0;
    END IF;
    WITH gone AS (
        DELETE FROM pending_usage p WHERE mod(p.user_id, p_shards)::integer = ANY (claimed) RETURNING p.*
    ), rolled AS (
        INSERT INTO usage_daily AS d (day, user_id, token_id, model, "group", kind, requests, failed_requests,
            prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, audio_input_tokens,
            audio_output_tokens, images, video_seconds, calls, predict_time, quota)
        SELECT g.day, g.user_id, g.token_id, g.model, g."group", g.kind, sum(g.requests), sum(g.failed_requests),
               sum(g.prompt_tokens), sum(g.completion_tokens), sum(g.cached_tokens), sum(g.cache_write_tokens),
               sum(g.audio_input_tokens), sum(g.audio_output_tokens), sum(g.images), sum(g.video_seconds),
               sum(g.calls), sum(g.predict_time), sum(g.quota)
        FROM gone g
        GROUP BY g.day, g.user_id, g.token_id, g.model, g."group", g.kind
        ORDER BY g.day, g.user_id, g.token_id, g.model, g."group", g.kind
        ON CONFLICT (day, user_id, token_id, model, "group", kind) DO UPDATE SET
            requests = d.requests + EXCLUDED.requests,
            failed_requests = d.failed_requests + EXCLUDED.failed_requests,
            prompt_tokens = d.prompt_tokens + EXCLUDED.prompt_tokens,
            completion_tokens = d.completion_tokens + EXCLUDED.completion_tokens,
            cached_tokens = d.cached_tokens + EXCLUDED.cached_tokens,
            cache_write_tokens = d.cache_write_tokens + EXCLUDED.cache_write_tokens,
            audio_input_tokens = d.audio_input_tokens + EXCLUDED.audio_input_tokens,
            audio_output_tokens = d.audio_output_tokens + EXCLUDED.audio_output_tokens,
            images = d.images + EXCLUDED.images,
            video_seconds = d.video_seconds + EXCLUDED.video_seconds,
            calls = d.calls + EXCLUDED.calls,
            predict_time = d.predict_time + EXCLUDED.predict_time,
            quota = d.quota + EXCLUDED.quota
    )
    SELECT count(*) INTO consumed FROM gone;
    RETURN consumed;
END;
$$;

-- Leases grant from what is left once the pending charges are paid and the pending returns
-- are back: min(want, quota − reserved − pending charges + pending returns). The rest is as in
-- 0009_leases.sql.
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
           array_agg(LEAST(w.want, GREATEST(b.quota - b.reserved, 0)) ORDER BY x.id)
      INTO ids, grants
      FROM (SELECT u.id, sum(u.want) AS want FROM unnest(p_user_ids, p_user_wants) AS u(id, want) GROUP BY u.id) w
      JOIN users x ON x.id = w.id
      CROSS JOIN LATERAL (SELECT x.quota - tally_pending_charges(x.id) AS quota,
                                 x.reserved - tally_pending_returns(x.id) AS reserved) b;
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
      CROSS JOIN LATERAL (SELECT x.remain_quota - tally_pending_token_charges(x.user_id, x.id) AS remain_quota,
                                 x.reserved - tally_pending_token_returns(x.user_id, x.id) AS reserved) b;
    UPDATE tokens x SET reserved = x.reserved + g.amount
      FROM unnest(ids, grants) AS g(id, amount) WHERE x.id = g.id AND g.amount > 0;
    INSERT INTO token_leases (instance_id, token_id, amount)
      SELECT p_instance, g.id, g.amount FROM unnest(ids, grants) AS g(id, amount) WHERE g.amount > 0
      ON CONFLICT (instance_id, token_id) DO UPDATE SET amount = token_leases.amount + EXCLUDED.amount;
    RETURN QUERY
      WITH w AS (SELECT a.id, sum(a.want) AS want FROM unnest(p_token_ids, p_token_wants) AS a(id, want) GROUP BY a.id),
      r AS (SELECT w.id, w.want, COALESCE(g.amount, 0) AS granted,
                   CASE WHEN x.id IS NULL THEN 'unknown' WHEN x.unlimited_quota THEN 'unlimited'
                        WHEN x.remain_quota - tally_pending_token_charges(x.user_id, x.id) <= 0 THEN 'exhausted'
                        ELSE 'ok' END AS state,
                   (SELECT COALESCE(sum(l.amount), 0)::bigint FROM token_leases l
                    WHERE l.token_id = w.id AND l.instance_id <> p_instance) AS others
            FROM w LEFT JOIN tokens x ON x.id = w.id LEFT JOIN unnest(ids, grants) AS g(id, amount) ON g.id = w.id)
      SELECT 'token', r.id, r.granted, r.state, r.others
      FROM r;
    PERFORM pg_notify('tally_changes', 'lease-wanted:token:' || w.id)
      FROM (SELECT a.id, sum(a.want) AS want FROM unnest(p_token_ids, p_token_wants) AS a(id, want) GROUP BY a.id) w
      LEFT JOIN unnest(ids, grants) AS g(id, amount) ON g.id = w.id
      WHERE COALESCE(g.amount, 0) < w.want
        AND EXISTS (SELECT 1 FROM token_leases l WHERE l.token_id = w.id AND l.instance_id <> p_instance AND l.amount > 0);
END;
$$;

-- Request identity: the account, then the time, then the gateway's request id. A resent line
-- carries the same key, so the same account: exactly once per (user, request id, time). Leading
-- with the account and the time, inserts land at the end of each account's range instead of at
-- random places, and the key serves the account's log pages (newest first), so the separate
-- (user_id, created_at) index goes. Admins' lookups by request id keep an index of their own.
ALTER TABLE request_logs DROP CONSTRAINT request_logs_pkey;
ALTER TABLE request_logs ADD PRIMARY KEY (user_id, created_at, request_id);
DROP INDEX request_logs_user_idx;
CREATE INDEX request_logs_request_idx ON request_logs (request_id);

-- The ledger: no foreign keys (a check takes a KEY SHARE lock on the user's row, for every
-- charge row), and no index on batch_id (balance crossings are found by the fold now).
ALTER TABLE ledger DROP CONSTRAINT ledger_user_id_fkey, DROP CONSTRAINT ledger_token_id_fkey,
                   DROP CONSTRAINT ledger_batch_id_fkey;
DROP INDEX ledger_batch_idx;

-- Room on every page for the fold's updates to stay HOT (no index changes, no new index
-- entries). users and tokens are small and rewritten now; usage_daily takes it for new pages.
ALTER TABLE users SET (fillfactor = 50);
ALTER TABLE tokens SET (fillfactor = 50);
ALTER TABLE usage_daily SET (fillfactor = 70);
CLUSTER users USING users_pkey;
CLUSTER tokens USING tokens_pkey;
