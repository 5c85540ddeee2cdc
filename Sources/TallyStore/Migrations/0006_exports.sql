-- Exports, statements and retention (issue 8); see docs/exports.md.

-- The month a ledger row counts in (UTC, first day). A charge counts in the month of its
-- requests' created_at, like the usage rollups and the exports, whenever its batch arrived; so
-- a month's ledger charges equal the sum of its export exactly, even for a batch that crosses
-- midnight at the month's end. Every other row counts in the month of `at`.
-- Ingest writes one charge row per (batch, user, token, month) and sets `usage_month`.
ALTER TABLE ledger ADD COLUMN usage_month date;

-- Existing charges: the month of their requests. The ledger is append-only; this one-time
-- rewrite splits a charge whose requests span two months into one row per month (same batch,
-- user, token, time), keeping every amount.
CREATE TEMP TABLE charge_months ON COMMIT DROP AS
SELECT l.id, date_trunc('month', r.created_at AT TIME ZONE 'UTC')::date AS month,
       -sum(r.quota) AS amount, count(*) AS requests,
       row_number() OVER (PARTITION BY l.id ORDER BY date_trunc('month', r.created_at AT TIME ZONE 'UTC')::date) AS part
FROM ledger l
JOIN request_logs r ON r.batch_id = l.batch_id AND r.user_id = l.user_id AND r.token_id = l.token_id
WHERE l.kind = 'charge'
GROUP BY l.id, 2;

UPDATE ledger l SET usage_month = c.month, amount = c.amount, requests = c.requests
FROM charge_months c WHERE c.id = l.id AND c.part = 1;

INSERT INTO ledger (at, user_id, token_id, kind, amount, requests, batch_id, reason, tid, usage_month)
SELECT l.at, l.user_id, l.token_id, 'charge', c.amount, c.requests, l.batch_id, l.reason, l.tid, c.month
FROM charge_months c JOIN ledger l ON l.id = c.id
WHERE c.part > 1 AND c.amount <> 0;

ALTER TABLE ledger ADD COLUMN month date NOT NULL
    GENERATED ALWAYS AS (coalesce(usage_month, date_trunc('month', at AT TIME ZONE 'UTC')::date)) STORED;
CREATE INDEX ledger_user_month_idx ON ledger (user_id, month);
CREATE INDEX ledger_month_idx ON ledger (month);

-- The monthly partitions of request_logs that tally_create_log_partitions makes (named
-- request_logs_yYYYYmMM, bounded by exactly that UTC month), with their month.
-- `detach_pending` is true when a DETACH … CONCURRENTLY was interrupted.
CREATE VIEW tally_log_partitions AS
SELECT c.relname::text AS name,
       to_date(substring(c.relname from 15 for 4) || substring(c.relname from 20 for 2), 'YYYYMM') AS month,
       i.inhdetachpending AS detach_pending
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'request_logs'::regclass AND c.relname ~ '^request_logs_y[0-9]{4}m[0-9]{2}$';
