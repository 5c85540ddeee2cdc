-- The import remembers when it first set each account's balance (found by a review of the
-- import): an account whose balance was 0 at its first run got no ledger row then, so a later
-- run took its first adjustment for the opening balance and dated it before the account's first
-- row, months back, changing statements already issued. An adjustment is an opening only for an
-- account whose balance no run has set yet (a first run that failed before its balances still
-- opens them on the next).
--
-- Accounts imported before this migration count as opened: their balances were set by the runs
-- that imported them.
ALTER TABLE import_map ADD COLUMN balance_set_at timestamptz;
UPDATE import_map SET balance_set_at = now() WHERE kind = 'user';
