-- Two plans that the statistics of the moment could lead astray (issue 15), found by reading the
-- custom and generic plans of every statement that runs per request, per batch or periodically.
--
-- tally_lease_at_once keeps one generic plan per statement for the life of a connection (0017)
-- and reaches each account's pending charges through LATERAL subqueries (0021). pending_charges
-- is a queue: the fold drains it every 100 ms and autovacuum then truncates it to nothing, so a
-- connection that made its plans at such a moment (no pages, no rows: known empty) scanned the
-- whole queue in every lateral until the next vacuum changed the table's statistics. Measured:
-- one lease of 3 users and 3 keys with 50,000 charges pending, 9 sequential scans and 450,000
-- rows read (23 ms), against 1 ms through the index. No statement of the function means to read
-- a whole table, so it runs with sequential scans disabled: every table it reads is reached
-- through an index, whatever the statistics said when its plans were made.
ALTER FUNCTION tally_lease_at_once(text, bigint[], bigint[], bigint[], bigint[]) SET enable_seqscan = off;

-- tally_close_holds_at_once (expiry every second, every release; 0005) asked for the holds it
-- closes as `id = ANY (ids) AND status = 'held'`, which holds_open_idx (expires_at WHERE status =
-- 'held') answers too, by walking all of it. On statistics taken while few holds were open the
-- planner preferred that walk to the primary key, custom plan or generic: 20,000 open holds,
-- 20,000 rows read to close one (5 ms a release; 445 ms to expire 5,000 instead of 87). A hold is
-- open while it has no closed_at (every close sets both), and asked that way no partial index
-- applies: each hold is found by its key. Sequential scans are disabled for the same reason as
-- above (the users' and keys' updates, too, go by key).
UPDATE holds SET closed_at = now() WHERE status <> 'held' AND closed_at IS NULL;

CREATE OR REPLACE FUNCTION tally_close_holds_at_once(p_hold_ids bigint[], p_status text)
RETURNS TABLE (request_id text, amount bigint)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    closed_request_ids text[];
    closed_user_ids bigint[];
    closed_token_ids bigint[];
    closed_amounts bigint[];
    closed_token_reserved boolean[];
BEGIN
    WITH closed AS (
        UPDATE holds h SET status = p_status, closed_at = now()
        WHERE h.id IN (SELECT c.id FROM holds c WHERE c.id = ANY (p_hold_ids) AND c.closed_at IS NULL
                       FOR UPDATE SKIP LOCKED)
        RETURNING h.request_id, h.user_id, h.token_id, h.amount, h.token_reserved)
    SELECT array_agg(c.request_id), array_agg(c.user_id), array_agg(c.token_id), array_agg(c.amount),
           array_agg(c.token_reserved)
      INTO closed_request_ids, closed_user_ids, closed_token_ids, closed_amounts, closed_token_reserved
      FROM closed c;
    IF closed_request_ids IS NULL THEN
        RETURN;
    END IF;

    PERFORM 1 FROM users x WHERE x.id = ANY (closed_user_ids) ORDER BY x.id FOR NO KEY UPDATE;
    UPDATE users x SET reserved = x.reserved - s.amount
    FROM (SELECT c.user_id, sum(c.amount) AS amount FROM unnest(closed_user_ids, closed_amounts) AS c(user_id, amount)
          GROUP BY c.user_id) s
    WHERE x.id = s.user_id;
    PERFORM 1 FROM tokens x
        WHERE x.id IN (SELECT c.token_id FROM unnest(closed_token_ids, closed_token_reserved) AS c(token_id, token_reserved)
                       WHERE c.token_reserved)
        ORDER BY x.id FOR NO KEY UPDATE;
    UPDATE tokens x SET reserved = x.reserved - s.amount
    FROM (SELECT c.token_id, sum(c.amount) AS amount
          FROM unnest(closed_token_ids, closed_amounts, closed_token_reserved) AS c(token_id, amount, token_reserved)
          WHERE c.token_reserved GROUP BY c.token_id) s
    WHERE x.id = s.token_id;

    RETURN QUERY SELECT c.request_id, c.amount FROM unnest(closed_request_ids, closed_amounts) AS c(request_id, amount);
END;
$$;

-- On Citus (0022), where holds stay on the coordinator, the same statement, asked the same way.
CREATE OR REPLACE FUNCTION tally_close_holds(p_hold_ids bigint[], p_status text)
RETURNS TABLE (request_id text, amount bigint)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
    closed record;
BEGIN
    IF NOT tally_on_citus() THEN
        RETURN QUERY SELECT * FROM tally_close_holds_at_once(p_hold_ids, p_status);
        RETURN;
    END IF;
    WITH c AS (
        UPDATE holds h SET status = p_status, closed_at = now()
        WHERE h.id IN (SELECT o.id FROM holds o WHERE o.id = ANY (p_hold_ids) AND o.closed_at IS NULL
                       FOR UPDATE SKIP LOCKED)
        RETURNING h.request_id, h.user_id, h.token_id, h.amount, h.token_reserved)
    SELECT array_agg(c.request_id) AS request_ids, array_agg(c.amount) AS amounts, array_agg(c.user_id) AS user_ids,
           coalesce(array_agg(c.token_id) FILTER (WHERE c.token_reserved), '{}') AS token_ids,
           coalesce(array_agg(c.amount) FILTER (WHERE c.token_reserved), '{}') AS token_amounts
      INTO closed FROM c;
    IF closed.request_ids IS NULL THEN
        RETURN;
    END IF;
    PERFORM tally_unreserve_each(closed.user_ids, closed.amounts, closed.token_ids, closed.token_amounts);
    RETURN QUERY SELECT c.request_id, c.amount FROM unnest(closed.request_ids, closed.amounts) AS c(request_id, amount);
END;
$$;
