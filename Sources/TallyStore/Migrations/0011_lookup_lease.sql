-- Cold keys in one round trip (docs/enforcement.md, "Leases"): authorize reads the keys that are
-- not in its cache — all those asked for meanwhile, in one statement — and leases a first slice
-- of each key's user and token in the same transaction, instead of a lookup and then a refill.
-- The lease is tally_lease's own (same grant, same locks in the same order, same lease-wanted
-- notification); this only decides whether to take one: for keys that may be used (enabled, not
-- deleted, not expired, their owner not suspended; the caller passes only those), and only
-- while the instance is registered — a lookup must not fail because the registration was
-- reaped, so then it leases nothing and the hold takes the ordinary refill path.
CREATE FUNCTION tally_lease_on_lookup(p_instance text, p_user_ids bigint[], p_user_wants bigint[],
                                      p_token_ids bigint[], p_token_wants bigint[])
RETURNS TABLE (kind text, account_id bigint, granted bigint, state text, others bigint)
LANGUAGE plpgsql AS $$
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
    RETURN QUERY SELECT l.kind, l.account_id, l.granted, l.state, l.others
                 FROM tally_lease(p_instance, p_user_ids, p_user_wants, p_token_ids, p_token_wants) l;
END;
$$;
