-- The balance fold picks its accounts from a random point of the queue (found by a review).
--
-- tally_settle took the first p_limit accounts of pending_charges in index order, and the
-- settler goes on only while a fold comes back full; an account it skips (its row locked by a
-- lease, a lookup, a top-up) makes the fold come back short. With more than p_limit accounts
-- pending and one of the first ones locked at each tick (a busy account is leased often), the
-- accounts past the first p_limit were folded only at ticks where none was: their pending rows,
-- which every balance read and lease grant sums, kept growing, and their overdrawn notices and
-- balance webhooks waited. The pick now starts at a random account id between the queue's
-- first and last and wraps around: still index range reads that stop after p_limit accounts.
-- (Otherwise as in 0010; the settings of 0018 and 0023 are kept.)
CREATE OR REPLACE FUNCTION tally_settle(p_shards integer, p_limit integer) RETURNS integer
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan SET jit = off AS $$
DECLARE
    claimed integer[] := tally_claim_shards(2047934480, p_shards, false);  -- 0x7A110010
    first_id bigint;
    last_id bigint;
    start_id bigint;
BEGIN
    IF cardinality(claimed) = 0 THEN
        RETURN 0;
    END IF;
    SELECT min(p.user_id), max(p.user_id) INTO first_id, last_id FROM pending_charges p;
    IF first_id IS NULL THEN
        RETURN 0;
    END IF;
    start_id := first_id + floor(random() * (last_id - first_id + 1)::double precision)::bigint;
    RETURN tally_fold(ARRAY(
        SELECT picked.user_id FROM (
            (SELECT DISTINCT p.user_id FROM pending_charges p
             WHERE p.user_id >= start_id AND mod(p.user_id, p_shards)::integer = ANY (claimed)
             ORDER BY p.user_id LIMIT p_limit)
            UNION ALL
            (SELECT DISTINCT p.user_id FROM pending_charges p
             WHERE p.user_id < start_id AND mod(p.user_id, p_shards)::integer = ANY (claimed)
             ORDER BY p.user_id LIMIT p_limit)) picked
        LIMIT p_limit), true);
END;
$$;
