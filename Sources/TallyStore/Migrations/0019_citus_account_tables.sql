-- Citus, the account's rows with the account (issue 19, docs/scaling.md §4). request_logs,
-- usage_daily, pending_usage and the ledger join users, tokens and pending_charges in their
-- co-location group (CitusLayout), so that a batch's work per account, a user's export and the
-- System API's reads of one account are one shard's work. Citus enforces a unique key only
-- within a shard, so every unique key names the account; request_logs (0010), usage_daily and
-- pending_usage already do. On one PostgreSQL this changes two keys of the ledger.

-- A ledger row's key includes its account (id first: lookups by id alone still use it).
ALTER TABLE ledger DROP CONSTRAINT ledger_pkey, ADD PRIMARY KEY (id, user_id);

-- Idempotency keys are unique per account in the index; a top-up takes a transaction lock on
-- its key before it looks the key up in every account, so that the same key for another
-- account stays a conflict (Balances.topUp). The key leads, for that lookup.
ALTER TABLE ledger DROP CONSTRAINT ledger_idempotency_key_key;
CREATE UNIQUE INDEX ledger_idempotency_idx ON ledger (idempotency_key, user_id);
