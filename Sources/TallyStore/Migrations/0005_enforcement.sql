-- Enforcement (DESIGN §5): authorize holds reserve quota, settlement / release / expiry return it.
--
-- `reserved` is the sum of the amounts of the account's open holds (status 'held'); what a new
-- hold may take is `quota - reserved` (user) and `remain_quota - reserved` (limited token).
-- PostgreSQL is the arbiter: holds are reserved in batches by `tally_authorize_batch`, which
-- locks the batch's users and tokens in id order and decides every request in order, so no
-- interleaving of authorizations, releases, settlements and top-ups — from any number of Tally
-- instances — can reserve more than an account has. `tally audit` checks reserved = Σ open holds.

ALTER TABLE users ADD COLUMN reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0);
ALTER TABLE tokens ADD COLUMN reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0);

-- token_reserved: the hold also reserved its amount from the token (false for unlimited keys).
ALTER TABLE holds ADD COLUMN token_reserved boolean NOT NULL DEFAULT false;
ALTER TABLE holds ADD COLUMN tid text;
-- Closed holds are deleted after a day by the sweeper; this finds them.
CREATE INDEX holds_closed_idx ON holds (closed_at) WHERE status <> 'held';

-- Requests per minute per user × model for the group's members (NULL = no limit).
ALTER TABLE groups ADD COLUMN model_rpm_limit integer CHECK (model_rpm_limit IS NULL OR model_rpm_limit > 0);

-- Reserves a batch of holds. Requests are decided in array order: a request is held when its
-- amount fits both what is left of its user (quota - reserved) and, for a limited token, of its
-- token; each held request lowers what is left for the next ones. Outcomes:
--   held          a new hold; hold_id and held are set
--   duplicate     a hold with this request_id exists already (an authorize retry): its id,
--                 amount and status are returned and nothing more is reserved
--   insufficient  the user or the token cannot cover the amount
--   exhausted     the limited token has no quota left at all (answered as an invalid key)
--   unknown       the user or token does not exist (deleted meanwhile)
-- p_durable false commits the batch without waiting for the WAL flush (synchronous_commit off
-- for this transaction only): a crash of PostgreSQL itself may then forget the last few
-- hundred milliseconds of holds — reservations only; the log lines still charge in full.
CREATE FUNCTION tally_authorize_batch(p_request_ids text[], p_user_ids bigint[], p_token_ids bigint[],
                                      p_amounts bigint[], p_models text[], p_tids text[],
                                      p_ttl_seconds integer, p_durable boolean)
RETURNS TABLE (request_id text, hold_id bigint, outcome text, held bigint, hold_status text)
LANGUAGE plpgsql AS $$
DECLARE
    n integer := cardinality(p_request_ids);
    user_ids bigint[];
    user_left bigint[];
    token_ids bigint[];
    token_left bigint[];
    token_remain bigint[];
    token_unlimited boolean[];
    outcomes text[] := array_fill('unknown'::text, ARRAY[n]);
    reserves_token boolean[] := array_fill(false, ARRAY[n]);
    existing text[];
    new_ids bigint[];
    new_request_ids text[];
    new_user_ids bigint[];
    new_token_ids bigint[];
    new_amounts bigint[];
    new_token_reserved boolean[];
    u integer;
    t integer;
BEGIN
    IF NOT p_durable THEN
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    -- Locks in id order (users, then tokens), as ingest does, so batches cannot deadlock.
    SELECT array_agg(l.id ORDER BY l.id), array_agg(l.quota - l.reserved ORDER BY l.id)
      INTO user_ids, user_left
      FROM (SELECT x.id, x.quota, x.reserved FROM users x WHERE x.id = ANY (p_user_ids)
            ORDER BY x.id FOR NO KEY UPDATE) l;
    SELECT array_agg(l.id ORDER BY l.id), array_agg(l.remain_quota - l.reserved ORDER BY l.id),
           array_agg(l.remain_quota ORDER BY l.id), array_agg(l.unlimited_quota ORDER BY l.id)
      INTO token_ids, token_left, token_remain, token_unlimited
      FROM (SELECT x.id, x.remain_quota, x.reserved, x.unlimited_quota FROM tokens x
            WHERE x.id = ANY (p_token_ids) ORDER BY x.id FOR NO KEY UPDATE) l;

    -- Retried authorizations reserve nothing again.
    SELECT array_agg(h.request_id) INTO existing FROM holds h WHERE h.request_id = ANY (p_request_ids);

    FOR i IN 1 .. n LOOP
        u := array_position(user_ids, p_user_ids[i]);
        t := array_position(token_ids, p_token_ids[i]);
        IF p_request_ids[i] = ANY (existing) OR array_position(p_request_ids, p_request_ids[i]) < i THEN
            outcomes[i] := 'duplicate';
        ELSIF u IS NULL OR t IS NULL THEN
            outcomes[i] := 'unknown';
        ELSIF NOT token_unlimited[t] AND token_remain[t] <= 0 THEN
            outcomes[i] := 'exhausted';
        ELSIF p_amounts[i] > user_left[u] OR (NOT token_unlimited[t] AND p_amounts[i] > token_left[t]) THEN
            outcomes[i] := 'insufficient';
        ELSE
            outcomes[i] := 'held';
            user_left[u] := user_left[u] - p_amounts[i];
            IF NOT token_unlimited[t] THEN
                token_left[t] := token_left[t] - p_amounts[i];
                reserves_token[i] := true;
            END IF;
        END IF;
    END LOOP;

    WITH inserted AS (
        INSERT INTO holds (request_id, user_id, token_id, model, amount, token_reserved, tid, expires_at)
        SELECT r.request_id, r.user_id, r.token_id, r.model, r.amount, r.token_reserved, r.tid,
               now() + make_interval(secs => p_ttl_seconds)
        FROM unnest(p_request_ids, p_user_ids, p_token_ids, p_models, p_amounts, reserves_token, p_tids, outcomes)
             AS r(request_id, user_id, token_id, model, amount, token_reserved, tid, outcome)
        WHERE r.outcome = 'held'
        ON CONFLICT ON CONSTRAINT holds_request_id_key DO NOTHING
        RETURNING holds.id, holds.request_id, holds.user_id, holds.token_id, holds.amount, holds.token_reserved)
    SELECT array_agg(i.id), array_agg(i.request_id), array_agg(i.user_id), array_agg(i.token_id),
           array_agg(i.amount), array_agg(i.token_reserved)
      INTO new_ids, new_request_ids, new_user_ids, new_token_ids, new_amounts, new_token_reserved
      FROM inserted i;

    UPDATE users x SET reserved = x.reserved + s.amount
    FROM (SELECT h.user_id, sum(h.amount) AS amount FROM unnest(new_user_ids, new_amounts) AS h(user_id, amount)
          GROUP BY h.user_id) s
    WHERE x.id = s.user_id;
    UPDATE tokens x SET reserved = x.reserved + s.amount
    FROM (SELECT h.token_id, sum(h.amount) AS amount
          FROM unnest(new_token_ids, new_amounts, new_token_reserved) AS h(token_id, amount, token_reserved)
          WHERE h.token_reserved GROUP BY h.token_id) s
    WHERE x.id = s.token_id;

    RETURN QUERY
    SELECT r.request_id,
           COALESCE(h.id, old.id),
           CASE WHEN r.outcome IN ('held', 'duplicate') AND h.id IS NULL THEN 'duplicate' ELSE r.outcome END,
           COALESCE(h.amount, old.amount),
           COALESCE(CASE WHEN h.id IS NOT NULL THEN 'held' END, old.status)
    FROM unnest(p_request_ids, outcomes) WITH ORDINALITY AS r(request_id, outcome, ord)
    LEFT JOIN unnest(new_ids, new_request_ids, new_amounts) AS h(id, request_id, amount)
           ON r.outcome = 'held' AND h.request_id = r.request_id
    LEFT JOIN holds old ON h.id IS NULL AND r.outcome IN ('held', 'duplicate') AND old.request_id = r.request_id
    ORDER BY r.ord;
END;
$$;

-- Closes open holds as 'released' or 'expired' and returns their reservations. Holds are
-- claimed with SKIP LOCKED (a hold being settled by ingest is left to ingest), then users and
-- tokens are locked in id order. Returns the holds it closed.
CREATE FUNCTION tally_close_holds(p_hold_ids bigint[], p_status text)
RETURNS TABLE (request_id text, amount bigint)
LANGUAGE plpgsql AS $$
DECLARE
    closed_request_ids text[];
    closed_user_ids bigint[];
    closed_token_ids bigint[];
    closed_amounts bigint[];
    closed_token_reserved boolean[];
BEGIN
    WITH closed AS (
        UPDATE holds h SET status = p_status, closed_at = now()
        WHERE h.id IN (SELECT c.id FROM holds c WHERE c.id = ANY (p_hold_ids) AND c.status = 'held'
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

-- Cache invalidation for every Tally instance (LISTEN tally_changes): payloads 'token:<id>',
-- 'user:<id>', 'group:<name>', 'channel:<id>'. Only the columns authorize caches are watched,
-- so settlement (quota, used_quota, reserved, …) sends nothing.
CREATE FUNCTION tally_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row_key text;
BEGIN
    IF TG_TABLE_NAME = 'groups' THEN
        row_key := COALESCE(NEW.name, OLD.name);
    ELSIF TG_OP = 'DELETE' THEN
        row_key := OLD.id::text;
    ELSE
        row_key := NEW.id::text;
    END IF;
    PERFORM pg_notify('tally_changes', rtrim(TG_TABLE_NAME, 's') || ':' || row_key);
    RETURN NULL;
END;
$$;

CREATE TRIGGER tokens_notify AFTER UPDATE OF status, "group", model_limits_enabled, model_limits, allow_ips,
    rpm_limit, expires_at, deleted_at, unlimited_quota, user_id OR DELETE ON tokens
    FOR EACH ROW EXECUTE FUNCTION tally_notify_change();
CREATE TRIGGER users_notify AFTER UPDATE OF status, role, "group" OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION tally_notify_change();
CREATE TRIGGER groups_notify AFTER INSERT OR UPDATE OR DELETE ON groups
    FOR EACH ROW EXECUTE FUNCTION tally_notify_change();
CREATE TRIGGER channels_notify AFTER INSERT OR UPDATE OR DELETE ON channels
    FOR EACH ROW EXECUTE FUNCTION tally_notify_change();
