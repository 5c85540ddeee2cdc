-- The balance fold goes round the queue (found by a review).
--
-- tally_settle took the first p_limit accounts of pending_charges in index order, and the
-- settler goes on only while a fold comes back full; an account it skips (its row locked by a
-- lease, a lookup, a top-up) makes the fold come back short. With more than p_limit accounts
-- pending and one of the first ones locked at each tick (a busy account is leased often), the
-- accounts past the first p_limit were folded only at ticks where none was: their pending rows,
-- which every balance read and lease grant sums, kept growing, and their overdrawn notices and
-- balance webhooks waited. Each settler now names the last account it picked, and the next pick
-- starts after it (wrapping around), so every pending account comes up within one round of the
-- queue, however its ids lie (a random start would be random per id, not per account: clustered
-- ids defeat it). The pick is still index range reads that stop after p_limit accounts. The call
-- answers how many accounts it folded and the last one it picked. (Otherwise as in 0010; the
-- settings of 0018 and 0023 are kept.)
DROP FUNCTION tally_settle(integer, integer);

CREATE FUNCTION tally_settle(p_shards integer, p_limit integer, p_after bigint)
RETURNS TABLE (folded integer, last_picked bigint)
LANGUAGE plpgsql SET plan_cache_mode = force_custom_plan SET jit = off AS $$
DECLARE
    claimed integer[] := tally_claim_shards(2047934480, p_shards, false);  -- 0x7A110010
    picked bigint[];
BEGIN
    IF cardinality(claimed) = 0 THEN
        RETURN QUERY SELECT 0, p_after;
        RETURN;
    END IF;
    -- The accounts after p_after, then (only when they are fewer than p_limit) from the front.
    picked := ARRAY(SELECT DISTINCT p.user_id FROM pending_charges p
                    WHERE p.user_id > p_after AND mod(p.user_id, p_shards)::integer = ANY (claimed)
                    ORDER BY p.user_id LIMIT p_limit);
    IF cardinality(picked) < p_limit THEN
        picked := picked || ARRAY(SELECT DISTINCT p.user_id FROM pending_charges p
                                  WHERE p.user_id <= p_after AND mod(p.user_id, p_shards)::integer = ANY (claimed)
                                  ORDER BY p.user_id LIMIT p_limit - cardinality(picked));
    END IF;
    RETURN QUERY SELECT tally_fold(picked, true), coalesce(picked[cardinality(picked)], p_after);
END;
$$;
