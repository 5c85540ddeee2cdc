-- Lease rows and accounts in the one lock order on Citus too (issue 15), found by a review of the
-- lease functions and confirmed on a scratch cluster.
--
-- On Citus a lease and a hand-back lock accounts owner by owner (0022: a user, then its tokens,
-- then the next user), but the journal took the instance's lease rows users first, then tokens.
-- A journal batch with holds of user 1 (through its limited key 10) and of user 2 held the lease
-- rows of users 1 and 2 and waited for key 10's, while a refill of key 10 and user 2 held key
-- 10's lease row and waited for user 2's: a deadlock, each aborted batch a retry or, for sync
-- holds, a 503. The journal now takes its lease rows in the order of the platform's leases:
-- users then tokens on one PostgreSQL (unchanged), owner by owner on Citus.
--
-- The Citus reaper returned each dead instance's leases in turn, each instance's accounts in
-- order but the accounts of two instances out of it (user 5 of one, then user 3 of the next),
-- and read the amounts to return before it locked the accounts, so a hand-back committed in
-- between made a lease row negative (the CHECK aborted the reap). It now locks every account of
-- every dead instance first, in the one order, and reads the amounts under those locks.

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
    on_citus boolean := tally_on_citus();
    is_token boolean;
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

    -- Each lease row by its key, in the order leases and hand-backs lock accounts: users, then
    -- tokens, each by id; on Citus owner by owner, a user and then its tokens (0022). The UPDATE
    -- takes the row lock.
    FOR is_token, account, units IN
        SELECT a.is_token, a.id, sum(a.amount)::bigint
        FROM (SELECT h.user_id AS owner, false AS is_token, h.user_id AS id, h.amount
              FROM unnest(new_user_ids, new_amounts) AS h(user_id, amount)
              UNION ALL
              SELECT h.user_id, true, h.token_id, h.amount
              FROM unnest(new_user_ids, new_token_ids, new_amounts, new_token_leased) AS h(user_id, token_id, amount, leased)
              WHERE h.leased) a
        GROUP BY a.owner, a.is_token, a.id
        ORDER BY CASE WHEN on_citus THEN a.owner END, a.is_token, a.id
    LOOP
        IF is_token THEN
            UPDATE token_leases l SET amount = l.amount - units WHERE l.instance_id = p_instance AND l.token_id = account;
        ELSE
            UPDATE user_leases l SET amount = l.amount - units WHERE l.instance_id = p_instance AND l.user_id = account;
        END IF;
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

-- Instances that stopped renewing (0022), every account locked first in the one order.
CREATE OR REPLACE FUNCTION tally_reap_instances(p_instance text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    dead text[];
    gone text;
    user_leased record;
    token_leased record;
    a record;
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
    -- Every account any of them leased, locked first in the one lock order (locked one instance
    -- after another, the accounts of two instances were taken out of order, and a lease taking
    -- them in order could deadlock with the reaper). A hand-back locks the account before its
    -- lease row, so under these locks the amounts read next are the amounts returned.
    FOR a IN SELECT * FROM tally_accounts_in_lock_order(
                 ARRAY(SELECT DISTINCT l.user_id FROM user_leases l WHERE l.instance_id = ANY (dead)), NULL,
                 ARRAY(SELECT DISTINCT l.token_id FROM token_leases l WHERE l.instance_id = ANY (dead)), NULL) LOOP
        PERFORM tally_lock_account(a.owner, a.is_token, a.account_id, false);
    END LOOP;
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
