-- Authorize on Citus (issue 19; docs/scaling.md, "Authorize on Citus").
--
-- The lease path's functions lock and update the accounts they name with one statement for all
-- of them (`id = ANY (ids)`), and find keys by their id alone. On Citus, where `users` and
-- `tokens` are distributed by the account, such a statement spans shards, and Citus refuses to
-- lock rows on several shards in one statement; a key's id does not even say which shard holds
-- it (`tokens` is distributed by `user_id`). On one PostgreSQL nothing changes: each of these
-- functions keeps its set-based body (renamed `…_at_once`) and calls it. On Citus each account is
-- taken by its own statements, each naming the account's distribution key, so each statement
-- runs on one shard; the accounts go in the fold's order (by owner, the user before its keys,
-- keys by id), so a lease and a fold that share accounts lock them in the same order.

-- Citus changes functions over one connection per node, which the shard-parallel statements of
-- a migration would have opened before (on one PostgreSQL this is an unused placeholder).
SET LOCAL citus.multi_shard_modify_mode TO 'sequential';

-- A key's owner by the key's id, in one shard: `account_lookup` gets a row per key keyed by its
-- id (kind 'token'), written with the key's hash row (AccountLookup.addKey and the bulk writers).
-- (One subcommand per ALTER TABLE: Citus refuses ADD CONSTRAINT next to another.)
ALTER TABLE account_lookup DROP CONSTRAINT account_lookup_kind_check;
ALTER TABLE account_lookup ADD CONSTRAINT account_lookup_kind_check
    CHECK (kind IN ('key', 'token', 'access_token', 'username'));
ALTER TABLE account_lookup DROP CONSTRAINT account_lookup_check;
ALTER TABLE account_lookup ADD CONSTRAINT account_lookup_check CHECK ((kind IN ('key', 'token')) = (token_id IS NOT NULL));
INSERT INTO account_lookup (lookup, kind, user_id, token_id)
SELECT int8send(t.id), 'token', t.user_id, t.id FROM tokens t;

-- The owner of key p_token_id (NULL when there is no such key).
CREATE FUNCTION tally_token_owner(p_token_id bigint) RETURNS bigint
LANGUAGE plpgsql STABLE SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    owner bigint;
BEGIN
    SELECT a.user_id INTO owner FROM account_lookup a WHERE a.lookup = int8send(p_token_id) AND a.kind = 'token';
    RETURN owner;
END;
$$;

-- Holds instance p_instance's registration until commit, so that the reaper cannot take it (and
-- its leases) away meanwhile; false when it is gone. On one PostgreSQL a FOR SHARE row lock does
-- it. On Citus `tally_instances` is a reference table: a row lock on it takes a share lock on its
-- shard, which conflicts with the lock every write of a lease row takes on that same shard (the
-- lease rows point at it), so two journal batches that each held one and then wrote lease rows
-- deadlocked. There an advisory lock on the coordinator (shared; the reaper's is exclusive) fences.
CREATE FUNCTION tally_hold_registration(p_instance text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF tally_on_citus() THEN
        PERFORM pg_advisory_xact_lock_shared(tally_registration_lock(p_instance));
        PERFORM 1 FROM tally_instances i WHERE i.id = p_instance;
    ELSE
        PERFORM 1 FROM tally_instances i WHERE i.id = p_instance FOR SHARE;
    END IF;
    RETURN FOUND;
END;
$$;

-- The advisory lock key of an instance's registration (class 0x7A11_0002, as the migrator's 0x7A11_0001).
CREATE FUNCTION tally_registration_lock(p_instance text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT (x'7A110002'::bigint << 32) | (hashtext(p_instance)::bigint & x'FFFFFFFF'::bigint) $$;

-- The accounts of a call in the order every Citus path locks them: by owner, the user first, then
-- its keys by id; each with the sum of its amounts. Keys with no owner come last (nothing to lock).
CREATE FUNCTION tally_accounts_in_lock_order(p_user_ids bigint[], p_user_amounts bigint[],
                                             p_token_ids bigint[], p_token_amounts bigint[])
RETURNS TABLE (owner bigint, is_token boolean, account_id bigint, amount bigint)
LANGUAGE plpgsql AS $$
DECLARE
    owners bigint[] := '{}';
    token bigint;
BEGIN
    FOREACH token IN ARRAY coalesce(p_token_ids, '{}') LOOP
        owners := owners || tally_token_owner(token);  -- one shard each
    END LOOP;
    RETURN QUERY
      SELECT a.owner, a.is_token, a.id, sum(a.amount)::bigint
      FROM (SELECT u.id AS owner, false AS is_token, u.id, u.amount FROM unnest(p_user_ids, p_user_amounts) AS u(id, amount)
            UNION ALL
            SELECT t.owner, true, t.id, t.amount FROM unnest(p_token_ids, p_token_amounts, owners) AS t(id, amount, owner)) a
      GROUP BY a.owner, a.is_token, a.id
      ORDER BY a.owner NULLS LAST, a.is_token, a.id;
END;
$$;

-- Locks one account's row (FOR NO KEY UPDATE, by its distribution key); false when the row does
-- not exist or, with p_skip_locked, another transaction holds it.
CREATE FUNCTION tally_lock_account(p_owner bigint, p_is_token boolean, p_id bigint, p_skip_locked boolean)
RETURNS boolean
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    IF p_owner IS NULL THEN
        RETURN false;  -- an unknown key (and Citus refuses to lock rows of no shard)
    ELSIF p_is_token AND p_skip_locked THEN
        PERFORM 1 FROM tokens x WHERE x.user_id = p_owner AND x.id = p_id FOR NO KEY UPDATE SKIP LOCKED;
    ELSIF p_is_token THEN
        PERFORM 1 FROM tokens x WHERE x.user_id = p_owner AND x.id = p_id FOR NO KEY UPDATE;
    ELSIF p_skip_locked THEN
        PERFORM 1 FROM users x WHERE x.id = p_id FOR NO KEY UPDATE SKIP LOCKED;
    ELSE
        PERFORM 1 FROM users x WHERE x.id = p_id FOR NO KEY UPDATE;
    END IF;
    RETURN FOUND;
END;
$$;

-- Adds p_units to one account's reserved units (negative: gives them back); its row is locked.
CREATE FUNCTION tally_add_reserved(p_owner bigint, p_is_token boolean, p_id bigint, p_units bigint) RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    IF p_is_token THEN
        UPDATE tokens x SET reserved = x.reserved + p_units WHERE x.user_id = p_owner AND x.id = p_id;
    ELSE
        UPDATE users x SET reserved = x.reserved + p_units WHERE x.id = p_id;
    END IF;
END;
$$;

-- tally_lease (and, with p_skip_locked, the lookup's lease) account by account: the same
-- grants, states and notifications as 0021's statements.
CREATE FUNCTION tally_lease_each(p_instance text, p_user_ids bigint[], p_user_wants bigint[],
                                 p_token_ids bigint[], p_token_wants bigint[], p_skip_locked boolean)
RETURNS TABLE (kind text, account_id bigint, granted bigint, state text, others bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    a record;
    known boolean;
    unlimited boolean;
    balance bigint;
    reserved_now bigint;
    amount bigint;
    elsewhere bigint;
    wanted_elsewhere text[] := '{}';
BEGIN
    FOR a IN SELECT * FROM tally_accounts_in_lock_order(p_user_ids, p_user_wants, p_token_ids, p_token_wants) LOOP
        IF NOT tally_lock_account(a.owner, a.is_token, a.account_id, p_skip_locked) AND p_skip_locked THEN
            CONTINUE;  -- held by another transaction (or unknown): no lease from the lookup
        END IF;
        -- Locked first, read in the next statement: its snapshot holds every fold committed before.
        IF a.owner IS NULL THEN
            PERFORM 1 WHERE false;  -- an unknown key: FOUND is false
        ELSIF a.is_token THEN
            SELECT x.unlimited_quota, x.remain_quota - p.quota, x.reserved - p.returned
              INTO unlimited, balance, reserved_now
              FROM tokens x
              CROSS JOIN LATERAL (SELECT coalesce(sum(c.quota), 0)::bigint AS quota,
                                         coalesce(sum(c.token_returned), 0)::bigint AS returned
                                  FROM pending_charges c WHERE c.user_id = a.owner AND c.token_id = a.account_id) p
              WHERE x.user_id = a.owner AND x.id = a.account_id;
        ELSE
            SELECT false, x.quota - p.quota, x.reserved - p.returned INTO unlimited, balance, reserved_now
              FROM users x
              CROSS JOIN LATERAL (SELECT coalesce(sum(c.quota), 0)::bigint AS quota,
                                         coalesce(sum(c.user_returned), 0)::bigint AS returned
                                  FROM pending_charges c WHERE c.user_id = a.account_id) p
              WHERE x.id = a.account_id;
        END IF;
        known := FOUND;
        amount := CASE WHEN NOT known OR unlimited OR (a.is_token AND balance <= 0) THEN 0
                       ELSE LEAST(a.amount, GREATEST(balance - reserved_now, 0)) END;
        IF amount > 0 THEN
            PERFORM tally_add_reserved(a.owner, a.is_token, a.account_id, amount);
            IF a.is_token THEN
                INSERT INTO token_leases (instance_id, token_id, amount) VALUES (p_instance, a.account_id, amount)
                  ON CONFLICT (instance_id, token_id) DO UPDATE SET amount = token_leases.amount + EXCLUDED.amount;
            ELSE
                INSERT INTO user_leases (instance_id, user_id, amount) VALUES (p_instance, a.account_id, amount)
                  ON CONFLICT (instance_id, user_id) DO UPDATE SET amount = user_leases.amount + EXCLUDED.amount;
            END IF;
        END IF;
        IF a.is_token THEN
            SELECT coalesce(sum(l.amount), 0)::bigint INTO elsewhere FROM token_leases l
              WHERE l.token_id = a.account_id AND l.instance_id <> p_instance;
        ELSE
            SELECT coalesce(sum(l.amount), 0)::bigint INTO elsewhere FROM user_leases l
              WHERE l.user_id = a.account_id AND l.instance_id <> p_instance;
        END IF;
        IF amount < a.amount AND elsewhere > 0 THEN
            wanted_elsewhere := wanted_elsewhere
                || ('lease-wanted:' || CASE WHEN a.is_token THEN 'token:' ELSE 'user:' END || a.account_id);
        END IF;
        kind := CASE WHEN a.is_token THEN 'token' ELSE 'user' END;
        account_id := a.account_id;
        granted := amount;
        state := CASE WHEN NOT known THEN 'unknown' WHEN unlimited THEN 'unlimited'
                      WHEN a.is_token AND balance <= 0 THEN 'exhausted' ELSE 'ok' END;
        others := elsewhere;
        RETURN NEXT;
    END LOOP;
    -- Sent from the coordinator, where the instances listen (at commit, as any notification).
    PERFORM pg_notify('tally_changes', w.payload) FROM unnest(wanted_elsewhere) AS w(payload);
END;
$$;

-- tally_return_leases account by account: each lease row shrinks by what is given back, and the
-- account's reserved units with it; empty lease rows go.
CREATE FUNCTION tally_return_leases_each(p_instance text, p_user_ids bigint[], p_user_amounts bigint[],
                                         p_token_ids bigint[], p_token_amounts bigint[])
RETURNS void
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    a record;
    left_over bigint;
BEGIN
    FOR a IN SELECT * FROM tally_accounts_in_lock_order(p_user_ids, p_user_amounts, p_token_ids, p_token_amounts) LOOP
        CONTINUE WHEN NOT tally_lock_account(a.owner, a.is_token, a.account_id, false);
        IF a.is_token THEN
            UPDATE token_leases l SET amount = l.amount - a.amount
              WHERE l.instance_id = p_instance AND l.token_id = a.account_id RETURNING l.amount INTO left_over;
        ELSE
            UPDATE user_leases l SET amount = l.amount - a.amount
              WHERE l.instance_id = p_instance AND l.user_id = a.account_id RETURNING l.amount INTO left_over;
        END IF;
        CONTINUE WHEN left_over IS NULL;  -- no lease of this instance: nothing was reserved for it
        PERFORM tally_add_reserved(a.owner, a.is_token, a.account_id, -a.amount);
        IF left_over = 0 AND a.is_token THEN
            DELETE FROM token_leases l WHERE l.instance_id = p_instance AND l.token_id = a.account_id;
        ELSIF left_over = 0 THEN
            DELETE FROM user_leases l WHERE l.instance_id = p_instance AND l.user_id = a.account_id;
        END IF;
        left_over := NULL;
    END LOOP;
END;
$$;

-- The reservations of closed holds given back account by account (tally_close_holds' second half).
CREATE FUNCTION tally_unreserve_each(p_user_ids bigint[], p_user_amounts bigint[],
                                     p_token_ids bigint[], p_token_amounts bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    a record;
BEGIN
    FOR a IN SELECT * FROM tally_accounts_in_lock_order(p_user_ids, p_user_amounts, p_token_ids, p_token_amounts) LOOP
        IF tally_lock_account(a.owner, a.is_token, a.account_id, false) THEN
            PERFORM tally_add_reserved(a.owner, a.is_token, a.account_id, -a.amount);
        END IF;
    END LOOP;
END;
$$;

-- The journal of 0021, fenced by tally_hold_registration (it runs unchanged on Citus otherwise:
-- `holds` stays on the coordinator, and each lease row is updated by its key).
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
    IF NOT tally_hold_registration(p_instance) THEN
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

-- The set-based bodies stay for one PostgreSQL; the names callers use choose.
ALTER FUNCTION tally_lease(text, bigint[], bigint[], bigint[], bigint[]) RENAME TO tally_lease_at_once;
ALTER FUNCTION tally_lease_on_lookup(text, bigint[], bigint[], bigint[], bigint[]) RENAME TO tally_lease_on_lookup_at_once;
ALTER FUNCTION tally_return_leases(text, bigint[], bigint[], bigint[], bigint[]) RENAME TO tally_return_leases_at_once;
ALTER FUNCTION tally_close_holds(bigint[], text) RENAME TO tally_close_holds_at_once;
ALTER FUNCTION tally_reap_instances(text) RENAME TO tally_reap_instances_at_once;

CREATE FUNCTION tally_lease(p_instance text, p_user_ids bigint[], p_user_wants bigint[],
                            p_token_ids bigint[], p_token_wants bigint[])
RETURNS TABLE (kind text, account_id bigint, granted bigint, state text, others bigint)
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT tally_on_citus() THEN
        RETURN QUERY SELECT * FROM tally_lease_at_once(p_instance, p_user_ids, p_user_wants, p_token_ids, p_token_wants);
        RETURN;
    END IF;
    IF NOT tally_hold_registration(p_instance) THEN
        RAISE EXCEPTION 'instance % is not registered', p_instance USING ERRCODE = 'T0L01';
    END IF;
    RETURN QUERY SELECT * FROM tally_lease_each(p_instance, p_user_ids, p_user_wants, p_token_ids, p_token_wants, false);
END;
$$;

-- A cold key's lookup leases only what no other transaction holds locked (0021), and nothing when
-- the instance's registration is gone. (On one PostgreSQL, 0021's body checks both and calls
-- tally_lease, which takes the set-based path there.)
CREATE FUNCTION tally_lease_on_lookup(p_instance text, p_user_ids bigint[], p_user_wants bigint[],
                                      p_token_ids bigint[], p_token_wants bigint[])
RETURNS TABLE (kind text, account_id bigint, granted bigint, state text, others bigint)
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT tally_on_citus() THEN
        RETURN QUERY SELECT * FROM tally_lease_on_lookup_at_once(p_instance, p_user_ids, p_user_wants, p_token_ids, p_token_wants);
        RETURN;
    END IF;
    IF cardinality(p_user_ids) = 0 AND cardinality(p_token_ids) = 0 THEN
        RETURN;
    END IF;
    IF NOT tally_hold_registration(p_instance) THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM tally_lease_each(p_instance, p_user_ids, p_user_wants, p_token_ids, p_token_wants, true);
END;
$$;

CREATE FUNCTION tally_return_leases(p_instance text, p_user_ids bigint[], p_user_amounts bigint[],
                                    p_token_ids bigint[], p_token_amounts bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF tally_on_citus() THEN
        PERFORM tally_return_leases_each(p_instance, p_user_ids, p_user_amounts, p_token_ids, p_token_amounts);
    ELSE
        PERFORM tally_return_leases_at_once(p_instance, p_user_ids, p_user_amounts, p_token_ids, p_token_amounts);
    END IF;
END;
$$;

CREATE FUNCTION tally_close_holds(p_hold_ids bigint[], p_status text)
RETURNS TABLE (request_id text, amount bigint)
LANGUAGE plpgsql AS $$
DECLARE
    closed record;
BEGIN
    IF NOT tally_on_citus() THEN
        RETURN QUERY SELECT * FROM tally_close_holds_at_once(p_hold_ids, p_status);
        RETURN;
    END IF;
    WITH c AS (
        UPDATE holds h SET status = p_status, closed_at = now()
        WHERE h.id IN (SELECT o.id FROM holds o WHERE o.id = ANY (p_hold_ids) AND o.status = 'held'
                       FOR UPDATE SKIP LOCKED)
        RETURNING h.request_id, h.user_id, h.token_id, h.amount, h.token_reserved)
    SELECT array_agg(c.request_id) AS request_ids, array_agg(c.amount) AS amounts, array_agg(c.user_id) AS user_ids,
           coalesce(array_agg(c.token_id) FILTER (WHERE c.token_reserved), '{}') AS token_ids,
           coalesce(array_agg(c.amount) FILTER (WHERE c.token_reserved), '{}') AS token_amounts
      INTO closed FROM c;
    IF closed.request_ids IS NULL THEN
        RETURN;
    END IF;
    PERFORM tally_unreserve_each(closed.user_ids, closed.amounts, closed.token_ids, closed.token_amounts);
    RETURN QUERY SELECT c.request_id, c.amount FROM unnest(closed.request_ids, closed.amounts) AS c(request_id, amount);
END;
$$;

-- Instances that stopped renewing: on Citus each one's leases are given back account by account,
-- then its registration goes (its lease rows with it).
CREATE FUNCTION tally_reap_instances(p_instance text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    dead text[];
    gone text;
    user_leased record;
    token_leased record;
BEGIN
    IF NOT tally_on_citus() THEN
        RETURN tally_reap_instances_at_once(p_instance);
    END IF;
    -- One connection per node for the whole transaction: it reads the instances' lease rows on
    -- every shard and then deletes from tally_instances, a reference table the lease rows point at.
    PERFORM set_config('citus.multi_shard_modify_mode', 'sequential', true);
    -- The registrations' fences first (waiting for the batches in flight), then their rows.
    PERFORM pg_advisory_xact_lock(tally_registration_lock(d.id))
      FROM (SELECT d.id FROM tally_instances d JOIN tally_instance_renewals r ON r.instance_id = d.id
            WHERE CASE WHEN p_instance IS NULL THEN r.expires_at + make_interval(secs => d.reclaim_after_seconds) < now()
                       ELSE d.id = p_instance END
            ORDER BY d.id) d;
    SELECT array_agg(i.id) INTO dead FROM (
        SELECT d.id FROM tally_instances d JOIN tally_instance_renewals r ON r.instance_id = d.id
        WHERE CASE WHEN p_instance IS NULL THEN r.expires_at + make_interval(secs => d.reclaim_after_seconds) < now()
                   ELSE d.id = p_instance END
        ORDER BY d.id FOR UPDATE OF d, r SKIP LOCKED) i;
    IF dead IS NULL THEN
        RETURN 0;
    END IF;
    FOREACH gone IN ARRAY dead LOOP
        SELECT coalesce(array_agg(l.user_id ORDER BY l.user_id), '{}') AS ids,
               coalesce(array_agg(l.amount ORDER BY l.user_id), '{}') AS amounts
          INTO user_leased FROM user_leases l WHERE l.instance_id = gone;
        SELECT coalesce(array_agg(l.token_id ORDER BY l.token_id), '{}') AS ids,
               coalesce(array_agg(l.amount ORDER BY l.token_id), '{}') AS amounts
          INTO token_leased FROM token_leases l WHERE l.instance_id = gone;
        PERFORM tally_return_leases_each(gone, user_leased.ids, user_leased.amounts, token_leased.ids, token_leased.amounts);
    END LOOP;
    DELETE FROM tally_instances i WHERE i.id = ANY (dead);
    RETURN cardinality(dead);
END;
$$;
