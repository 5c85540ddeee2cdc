-- The balance fold goes round the queue (found by a review of 0032).
--
-- 0032 started each pick at a random account id between the queue's first and last, which is
-- random per id, not per account: with the pending accounts in clusters far apart, most starts
-- fell in the gap between them and wrapped to the front of a cluster, as before 0032. Each
-- settler now names the last account it picked, and the next pick starts after it (wrapping
-- around), so every pending account comes up within one round of the queue, however its ids
-- lie. The pick is still index range reads that stop after p_limit accounts. The call answers
-- how many accounts it folded and the last one it picked. (Otherwise as in 0032.)
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
