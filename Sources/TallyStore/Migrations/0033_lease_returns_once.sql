-- A lease return that may be sent again (found by a review of the lease path).
--
-- An instance forgets the units it gives back when it sends them. When the call failed (a
-- PostgreSQL restart, a lost connection, deadlocks past the retries), the units stayed in the
-- lease row while the instance no longer knew them: reserved for no one until the instance
-- stopped or was reaped, so the account could lend them to no other instance either. Sending
-- the return again was unsafe, because the call may have committed before its answer was lost.
-- Each return now carries an id, stored in the same transaction: a return sent again applies
-- only if its id was never stored, so the instance sends a failed return again until
-- PostgreSQL answers. The ids below `p_owed_from` (every return of the instance with a smaller
-- id has been answered) are deleted as they go; all of them go with the registration.
CREATE TABLE tally_lease_returns (
    instance_id text NOT NULL REFERENCES tally_instances ON DELETE CASCADE,
    return_id   bigint NOT NULL,
    PRIMARY KEY (instance_id, return_id)
);

DROP FUNCTION tally_return_leases(text, bigint[], bigint[], bigint[], bigint[]);

-- True when the return was applied now; false when its id was applied before, or when the
-- registration is gone (the reaping returned every lease of it).
CREATE FUNCTION tally_return_leases(p_instance text, p_return_id bigint, p_owed_from bigint,
                                    p_user_ids bigint[], p_user_amounts bigint[],
                                    p_token_ids bigint[], p_token_amounts bigint[])
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    -- The registration's shared lock (as leases and journal batches take it): no reaping meanwhile.
    IF NOT tally_hold_registration(p_instance) THEN
        RETURN false;
    END IF;
    INSERT INTO tally_lease_returns (instance_id, return_id) VALUES (p_instance, p_return_id)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF tally_on_citus() THEN
        PERFORM tally_return_leases_each(p_instance, p_user_ids, p_user_amounts, p_token_ids, p_token_amounts);
    ELSE
        PERFORM tally_return_leases_at_once(p_instance, p_user_ids, p_user_amounts, p_token_ids, p_token_amounts);
    END IF;
    -- Last, after the accounts' locks (taken in the one order), so that two returns deleting the
    -- same old ids cannot each hold what the other waits for.
    DELETE FROM tally_lease_returns r WHERE r.instance_id = p_instance AND r.return_id < p_owed_from;
    RETURN true;
END;
$$;
