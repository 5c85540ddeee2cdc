-- A lease call (a refill, a cold key's lookup) costs PostgreSQL less, same protocol as 0034.
--
-- pg_stat_statements over `ops/bench authorize --statements` (2026-12-07): each call forgot the
-- ids before its instance's oldest unanswered one, 0.65 ms a call (3,102 calls, 2.0 s of the run),
-- walking the index over the rows the calls before it had deleted; and it reached tally_lease or
-- tally_lease_on_lookup through EXECUTE, planned again at every call. Now every 16th call of an
-- instance forgets (the ids are an instance's count from 1: at most 16 answered rows wait), and
-- both functions are named in one static query, cached like any other, of which only the branch
-- p_on_lookup chooses runs (its condition gates the function scan). Instances of 0034 call the
-- same signature and keep working.
CREATE OR REPLACE FUNCTION tally_lease_call(p_instance text, p_call_id bigint, p_owed_from bigint, p_on_lookup boolean,
                                            p_user_ids bigint[], p_user_wants bigint[],
                                            p_token_ids bigint[], p_token_wants bigint[])
RETURNS TABLE (kind text, account_id bigint, granted bigint, state text, others bigint)
LANGUAGE plpgsql AS $$
DECLARE
    g record;
    users_granted bigint[] := '{}';
    user_units bigint[] := '{}';
    tokens_granted bigint[] := '{}';
    token_units bigint[] := '{}';
BEGIN
    IF cardinality(p_user_ids) = 0 AND cardinality(p_token_ids) = 0 THEN
        RETURN;
    END IF;
    -- The registration's shared lock (tally_lease takes it again): its id is stored under it.
    IF NOT tally_hold_registration(p_instance) THEN
        IF p_on_lookup THEN
            RETURN;
        END IF;
        RAISE EXCEPTION 'instance % is not registered', p_instance USING ERRCODE = 'T0L01';
    END IF;
    -- First, so that a give-up of this id waits for this transaction to end.
    INSERT INTO tally_lease_calls (instance_id, call_id) VALUES (p_instance, p_call_id) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lease call % of instance % was given up', p_call_id, p_instance USING ERRCODE = 'T0L02';
    END IF;
    FOR g IN SELECT l.kind, l.account_id, l.granted, l.state, l.others
             FROM tally_lease_on_lookup(p_instance, p_user_ids, p_user_wants, p_token_ids, p_token_wants) l
             WHERE p_on_lookup
             UNION ALL
             SELECT l.kind, l.account_id, l.granted, l.state, l.others
             FROM tally_lease(p_instance, p_user_ids, p_user_wants, p_token_ids, p_token_wants) l
             WHERE NOT p_on_lookup LOOP
        kind := g.kind;
        account_id := g.account_id;
        granted := g.granted;
        state := g.state;
        others := g.others;
        RETURN NEXT;
        IF g.granted > 0 AND g.kind = 'user' THEN
            users_granted := users_granted || g.account_id;
            user_units := user_units || g.granted;
        ELSIF g.granted > 0 THEN
            tokens_granted := tokens_granted || g.account_id;
            token_units := token_units || g.granted;
        END IF;
    END LOOP;
    IF cardinality(users_granted) = 0 AND cardinality(tokens_granted) = 0 THEN
        DELETE FROM tally_lease_calls x WHERE x.instance_id = p_instance AND x.call_id = p_call_id;
    ELSE
        UPDATE tally_lease_calls x
        SET user_ids = users_granted, user_amounts = user_units, token_ids = tokens_granted, token_amounts = token_units
        WHERE x.instance_id = p_instance AND x.call_id = p_call_id;
    END IF;
    IF p_call_id % 16 = 0 THEN
        PERFORM tally_forget_lease_calls(p_instance, p_owed_from);
    END IF;
END;
$$;
