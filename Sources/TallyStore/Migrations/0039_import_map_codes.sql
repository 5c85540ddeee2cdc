-- The import remembers which redemption codes each source brought (found by a review of the
-- import): users, keys and channels that new-api deleted outright are disabled in Tally by the
-- next run, but codes were matched by their hash alone, so a code deleted outright in new-api
-- (a release without soft deletes, one-api, a cleanup in SQL) stayed redeemable in Tally.
ALTER TABLE import_map DROP CONSTRAINT import_map_kind_check;
ALTER TABLE import_map ADD CONSTRAINT import_map_kind_check CHECK (kind IN ('user', 'token', 'channel', 'redemption'));
