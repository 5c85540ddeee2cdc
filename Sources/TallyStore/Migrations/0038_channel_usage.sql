-- A channel's used_quota counts what its requests cost (found by a review of the money paths).
--
-- Only the import wrote channels.used_quota (new-api's figure), so after it the System API's
-- /api/channel/ showed the same number for good, and a channel made in Tally showed 0, while
-- new-api adds each request's cost to its channel. A batch now appends what its lines cost per
-- channel (one row per batch and channel, beside its pending usage: no channel row is locked
-- by a batch, as no account row is), and the roll-up adds those rows to channels.used_quota,
-- deleting them in the same transaction (exactly once, as every fold). Readers add what is
-- still pending, so the figure is exact at any instant. Lines without a channel, or naming one
-- Tally does not know, count for no channel. Requests before this migration are not counted
-- again: the import's figure already holds those of new-api, and Tally's own are in the
-- request rows and exports.
--
-- On Citus the table stays on the coordinator, like `holds`, which the same batch updates;
-- channels is a reference table, written here by one statement per channel.
CREATE TABLE pending_channel_usage (
    batch_id   bigint NOT NULL,
    channel_id bigint NOT NULL,
    quota      bigint NOT NULL
);

-- Adds the pending rows to their channels; one settler at a time (an advisory lock: the rows
-- are few, and two folds would only wait on the same channel rows). p_wait: wait for the one
-- folding now (the end of a bulk `tally ingest`, tests) instead of leaving it the work.
-- Returns the channels changed.
CREATE FUNCTION tally_fold_channel_usage(p_wait boolean) RETURNS integer
LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    channel record;
    changed integer := 0;
BEGIN
    IF p_wait THEN
        PERFORM pg_advisory_xact_lock(2047934484);  -- 0x7A110014
    ELSIF NOT pg_try_advisory_xact_lock(2047934484) THEN
        RETURN 0;
    END IF;
    FOR channel IN
        WITH gone AS (DELETE FROM pending_channel_usage RETURNING channel_id, quota)
        SELECT g.channel_id AS id, sum(g.quota)::bigint AS quota FROM gone g GROUP BY g.channel_id ORDER BY g.channel_id
    LOOP
        UPDATE channels SET used_quota = used_quota + channel.quota WHERE id = channel.id;
        IF FOUND THEN changed := changed + 1; END IF;
    END LOOP;
    RETURN changed;
END $$;
