-- Lease and journal calls touch only the accounts they name, whatever the statistics say
-- (issue 15; docs/enforcement.md, "Third pass: plans that cannot scan").
--
-- 0017 gave tally_lease and tally_journal_holds one generic plan per statement. A generic plan
-- does not see the arrays: it joins `unnest(array)` to users or tokens on the estimates of the
-- moment. Right after accounts are created or imported, before autovacuum analyzed them, the
-- estimates are those of an unknown table, and the cached plan hashes the arrays and reads
-- the whole table: measured under `ops/bench authorize` (10k fresh accounts, 16 clients), every
-- lease call read all 10,000 tokens twice (103 million rows in 16 s), a journal call of two
-- holds took 7 ms of PostgreSQL time, and sync authorize ran at 500/s. The plan then stays for
-- the life of the connection. Every statement below now reaches an account row only through
-- its key, per element, by construction: a LATERAL subquery that cannot be flattened (OFFSET 0)
-- probes the primary key once per element, and an UPDATE names its rows with `= ANY (ids)` on
-- the key. The plans stay generic (no planning per call); what a call costs is what it touches.
-- Behaviour, locks and their order are those of 0015 and 0017.
CREATE OR REPLACE FUNCTION tally_lease(p_instance text, p_user_ids bigint[], p_user_wants bigint[],
                                       p_token_ids bigint[], p_token_wants bigint[])
RETURNS TABLE (kind text, account_id bigint, granted bigint, state text, others bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
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
      CROSS JOIN LATERAL (SELECT u.id, u.quota, u.reserved FROM users u WHERE u.id = w.id OFFSET 0) x
      CROSS JOIN LATERAL (SELECT coalesce(sum(c.quota), 0)::bigint AS quota, coalesce(sum(c.user_returned), 0)::bigint AS returned
                          FROM pending_charges c WHERE c.user_id = x.id) p;
    UPDATE users x SET reserved = x.reserved + g.amount
      FROM unnest(ids, grants) AS g(id, amount)
      WHERE x.id = ANY (ids) AND x.id = g.id AND g.amount > 0;
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
      CROSS JOIN LATERAL (SELECT t.id, t.user_id, t.unlimited_quota, t.remain_quota, t.reserved
                          FROM tokens t WHERE t.id = w.id OFFSET 0) x
      CROSS JOIN LATERAL (SELECT x.remain_quota - coalesce(sum(c.quota), 0) AS remain_quota,
                                 x.reserved - coalesce(sum(c.token_returned), 0) AS reserved
                          FROM pending_charges c WHERE c.user_id = x.user_id AND c.token_id = x.id) b;
    UPDATE tokens x SET reserved = x.reserved + g.amount
      FROM unnest(ids, grants) AS g(id, amount)
      WHERE x.id = ANY (ids) AND x.id = g.id AND g.amount > 0;
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
            FROM w
            LEFT JOIN LATERAL (SELECT t.id, t.user_id, t.unlimited_quota, t.remain_quota
                               FROM tokens t WHERE t.id = w.id OFFSET 0) k ON true
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

-- tally_journal_holds (0017), its lease rows updated one by one by key.
CREATE OR REPLACE FUNCTION tally_journal_holds(p_instance text, p_ids bigint[], p_request_ids text[],
                                               p_user_ids bigint[], p_token_ids bigint[], p_amounts bigint[],
                                               p_models text[], p_tids text[], p_token_leased boolean[],
                                               p_ttl_seconds integer)
RETURNS TABLE (request_id text, hold_id bigint, held bigint, hold_status text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    expires timestamptz := now() + make_interval(secs => p_ttl_seconds);
    new_user_ids bigint[];
    new_token_ids bigint[];
    new_amounts bigint[];
    new_token_leased boolean[];
    inserted_count integer;
    account bigint;
    units bigint;
BEGIN
    PERFORM 1 FROM tally_instances i WHERE i.id = p_instance FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'instance % is not registered', p_instance USING ERRCODE = 'T0L01';
    END IF;

    WITH inserted AS (
        INSERT INTO holds (id, request_id, user_id, token_id, model, amount, token_reserved, tid, expires_at)
        SELECT r.id, r.request_id, r.user_id, r.token_id, r.model, r.amount, r.token_leased, r.tid, expires
        FROM unnest(p_ids, p_request_ids, p_user_ids, p_token_ids, p_models, p_amounts, p_token_leased, p_tids)
             AS r(id, request_id, user_id, token_id, model, amount, token_leased, tid)
        ORDER BY r.request_id COLLATE "C"
        ON CONFLICT ON CONSTRAINT holds_request_id_key DO NOTHING
        RETURNING holds.user_id, holds.token_id, holds.amount, holds.token_reserved)
    SELECT array_agg(i.user_id), array_agg(i.token_id), array_agg(i.amount), array_agg(i.token_reserved), count(*)
      INTO new_user_ids, new_token_ids, new_amounts, new_token_leased, inserted_count
      FROM inserted i;

    -- Each lease row by its key, in account order (users, then tokens, each by id, as
    -- tally_lease and the hand-back lock them): the UPDATE takes the row lock.
    FOR account, units IN
        SELECT h.user_id, sum(h.amount) FROM unnest(new_user_ids, new_amounts) AS h(user_id, amount)
        GROUP BY h.user_id ORDER BY h.user_id
    LOOP
        UPDATE user_leases l SET amount = l.amount - units WHERE l.instance_id = p_instance AND l.user_id = account;
    END LOOP;
    FOR account, units IN
        SELECT h.token_id, sum(h.amount) FROM unnest(new_token_ids, new_amounts, new_token_leased) AS h(token_id, amount, leased)
        WHERE h.leased GROUP BY h.token_id ORDER BY h.token_id
    LOOP
        UPDATE token_leases l SET amount = l.amount - units WHERE l.instance_id = p_instance AND l.token_id = account;
    END LOOP;

    IF inserted_count = cardinality(p_ids) THEN
        -- Every hold is new: each is stored as given.
        RETURN QUERY SELECT r.request_id, r.id, r.amount, 'held'::text
                     FROM unnest(p_request_ids, p_ids, p_amounts) AS r(request_id, id, amount);
    ELSE
        RETURN QUERY
          SELECT r.request_id, h.id, h.amount, h.status
          FROM unnest(p_request_ids) WITH ORDINALITY AS r(request_id, ord)
          CROSS JOIN LATERAL (SELECT h.id, h.amount, h.status FROM holds h WHERE h.request_id = r.request_id OFFSET 0) h
          ORDER BY r.ord;
    END IF;
END;
$$;

-- The hand-back (0011) runs rarely (idle leases, another instance short, retirement) and for
-- any number of accounts: it plans each call for its own arrays and the tables as they are now,
-- instead of a plan PL/pgSQL may have cached while the lease tables were small.
ALTER FUNCTION tally_return_leases(text, bigint[], bigint[], bigint[], bigint[]) SET plan_cache_mode = force_custom_plan;

-- A cold key's lookup (0011) leases only the accounts no other transaction holds locked.
-- Measured under `ops/bench authorize` (64 clients, once a warm-up's 10,000 holds were settled):
-- every lookup that leased an account the fold was folding waited for the fold's commit, up
-- to 1.4 s (the fold locks up to 5,000 accounts a transaction), and so did its request, which
-- needed no lease at all when its instance still held one. A lookup now takes the account rows
-- with SKIP LOCKED, in account order: an account held elsewhere gets no lease here, and the first
-- hold that lacks one refills it as any refill does (waiting for the lock then, as it must).
CREATE OR REPLACE FUNCTION tally_lease_on_lookup(p_instance text, p_user_ids bigint[], p_user_wants bigint[],
                                                 p_token_ids bigint[], p_token_wants bigint[])
RETURNS TABLE (kind text, account_id bigint, granted bigint, state text, others bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    free_users bigint[];
    free_tokens bigint[];
    user_ids bigint[];
    user_wants bigint[];
    token_ids bigint[];
    token_wants bigint[];
BEGIN
    IF cardinality(p_user_ids) = 0 AND cardinality(p_token_ids) = 0 THEN
        RETURN;
    END IF;
    -- Held until commit, so the reaper cannot take the registration away before tally_lease
    -- takes the same lock.
    PERFORM 1 FROM tally_instances i WHERE i.id = p_instance FOR SHARE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- Locked in statements of their own, as the fold locks (Citus plans them shard by shard);
    -- tally_lease then takes the same locks again, held already.
    free_users := ARRAY(SELECT x.id FROM users x WHERE x.id = ANY (p_user_ids) ORDER BY x.id
                        FOR NO KEY UPDATE SKIP LOCKED);
    free_tokens := ARRAY(SELECT x.id FROM tokens x WHERE x.id = ANY (p_token_ids) ORDER BY x.id
                         FOR NO KEY UPDATE SKIP LOCKED);
    SELECT coalesce(array_agg(w.id), '{}'), coalesce(array_agg(w.want), '{}') INTO user_ids, user_wants
      FROM unnest(p_user_ids, p_user_wants) AS w(id, want) WHERE w.id = ANY (free_users);
    SELECT coalesce(array_agg(w.id), '{}'), coalesce(array_agg(w.want), '{}') INTO token_ids, token_wants
      FROM unnest(p_token_ids, p_token_wants) AS w(id, want) WHERE w.id = ANY (free_tokens);
    RETURN QUERY SELECT l.kind, l.account_id, l.granted, l.state, l.others
                 FROM tally_lease(p_instance, user_ids, user_wants, token_ids, token_wants) l;
END;
$$;
