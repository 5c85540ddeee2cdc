-- The calls of instances that predate 0032 and 0033, for a rolling deploy (ops/deploy/README.md:
-- one host at a time, and the first new instance migrates on start while the old ones still run).
--
-- 0032 and 0033 replaced tally_settle(integer, integer) and the five-argument
-- tally_return_leases: until each old instance was restarted, its balance fold failed at every
-- tick and every lease it gave back failed and was dropped, its units leased to no one until that
-- instance stopped. Both signatures exist again, as the old instances used them; from here on a
-- migration that changes what a running instance calls keeps the old form beside the new one
-- (ops/deploy/README.md, "Schema changes"), and MigrationTests.previousCallersStillAnswer calls
-- the old forms.

-- The fold as before 0032: from the front of the queue (the new pick goes round it).
-- (With the settings of 0018 and 0023, as every tally_settle has.)
CREATE FUNCTION tally_settle(p_shards integer, p_limit integer) RETURNS integer
LANGUAGE sql SET plan_cache_mode = force_custom_plan SET jit = off
AS $$ SELECT s.folded FROM tally_settle(p_shards, p_limit, 0) s $$;

-- A return as before 0033: applied as sent, without an id (an old instance drops a failed one).
CREATE FUNCTION tally_return_leases(p_instance text, p_user_ids bigint[], p_user_amounts bigint[],
                                    p_token_ids bigint[], p_token_amounts bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
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
