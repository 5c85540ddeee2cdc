-- Leases (docs/enforcement.md): authorize decides in memory, PostgreSQL keeps the books.
--
-- Every running Tally instance registers in tally_instances and renews its row by heartbeat.
-- To authorize for an account it first *leases* a slice of the account's balance: the slice is
-- added to the account's `reserved` (so no other instance, and no later lease, can use it) and
-- recorded in user_leases / token_leases. Holds are then cut from the lease in memory and
-- journaled in group commits by tally_journal_holds, which moves each hold's amount from the
-- lease row into the holds table — `reserved` does not change, and no account row is locked on
-- the hot path. So, for every user and limited token, at every commit:
--
--     reserved = Σ open holds + Σ leases            (checked by `tally audit`)
--     quota − reserved ≥ 0                          (every lease and hold fitted when it was taken)
--
-- Settlement, release and expiry close holds exactly as before (reserved −= hold). Unused lease
-- units go back by tally_return_leases (idle leases, shutdown) or, for an instance that stopped
-- renewing, by tally_reap_instances — after reclaim_after_seconds more, the time a hold answered
-- from memory but not yet journaled could still be settled (the hold TTL in async mode, 0 in sync
-- mode, where nothing is answered before it is journaled).

CREATE TABLE tally_instances (
    id                    text PRIMARY KEY,
    started_at            timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz NOT NULL,
    reclaim_after_seconds integer NOT NULL CHECK (reclaim_after_seconds >= 0)
);

CREATE TABLE user_leases (
    instance_id text NOT NULL REFERENCES tally_instances ON DELETE CASCADE,
    user_id     bigint NOT NULL,
    amount      bigint NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (instance_id, user_id)
);
CREATE INDEX user_leases_user_idx ON user_leases (user_id);

CREATE TABLE token_leases (
    instance_id text NOT NULL REFERENCES tally_instances ON DELETE CASCADE,
    token_id    bigint NOT NULL,
    amount      bigint NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (instance_id, token_id)
);
CREATE INDEX token_leases_token_idx ON token_leases (token_id);

-- Hold ids are handed out in blocks of 1024 (one nextval a block), so an instance can answer a
-- hold id before the hold is journaled.
ALTER TABLE holds ALTER COLUMN id SET INCREMENT BY 1024;

-- The journal inserts holds in group commits; per-row foreign-key checks cost a third of it.
-- A hold is only ever cut from a lease, and leases are taken under the account's row lock, so
-- its user and token exist (users and keys are deleted softly).
ALTER TABLE holds DROP CONSTRAINT holds_user_id_fkey, DROP CONSTRAINT holds_token_id_fkey;

-- Replaced by leases and the journal.
DROP FUNCTION tally_authorize_batch(text[], bigint[], bigint[], bigint[], text[], text[], integer, boolean);

-- Leases more of each account's balance to p_instance: min(want, what is left), in id order
-- (users, then tokens — the order ingest, release and expiry lock in). Per account it returns
-- the units granted, a state — 'ok'; 'unknown' (no such user or token); for tokens also
-- 'unlimited' (nothing to lease: the key does not limit) and 'exhausted' (remain_quota <= 0) —
-- and what other instances hold leased of the account. When it grants less than wanted while
-- other instances hold some, it asks them to give it back ('lease-wanted:user:<id>' on
-- tally_changes, sent at commit), so units never stay stranded in an idle lease elsewhere.
-- Raises 'T0L01' when the instance's registration is gone (it was reaped): the caller must
-- forget its leases and register anew.
CREATE FUNCTION tally_lease(p_instance text, p_user_ids bigint[], p_user_wants bigint[],
                            p_token_ids bigint[], p_token_wants bigint[])
RETURNS TABLE (kind text, account_id bigint, granted bigint, state text, others bigint)
LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
    grants bigint[];
BEGIN
    PERFORM 1 FROM tally_instances i WHERE i.id = p_instance FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'instance % is not registered', p_instance USING ERRCODE = 'T0L01';
    END IF;

    PERFORM 1 FROM users x WHERE x.id = ANY (p_user_ids) ORDER BY x.id FOR NO KEY UPDATE;
    SELECT array_agg(x.id ORDER BY x.id), array_agg(LEAST(w.want, GREATEST(x.quota - x.reserved, 0)) ORDER BY x.id)
      INTO ids, grants
      FROM (SELECT u.id, sum(u.want) AS want FROM unnest(p_user_ids, p_user_wants) AS u(id, want) GROUP BY u.id) w
      JOIN users x ON x.id = w.id;
    UPDATE users x SET reserved = x.reserved + g.amount
      FROM unnest(ids, grants) AS g(id, amount) WHERE x.id = g.id AND g.amount > 0;
    INSERT INTO user_leases (instance_id, user_id, amount)
      SELECT p_instance, g.id, g.amount FROM unnest(ids, grants) AS g(id, amount) WHERE g.amount > 0
      ON CONFLICT (instance_id, user_id) DO UPDATE SET amount = user_leases.amount + EXCLUDED.amount;
    RETURN QUERY
      WITH w AS (SELECT a.id, sum(a.want) AS want FROM unnest(p_user_ids, p_user_wants) AS a(id, want) GROUP BY a.id),
      r AS (SELECT w.id, w.want, COALESCE(g.amount, 0) AS granted, g.id IS NOT NULL AS found,
                   (SELECT COALESCE(sum(l.amount), 0)::bigint FROM user_leases l
                    WHERE l.user_id = w.id AND l.instance_id <> p_instance) AS others
            FROM w LEFT JOIN unnest(ids, grants) AS g(id, amount) ON g.id = w.id)
      SELECT 'user', r.id, r.granted, CASE WHEN r.found THEN 'ok' ELSE 'unknown' END, r.others
      FROM r;
    PERFORM pg_notify('tally_changes', 'lease-wanted:user:' || w.id)
      FROM (SELECT a.id, sum(a.want) AS want FROM unnest(p_user_ids, p_user_wants) AS a(id, want) GROUP BY a.id) w
      LEFT JOIN unnest(ids, grants) AS g(id, amount) ON g.id = w.id
      WHERE COALESCE(g.amount, 0) < w.want
        AND EXISTS (SELECT 1 FROM user_leases l WHERE l.user_id = w.id AND l.instance_id <> p_instance AND l.amount > 0);

    PERFORM 1 FROM tokens x WHERE x.id = ANY (p_token_ids) ORDER BY x.id FOR NO KEY UPDATE;
    SELECT array_agg(x.id ORDER BY x.id),
           array_agg(CASE WHEN x.unlimited_quota OR x.remain_quota <= 0 THEN 0
                          ELSE LEAST(w.want, GREATEST(x.remain_quota - x.reserved, 0)) END ORDER BY x.id)
      INTO ids, grants
      FROM (SELECT t.id, sum(t.want) AS want FROM unnest(p_token_ids, p_token_wants) AS t(id, want) GROUP BY t.id) w
      JOIN tokens x ON x.id = w.id;
    UPDATE tokens x SET reserved = x.reserved + g.amount
      FROM unnest(ids, grants) AS g(id, amount) WHERE x.id = g.id AND g.amount > 0;
    INSERT INTO token_leases (instance_id, token_id, amount)
      SELECT p_instance, g.id, g.amount FROM unnest(ids, grants) AS g(id, amount) WHERE g.amount > 0
      ON CONFLICT (instance_id, token_id) DO UPDATE SET amount = token_leases.amount + EXCLUDED.amount;
    RETURN QUERY
      WITH w AS (SELECT a.id, sum(a.want) AS want FROM unnest(p_token_ids, p_token_wants) AS a(id, want) GROUP BY a.id),
      r AS (SELECT w.id, w.want, COALESCE(g.amount, 0) AS granted,
                   CASE WHEN x.id IS NULL THEN 'unknown' WHEN x.unlimited_quota THEN 'unlimited'
                        WHEN x.remain_quota <= 0 THEN 'exhausted' ELSE 'ok' END AS state,
                   (SELECT COALESCE(sum(l.amount), 0)::bigint FROM token_leases l
                    WHERE l.token_id = w.id AND l.instance_id <> p_instance) AS others
            FROM w LEFT JOIN tokens x ON x.id = w.id LEFT JOIN unnest(ids, grants) AS g(id, amount) ON g.id = w.id)
      SELECT 'token', r.id, r.granted, r.state, r.others
      FROM r;
    PERFORM pg_notify('tally_changes', 'lease-wanted:token:' || w.id)
      FROM (SELECT a.id, sum(a.want) AS want FROM unnest(p_token_ids, p_token_wants) AS a(id, want) GROUP BY a.id) w
      LEFT JOIN unnest(ids, grants) AS g(id, amount) ON g.id = w.id
      WHERE COALESCE(g.amount, 0) < w.want
        AND EXISTS (SELECT 1 FROM token_leases l WHERE l.token_id = w.id AND l.instance_id <> p_instance AND l.amount > 0);
END;
$$;

-- Gives unused lease units back to their accounts (reserved −= amount). Locks the accounts in
-- id order before the lease rows, as tally_lease does.
CREATE FUNCTION tally_return_leases(p_instance text, p_user_ids bigint[], p_user_amounts bigint[],
                                    p_token_ids bigint[], p_token_amounts bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM users x WHERE x.id = ANY (p_user_ids) ORDER BY x.id FOR NO KEY UPDATE;
    WITH r AS (UPDATE user_leases l SET amount = l.amount - g.amount
               FROM unnest(p_user_ids, p_user_amounts) AS g(id, amount)
               WHERE l.instance_id = p_instance AND l.user_id = g.id
               RETURNING l.user_id, g.amount)
    UPDATE users x SET reserved = x.reserved - r.amount FROM r WHERE x.id = r.user_id;
    DELETE FROM user_leases l WHERE l.instance_id = p_instance AND l.user_id = ANY (p_user_ids) AND l.amount = 0;

    PERFORM 1 FROM tokens x WHERE x.id = ANY (p_token_ids) ORDER BY x.id FOR NO KEY UPDATE;
    WITH r AS (UPDATE token_leases l SET amount = l.amount - g.amount
               FROM unnest(p_token_ids, p_token_amounts) AS g(id, amount)
               WHERE l.instance_id = p_instance AND l.token_id = g.id
               RETURNING l.token_id, g.amount)
    UPDATE tokens x SET reserved = x.reserved - r.amount FROM r WHERE x.id = r.token_id;
    DELETE FROM token_leases l WHERE l.instance_id = p_instance AND l.token_id = ANY (p_token_ids) AND l.amount = 0;
END;
$$;

-- Journals holds cut from p_instance's leases: inserts them (a request id journaled before is a
-- retry: nothing is inserted, and the stored hold is returned — the caller compares hold ids, so
-- journaling the same holds again after an unanswered commit is harmless) and takes their
-- amounts off the lease rows, so `reserved` stays as it is. If the instance was reaped meanwhile
-- (it stopped renewing for longer than its grace), its leases are gone and the holds are added
-- to `reserved` directly, so the books still balance.
CREATE FUNCTION tally_journal_holds(p_instance text, p_ids bigint[], p_request_ids text[], p_user_ids bigint[],
                                    p_token_ids bigint[], p_amounts bigint[], p_models text[], p_tids text[],
                                    p_token_leased boolean[], p_ttl_seconds integer)
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
    SELECT array_agg(i.id), array_agg(i.user_id), array_agg(i.token_id), array_agg(i.amount), array_agg(i.token_reserved)
      INTO new_ids, new_user_ids, new_token_ids, new_amounts, new_token_leased
      FROM inserted i;

    IF registered THEN
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

-- Returns the leases of instances that stopped renewing (expired more than their grace ago) —
-- or of p_instance alone, whatever its expiry (an instance retiring) — to their accounts and
-- deletes the registrations. Claimed with SKIP LOCKED, so every instance may run it. Returns how
-- many instances it reaped.
CREATE FUNCTION tally_reap_instances(p_instance text DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    dead text[];
BEGIN
    SELECT array_agg(i.id) INTO dead FROM (
        SELECT d.id FROM tally_instances d
        WHERE CASE WHEN p_instance IS NULL THEN d.expires_at + make_interval(secs => d.reclaim_after_seconds) < now()
                   ELSE d.id = p_instance END
        ORDER BY d.id FOR UPDATE SKIP LOCKED) i;
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
