-- Re-runs of `tally import new-api` follow new-api (issue 20, docs/import.md).
--
-- linked: the Tally row existed before the import and was taken to be the source's (same
--   username, same key hash). A linked account keeps its own access token.
-- access_token_hash: for a user, the SHA-256 of the access token new-api had at the last run.
--   A token rotated in new-api since then replaces Tally's; one issued by Tally to the account
--   meanwhile is kept while new-api's stays the same. NULL (rows from before this migration):
--   unknown, so the next run takes new-api's token.
ALTER TABLE import_map
    ADD COLUMN linked boolean NOT NULL DEFAULT false,
    ADD COLUMN access_token_hash bytea;

-- Links made before this migration: an account Tally created itself has a user.create entry in
-- the audit log; the accounts the import created have none.
UPDATE import_map m SET linked = true
FROM (SELECT DISTINCT target FROM audit_log WHERE action = 'user.create') a
WHERE m.kind = 'user' AND a.target = 'user:' || m.tally_id;
