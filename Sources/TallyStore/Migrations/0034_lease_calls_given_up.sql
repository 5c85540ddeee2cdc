-- A lease call that may be given up (the twin of 0033's returns, found by a review of the lease
-- path).
--
-- A refill, or a cold key's lookup, moves units from the account into the instance's lease row.
-- When the call's answer was lost after its commit (a lost connection, PostgreSQL stopped between
-- the commit and the answer), the instance took the call for failed while the units stayed in
-- the lease row, reserved for no one until the registration ended: for a long-running instance,
-- units of the user's balance that no request could use. Each call now stores its id first, and
-- what it granted under it last, in its transaction. A failed call is given up by its id: the
-- give-up waits for the call if it is still running, then returns what the call granted if it
-- committed; if it did not, the give-up stores the id, marked given up, so that the call, should
-- it start yet, grants nothing (storing its id fails). A call that granted nothing removes its
-- id. The ids below `p_owed_from` (every call of the instance with a smaller id has been
-- answered or given up) are deleted as calls go, except those given up, which stay with the
-- registration (a call sent before its give-up may still arrive); all go with the registration.
CREATE TABLE tally_lease_calls (
    instance_id   text NOT NULL REFERENCES tally_instances ON DELETE CASCADE,
    call_id       bigint NOT NULL,
    -- What the call granted, as tally_return_leases takes it (nothing for an id given up first).
    user_ids      bigint[] NOT NULL DEFAULT '{}',
    user_amounts  bigint[] NOT NULL DEFAULT '{}',
    token_ids     bigint[] NOT NULL DEFAULT '{}',
    token_amounts bigint[] NOT NULL DEFAULT '{}',
    given_up      boolean NOT NULL DEFAULT false,
    PRIMARY KEY (instance_id, call_id)
);

-- The five-argument return, as 0022 made it and 0033 replaced it: a give-up returns a committed
-- grant through it, and instances of the previous version call it during a rolling deploy
-- (ops/deploy/README.md: until each was restarted, every lease it gave back failed and was
-- dropped, its units leased to no one until it stopped). Applied as sent, without an id.
CREATE FUNCTION tally_return_leases(p_instance text, p_user_ids bigint[], p_user_amounts bigint[],
                                    p_token_ids bigint[], p_token_amounts bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- The registration's shared lock (as leases take it): no reaping meanwhile.
    IF NOT tally_hold_registration(p_instance) THEN
        RETURN;
    END IF;
    IF tally_on_citus() THEN
        PERFORM tally_return_leases_each(p_instance, p_user_ids, p_user_amounts, p_token_ids, p_token_amounts);
    ELSE
        PERFORM tally_return_leases_at_once(p_instance, p_user_ids, p_user_amounts, p_token_ids, p_token_amounts);
    END IF;
END;
$$;

-- Forgets the ids of p_instance below p_owed_from, but those given up. Rows another transaction
-- is deleting are skipped, never waited for: two calls forgetting the same ids in different
-- orders would deadlock.
CREATE FUNCTION tally_forget_lease_calls(p_instance text, p_owed_from bigint) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM tally_lease_calls x
    WHERE x.instance_id = p_instance AND x.call_id IN (
        SELECT y.call_id FROM tally_lease_calls y
        WHERE y.instance_id = p_instance AND y.call_id < p_owed_from AND NOT y.given_up
        FOR UPDATE SKIP LOCKED)
$$;

-- tally_lease (a refill) or tally_lease_on_lookup (a cold key's lookup) under call id p_call_id.
-- Raises T0L02 when the id was given up before the call began.
CREATE FUNCTION tally_lease_call(p_instance text, p_call_id bigint, p_owed_from bigint, p_on_lookup boolean,
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
    FOR g IN EXECUTE format('SELECT l.kind, l.account_id, l.granted, l.state, l.others FROM %I($1, $2, $3, $4, $5) l',
                            CASE WHEN p_on_lookup THEN 'tally_lease_on_lookup' ELSE 'tally_lease' END)
             USING p_instance, p_user_ids, p_user_wants, p_token_ids, p_token_wants LOOP
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
    PERFORM tally_forget_lease_calls(p_instance, p_owed_from);
END;
$$;

-- Gives up call p_call_id of p_instance, whose answer never came: returns what it granted if it
-- committed (true), else marks its id given up so that it never grants (false); false as well
-- when the id was given up before, or the registration is gone (the reaping returned every
-- lease of it). Its waits are bounded: a call whose client is gone may wait for an account's
-- lock for long (PostgreSQL notices no lost client while it waits), and the upkeep that sends
-- give-ups also renews the registration; timed out, the give-up is sent again a second later.
CREATE FUNCTION tally_give_up_lease_call(p_instance text, p_call_id bigint, p_owed_from bigint)
RETURNS boolean
LANGUAGE plpgsql SET lock_timeout = '2s' AS $$
DECLARE
    c tally_lease_calls%ROWTYPE;
BEGIN
    -- The registration's shared lock (as leases take it): no reaping meanwhile.
    IF NOT tally_hold_registration(p_instance) THEN
        RETURN false;
    END IF;
    -- Waits for the call if it is still running (it stored its id first).
    INSERT INTO tally_lease_calls (instance_id, call_id, given_up) VALUES (p_instance, p_call_id, true)
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        PERFORM tally_forget_lease_calls(p_instance, p_owed_from);
        RETURN false;
    END IF;
    SELECT * INTO c FROM tally_lease_calls x WHERE x.instance_id = p_instance AND x.call_id = p_call_id FOR UPDATE;
    -- Kept, marked: a give-up sent again returns nothing, and the id stays taken.
    UPDATE tally_lease_calls x SET user_ids = '{}', user_amounts = '{}', token_ids = '{}', token_amounts = '{}',
                                   given_up = true
    WHERE x.instance_id = p_instance AND x.call_id = p_call_id;
    PERFORM tally_forget_lease_calls(p_instance, p_owed_from);
    IF c.given_up THEN
        RETURN false;
    END IF;
    PERFORM tally_return_leases(p_instance, c.user_ids, c.user_amounts, c.token_ids, c.token_amounts);
    RETURN cardinality(c.user_ids) + cardinality(c.token_ids) > 0;
END;
$$;
