-- The fold as instances that predate 0032 call it, for a rolling deploy (ops/deploy/README.md:
-- one host at a time, and the first new instance migrates on start while the old ones still run).
--
-- 0032 replaced tally_settle(integer, integer): until each old instance was restarted, its balance
-- fold failed at every tick. It exists again, as the old instances used it (0034 restored the
-- five-argument tally_return_leases that 0033 replaced); from here on a migration that changes
-- what a running instance calls keeps the old form beside the new one (ops/deploy/README.md,
-- "Schema changes"), and MigrationTests.previousCallersStillAnswer calls the old forms.

-- From the front of the queue, as before 0032 (the new pick goes round it); with the settings of
-- 0018 and 0023, as every tally_settle has.
CREATE FUNCTION tally_settle(p_shards integer, p_limit integer) RETURNS integer
LANGUAGE sql SET plan_cache_mode = force_custom_plan SET jit = off
AS $$ SELECT s.folded FROM tally_settle(p_shards, p_limit, 0) s $$;
