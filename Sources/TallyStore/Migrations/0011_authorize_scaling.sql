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
