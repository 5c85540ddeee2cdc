-- Authorize that grows with the machine (issue 15): cold keys leased in one round trip, and
-- renewals that never wait for the journal.

-- Cold keys in one round trip (docs/enforcement.md, "Leases"): authorize reads the keys that are
-- not in its cache — all those asked for meanwhile, in one statement — and leases a first slice
-- of each key's user and token in the same transaction, instead of a lookup and then a refill.
-- The lease is tally_lease's own (same grant, same locks in the same order, same lease-wanted
-- notification); this only decides whether to take one: for keys that may be used (enabled, not
-- deleted, not expired, their owner not suspended; the caller passes only those), and only
-- while the instance is registered — a lookup must not fail because the registration was
-- reaped, so then it leases nothing and the hold takes the ordinary refill path.
CREATE FUNCTION tally_lease_on_lookup(p_instance text, p_user_ids bigint[], p_user_wants bigint[],
                                      p_token_ids bigint[], p_token_wants bigint[])
RETURNS TABLE (kind text, account_id bigint, granted bigint, state text, others bigint)
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(p_user_ids) = 0 AND cardinality(p_token_ids) = 0 THEN
        RETURN;
    END IF;
    -- Held until commit, so the reaper cannot take the registration away before tally_lease
    -- takes the same lock.
    PERFORM 1 FROM tally_instances i WHERE i.id = p_instance FOR SHARE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT l.kind, l.account_id, l.granted, l.state, l.others
                 FROM tally_lease(p_instance, p_user_ids, p_user_wants, p_token_ids, p_token_wants) l;
END;
$$;

-- Renewals in a row of their own. A renewal used to UPDATE the instance's row in
-- tally_instances, which every journal batch and lease locks FOR SHARE (to keep the reaper
-- away while it runs). Share lockers do not queue behind a waiting writer, so under load the
-- renewal starved — for hundreds of milliseconds measured, and without bound in principle,
-- until the registration lapsed. The expiry now lives in tally_instance_renewals, which only
-- renewals and the reaper lock.
CREATE TABLE tally_instance_renewals (
    instance_id text PRIMARY KEY REFERENCES tally_instances ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL
);
INSERT INTO tally_instance_renewals (instance_id, expires_at) SELECT id, expires_at FROM tally_instances;
ALTER TABLE tally_instances DROP COLUMN expires_at;

-- As in 0009, with the expiry read from tally_instance_renewals. The renewal row is locked
-- with the instance's, so a renewal and a reaping of the same instance are serialized: a
-- renewal that commits first keeps the instance (the expiry is checked again on the locked
-- row); one that comes after finds the instance gone and registers anew.
CREATE OR REPLACE FUNCTION tally_reap_instances(p_instance text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    dead text[];
BEGIN
    SELECT array_agg(i.id) INTO dead FROM (
        SELECT d.id FROM tally_instances d JOIN tally_instance_renewals r ON r.instance_id = d.id
        WHERE CASE WHEN p_instance IS NULL THEN r.expires_at + make_interval(secs => d.reclaim_after_seconds) < now()
                   ELSE d.id = p_instance END
        ORDER BY d.id FOR UPDATE OF d, r SKIP LOCKED) i;
    IF dead IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM users x WHERE x.id IN (SELECT l.user_id FROM user_leases l WHERE l.instance_id = ANY (dead))
        ORDER BY x.id FOR NO KEY UPDATE;
    UPDATE users x SET reserved = x.reserved - s.amount
      FROM (SELECT l.user_id, sum(l.amount) AS amount FROM user_leases l WHERE l.instance_id = ANY (dead)
            GROUP BY l.user_id) s
      WHERE x.id = s.user_id;
    PERFORM 1 FROM tokens x WHERE x.id IN (SELECT l.token_id FROM token_leases l WHERE l.instance_id = ANY (dead))
        ORDER BY x.id FOR NO KEY UPDATE;
    UPDATE tokens x SET reserved = x.reserved - s.amount
      FROM (SELECT l.token_id, sum(l.amount) AS amount FROM token_leases l WHERE l.instance_id = ANY (dead)
            GROUP BY l.token_id) s
      WHERE x.id = s.token_id;
    DELETE FROM tally_instances i WHERE i.id = ANY (dead);
    RETURN cardinality(dead);
END;
$$;

-- Lease rows locked in account order. Several journal batches and refills are in flight at once
-- (pipelined on separate connections), and tally_lease writes an instance's lease rows in id
-- order (users, then tokens), while the journal and the hand-back updated them in whatever order
-- the plan gave: a journal batch and a refill sharing two accounts could each wait for the other
-- (deadlocks seen under ops/bench authorize, 64 clients on 10k accounts). Both now lock the rows
-- they change first, users' then tokens', each in id order. Otherwise as in 0009.
CREATE OR REPLACE FUNCTION tally_journal_holds(p_instance text, p_ids bigint[], p_request_ids text[],
                                               p_user_ids bigint[], p_token_ids bigint[], p_amounts bigint[],
                                               p_models text[], p_tids text[], p_token_leased boolean[],
                                               p_ttl_seconds integer)
RETURNS TABLE (request_id text, hold_id bigint, held bigint, hold_status text)
LANGUAGE plpgsql AS $$
DECLARE
    registered boolean;
    new_ids bigint[];
    new_user_ids bigint[];
    new_token_ids bigint[];
    new_amounts bigint[];
    new_token_leased boolean[];
BEGIN
    PERFORM 1 FROM tally_instances i WHERE i.id = p_instance FOR SHARE;
    registered := FOUND;

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

    IF registered THEN
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
    ELSE
        PERFORM 1 FROM users x WHERE x.id = ANY (new_user_ids) ORDER BY x.id FOR NO KEY UPDATE;
        UPDATE users x SET reserved = x.reserved + s.amount
          FROM (SELECT h.user_id, sum(h.amount) AS amount FROM unnest(new_user_ids, new_amounts) AS h(user_id, amount)
                GROUP BY h.user_id) s
          WHERE x.id = s.user_id;
        PERFORM 1 FROM tokens x WHERE x.id = ANY (new_token_ids) ORDER BY x.id FOR NO KEY UPDATE;
        UPDATE tokens x SET reserved = x.reserved + s.amount
          FROM (SELECT h.token_id, sum(h.amount) AS amount
                FROM unnest(new_token_ids, new_amounts, new_token_leased) AS h(token_id, amount, leased)
                WHERE h.leased GROUP BY h.token_id) s
          WHERE x.id = s.token_id;
    END IF;

    RETURN QUERY
      SELECT r.request_id, h.id, h.amount, h.status
      FROM unnest(p_request_ids) WITH ORDINALITY AS r(request_id, ord)
      JOIN holds h ON h.request_id = r.request_id
      ORDER BY r.ord;
END;
$$;

CREATE OR REPLACE FUNCTION tally_return_leases(p_instance text, p_user_ids bigint[], p_user_amounts bigint[],
                                    p_token_ids bigint[], p_token_amounts bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM users x WHERE x.id = ANY (p_user_ids) ORDER BY x.id FOR NO KEY UPDATE;
    PERFORM 1 FROM user_leases l WHERE l.instance_id = p_instance AND l.user_id = ANY (p_user_ids)
        ORDER BY l.user_id FOR NO KEY UPDATE;
    WITH r AS (UPDATE user_leases l SET amount = l.amount - g.amount
               FROM unnest(p_user_ids, p_user_amounts) AS g(id, amount)
               WHERE l.instance_id = p_instance AND l.user_id = g.id
               RETURNING l.user_id, g.amount)
    UPDATE users x SET reserved = x.reserved - r.amount FROM r WHERE x.id = r.user_id;
    DELETE FROM user_leases l WHERE l.instance_id = p_instance AND l.user_id = ANY (p_user_ids) AND l.amount = 0;

    PERFORM 1 FROM tokens x WHERE x.id = ANY (p_token_ids) ORDER BY x.id FOR NO KEY UPDATE;
    PERFORM 1 FROM token_leases l WHERE l.instance_id = p_instance AND l.token_id = ANY (p_token_ids)
        ORDER BY l.token_id FOR NO KEY UPDATE;
    WITH r AS (UPDATE token_leases l SET amount = l.amount - g.amount
               FROM unnest(p_token_ids, p_token_amounts) AS g(id, amount)
               WHERE l.instance_id = p_instance AND l.token_id = g.id
               RETURNING l.token_id, g.amount)
    UPDATE tokens x SET reserved = x.reserved - r.amount FROM r WHERE x.id = r.token_id;
    DELETE FROM token_leases l WHERE l.instance_id = p_instance AND l.token_id = ANY (p_token_ids) AND l.amount = 0;
END;
$$;
