-- Lease fencing: a journal batch of a reaped registration is refused.
--
-- Until now tally_journal_holds added the new holds of an instance whose registration was gone
-- to `reserved` without looking at what was left (0009, 0011). The reaper returns a registration's
-- leases only after its expiry plus a grace that covers a batch in flight; but an instance that
-- stood still longer (SIGSTOP, a VM pause) with holds queued journaled them after the reaping,
-- while the lease units they were cut from had gone back and been leased again elsewhere:
-- `quota − reserved` fell below zero beyond any overrun (the simulation, seed 332).
--
-- Now the batch raises 'not registered' (T0L01, as tally_lease does) and stores nothing. The
-- instance drops its leases and the refused holds, re-registers and answers those holds as
-- failures (sync mode: they were never answered; async mode: docs/enforcement.md). The holds
-- are only ever taken off the instance's own lease rows, which the registration's share lock
-- keeps from the reaper until commit.
CREATE OR REPLACE FUNCTION tally_journal_holds(p_instance text, p_ids bigint[], p_request_ids text[],
                                               p_user_ids bigint[], p_token_ids bigint[], p_amounts bigint[],
                                               p_models text[], p_tids text[], p_token_leased boolean[],
                                               p_ttl_seconds integer)
RETURNS TABLE (request_id text, hold_id bigint, held bigint, hold_status text)
LANGUAGE plpgsql AS $$
DECLARE
    new_ids bigint[];
    new_user_ids bigint[];
    new_token_ids bigint[];
    new_amounts bigint[];
    new_token_leased boolean[];
BEGIN
    -- Held until commit, so the reaper cannot return the leases while the batch takes its holds
    -- off them.
    PERFORM 1 FROM tally_instances i WHERE i.id = p_instance FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'instance % is not registered', p_instance USING ERRCODE = 'T0L01';
    END IF;

    WITH inserted AS (
        INSERT INTO holds (id, request_id, user_id, token_id, model, amount, token_reserved, tid, expires_at)
        SELECT r.id, r.request_id, r.user_id, r.token_id, r.model, r.amount, r.token_leased, r.tid,
               now() + make_interval(secs => p_ttl_seconds)
        FROM unnest(p_ids, p_request_ids, p_user_ids, p_token_ids, p_models, p_amounts, p_token_leased, p_tids)
             AS r(id, request_id, user_id, token_id, model, amount, token_leased, tid)
        ORDER BY r.request_id
        ON CONFLICT ON CONSTRAINT holds_request_id_key DO NOTHING
        RETURNING holds.id, holds.user_id, holds.token_id, holds.amount, holds.token_reserved)
    SELECT array_agg(i.id), array_agg(i.user_id), array_agg(i.token_id), array_agg(i.amount),
           array_agg(i.token_reserved)
      INTO new_ids, new_user_ids, new_token_ids, new_amounts, new_token_leased
      FROM inserted i;

    PERFORM 1 FROM user_leases l WHERE l.instance_id = p_instance AND l.user_id = ANY (new_user_ids)
        ORDER BY l.user_id FOR NO KEY UPDATE;
    PERFORM 1 FROM token_leases l
        WHERE l.instance_id = p_instance
          AND l.token_id IN (SELECT h.token_id FROM unnest(new_token_ids, new_token_leased) AS h(token_id, leased)
                             WHERE h.leased)
        ORDER BY l.token_id FOR NO KEY UPDATE;
    UPDATE user_leases l SET amount = l.amount - s.amount
      FROM (SELECT h.user_id, sum(h.amount) AS amount FROM unnest(new_user_ids, new_amounts) AS h(user_id, amount)
            GROUP BY h.user_id) s
      WHERE l.instance_id = p_instance AND l.user_id = s.user_id;
    UPDATE token_leases l SET amount = l.amount - s.amount
      FROM (SELECT h.token_id, sum(h.amount) AS amount
            FROM unnest(new_token_ids, new_amounts, new_token_leased) AS h(token_id, amount, leased)
            WHERE h.leased GROUP BY h.token_id) s
      WHERE l.instance_id = p_instance AND l.token_id = s.token_id;

    RETURN QUERY
      SELECT r.request_id, h.id, h.amount, h.status
      FROM unnest(p_request_ids) WITH ORDINALITY AS r(request_id, ord)
      JOIN holds h ON h.request_id = r.request_id
      ORDER BY r.ord;
END;
$$;
