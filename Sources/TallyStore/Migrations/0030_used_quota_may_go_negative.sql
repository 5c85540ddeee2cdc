-- An imported new-api log may be negative (a task re-charge refunding an earlier charge), and
-- new-api's log cleanup may have deleted the charge it refunds: the logs kept for an account
-- can add up below 0. The fold adds them to used_quota, which a CHECK (>= 0) then refused, and
-- the import's balance step failed on every run (as did each settler tick picking the account).
-- used_quota is the sum of the charges in the ledger, which tally audit proves; it needs no
-- bound of its own.
ALTER TABLE users DROP CONSTRAINT users_used_quota_check;
ALTER TABLE tokens DROP CONSTRAINT tokens_used_quota_check;
