-- A lighter journal and lease (issue 15): tally_journal_holds and tally_lease cost less per call.
--
-- Under pgbench (docs/performance.md, 2026-12-05) a one-hold journal call cost three bare
-- UPDATEs, and most of it was planning: PL/pgSQL re-plans a statement with array parameters on
-- every call when it judges a custom plan cheaper, and these statements' plans do not depend on
-- the arrays' contents (they are unnested, and every lookup goes by primary key or index). Both
-- functions now keep one generic plan per statement (`plan_cache_mode = force_generic_plan`):
-- 1.2-2x the calls per second with one hold or one account, the same with 32 holds.
-- What else the journal did that it needs not:
-- - It re-read every hold it had just inserted, by request id, to answer it: now only when some
--   request id was journaled before (a retry that reached another instance, or a batch written
--   again after an unanswered commit); otherwise the answer is the input itself.
-- - The token leases are not touched when no hold of the batch draws on a limited key.
-- - The expiry was computed per row (now() is not a constant to the planner): now once.
-- - The insertion order (request ids, so two batches sharing a request id take its unique
--   index entry in the same order) followed the database's collation: now bytes.
-- It still refuses a batch of a reaped registration (T0L01, 0016), holding the registration's
-- row FOR SHARE to commit so the reaper waits; locks the lease rows it changes in account order
-- (users, then tokens, each by id, as tally_lease and the hand-back do), each updated once by
-- the sum of its holds; and answers in the order of its input.
CREATE OR REPLACE FUNCTION tally_journal_holds(p_instance text, p_ids bigint[], p_request_ids text[],
                                               p_user_ids bigint[], p_token_ids bigint[], p_amounts bigint[],
                                               p_models text[], p_tids text[], p_token_leased boolean[],
                                               p_ttl_seconds integer)
RETURNS TABLE (request_id text, hold_id bigint, held bigint, hold_status text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    expires timestamptz := now() + make_interval(secs => p_ttl_seconds);
    new_user_ids bigint[];
    new_token_ids bigint[];
    new_amounts bigint[];
    new_token_leased boolean[];
    inserted_count integer;
BEGIN
    PERFORM 1 FROM tally_instances i WHERE i.id = p_instance FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'instance % is not registered', p_instance USING ERRCODE = 'T0L01';
    END IF;

    WITH inserted AS (
        INSERT INTO holds (id, request_id, user_id, token_id, model, amount, token_reserved, tid, expires_at)
        SELECT r.id, r.request_id, r.user_id, r.token_id, r.model, r.amount, r.token_leased, r.tid, expires
        FROM unnest(p_ids, p_request_ids, p_user_ids, p_token_ids, p_models, p_amounts, p_token_leased, p_tids)
             AS r(id, request_id, user_id, token_id, model, amount, token_leased, tid)
        ORDER BY r.request_id COLLATE "C"
        ON CONFLICT ON CONSTRAINT holds_request_id_key DO NOTHING
        RETURNING holds.user_id, holds.token_id, holds.amount, holds.token_reserved)
    SELECT array_agg(i.user_id), array_agg(i.token_id), array_agg(i.amount), array_agg(i.token_reserved), count(*)
      INTO new_user_ids, new_token_ids, new_amounts, new_token_leased, inserted_count
      FROM inserted i;

    PERFORM 1 FROM user_leases l WHERE l.instance_id = p_instance AND l.user_id = ANY (new_user_ids)
        ORDER BY l.user_id FOR NO KEY UPDATE;
    UPDATE user_leases l SET amount = l.amount - s.amount
      FROM (SELECT h.user_id, sum(h.amount) AS amount FROM unnest(new_user_ids, new_amounts) AS h(user_id, amount)
            GROUP BY h.user_id) s
      WHERE l.instance_id = p_instance AND l.user_id = s.user_id;

    IF true = ANY (new_token_leased) THEN
        PERFORM 1 FROM token_leases l
            WHERE l.instance_id = p_instance
              AND l.token_id IN (SELECT h.token_id FROM unnest(new_token_ids, new_token_leased) AS h(token_id, leased)
                                 WHERE h.leased)
            ORDER BY l.token_id FOR NO KEY UPDATE;
        UPDATE token_leases l SET amount = l.amount - s.amount
          FROM (SELECT h.token_id, sum(h.amount) AS amount
                FROM unnest(new_token_ids, new_amounts, new_token_leased) AS h(token_id, amount, leased)
                WHERE h.leased GROUP BY h.token_id) s
          WHERE l.instance_id = p_instance AND l.token_id = s.token_id;
    END IF;

    IF inserted_count = cardinality(p_ids) THEN
        -- Every hold is new: each is stored as given.
        RETURN QUERY SELECT r.request_id, r.id, r.amount, 'held'::text
                     FROM unnest(p_request_ids, p_ids, p_amounts) AS r(request_id, id, amount);
    ELSE
        RETURN QUERY
          SELECT r.request_id, h.id, h.amount, h.status
          FROM unnest(p_request_ids) WITH ORDINALITY AS r(request_id, ord)
          JOIN holds h ON h.request_id = r.request_id
          ORDER BY r.ord;
    END IF;
END;
$$;

-- tally_lease (0015) as it is, with one generic plan per statement (above); tally_lease_on_lookup
-- calls it, so a cold key's lookup gains too.
ALTER FUNCTION tally_lease(text, bigint[], bigint[], bigint[], bigint[]) SET plan_cache_mode = force_generic_plan;
