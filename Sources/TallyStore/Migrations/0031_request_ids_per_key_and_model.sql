-- A request id names one request: of one account, through one key, for one model (found by a
-- review of the authorize path).
--
-- A retry was recognised by its user and request id alone. The same request id authorized
-- again through another key of the user was answered with the first key's hold, so the second
-- key's own limit was never checked (and its log line then charged that key past its
-- remain_quota); authorized again for another model, it was answered with the first model's
-- hold, so a cheap model's hold covered an expensive model's request, which overdrew the
-- balance by the difference. The journal now also answers each stored hold's key and model,
-- and the lease book treats a request id stored for another account, key or model as another
-- request's (409 conflict), as it did for another account. The return type changes, so the
-- function is dropped and created again (its body is 0026's).

DROP FUNCTION tally_journal_holds(text, bigint[], text[], bigint[], bigint[], bigint[], text[], text[], boolean[], integer);

CREATE FUNCTION tally_journal_holds(p_instance text, p_ids bigint[], p_request_ids text[],
                                    p_user_ids bigint[], p_token_ids bigint[], p_amounts bigint[],
                                    p_models text[], p_tids text[], p_token_leased boolean[],
                                    p_ttl_seconds integer)
RETURNS TABLE (request_id text, hold_id bigint, held bigint, hold_status text, hold_user_id bigint,
              hold_token_id bigint, hold_model text)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    expires timestamptz := now() + make_interval(secs => p_ttl_seconds);
    new_user_ids bigint[];
    new_token_ids bigint[];
    new_amounts bigint[];
    new_token_leased boolean[];
    inserted_count integer;
    on_citus boolean := tally_on_citus();
    is_token boolean;
    account bigint;
    units bigint;
BEGIN
    IF NOT tally_hold_registration(p_instance) THEN
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

    -- Each lease row by its key, in the order leases and hand-backs lock accounts: users, then
    -- tokens, each by id; on Citus owner by owner, a user and then its tokens (0022). The UPDATE
    -- takes the row lock.
    FOR is_token, account, units IN
        SELECT a.is_token, a.id, sum(a.amount)::bigint
        FROM (SELECT h.user_id AS owner, false AS is_token, h.user_id AS id, h.amount
              FROM unnest(new_user_ids, new_amounts) AS h(user_id, amount)
              UNION ALL
              SELECT h.user_id, true, h.token_id, h.amount
              FROM unnest(new_user_ids, new_token_ids, new_amounts, new_token_leased) AS h(user_id, token_id, amount, leased)
              WHERE h.leased) a
        GROUP BY a.owner, a.is_token, a.id
        ORDER BY CASE WHEN on_citus THEN a.owner END, a.is_token, a.id
    LOOP
        IF is_token THEN
            UPDATE token_leases l SET amount = l.amount - units WHERE l.instance_id = p_instance AND l.token_id = account;
        ELSE
            UPDATE user_leases l SET amount = l.amount - units WHERE l.instance_id = p_instance AND l.user_id = account;
        END IF;
    END LOOP;

    IF inserted_count = cardinality(p_ids) THEN
        -- Every hold is new: each is stored as given.
        RETURN QUERY SELECT r.request_id, r.id, r.amount, 'held'::text, r.user_id, r.token_id, r.model
                     FROM unnest(p_request_ids, p_ids, p_amounts, p_user_ids, p_token_ids, p_models)
                          AS r(request_id, id, amount, user_id, token_id, model);
    ELSE
        RETURN QUERY
          SELECT r.request_id, h.id, h.amount, h.status, h.user_id, h.token_id, h.model
          FROM unnest(p_request_ids) WITH ORDINALITY AS r(request_id, ord)
          CROSS JOIN LATERAL (SELECT h.id, h.amount, h.status, h.user_id, h.token_id, h.model FROM holds h
                              WHERE h.request_id = r.request_id OFFSET 0) h
          ORDER BY r.ord;
    END IF;
END;
$$;
