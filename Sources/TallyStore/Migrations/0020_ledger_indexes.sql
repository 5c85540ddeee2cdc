-- Lighter ledger indexes (issue 14, third pass; docs/ingest.md). Every batch appends one charge
-- row per user × token × month; charges are most of the ledger, and each index on it costs the
-- batch an index entry and its WAL per row. Two indexes serve no reader of charge rows:
--
-- ledger_user_at_idx (user_id, at) serves the log pages' credit rows (topups, adjustments,
-- refunds, redemptions: `kind <> 'charge'`, newest first) and the import's opening adjustment
-- (`min(at)` of an account's rows, which ledger_user_month_idx now finds). It keeps only
-- credits.
--
-- ledger_month_idx (month) served only `tally audit --month`, an offline check that now reads
-- the ledger once (a whole-database audit reads it whole already).
--
-- Statements keep ledger_user_month_idx (user_id, month): their balances sum charges too.
DROP INDEX ledger_user_at_idx;
CREATE INDEX ledger_user_credits_at_idx ON ledger (user_id, at) WHERE kind <> 'charge';
DROP INDEX ledger_month_idx;

-- The idempotency key (0019: unique per account) is set only on top-ups and imported credits;
-- charge rows leave it NULL, so they need no entry. Top-ups find a replay by looking the key up
-- under a lock on it (Balances.topUp), not by ON CONFLICT, so a partial index keeps the rule.
DROP INDEX ledger_idempotency_idx;
CREATE UNIQUE INDEX ledger_idempotency_idx ON ledger (idempotency_key, user_id) WHERE idempotency_key IS NOT NULL;
