-- Citus (issue 19, docs/scaling.md): a schema that runs unchanged on one PostgreSQL and that
-- `tally migrate --citus` distributes: account tables by the account (users by id, the rest by
-- user_id, co-located), the catalogue as reference tables. Citus enforces a unique key only
-- within a shard, refuses foreign keys that do not follow the distribution, and runs triggers of
-- distributed tables on the workers (where no Tally instance listens); this migration removes
-- what it refuses from the tables that are not the ingest tables (those follow 0010).

-- Keys, access tokens and usernames are unique across every account, and a key must lead to
-- its account in one shard. Both move to account_lookup, distributed by the looked-up value:
-- one shard answers "whose key is this?", then the account's shard answers the rest. The code
-- that writes a key, an access token or a username writes its lookup row in the same
-- transaction (TallyStore's AccountLookup).
CREATE TABLE account_lookup (
    lookup   bytea NOT NULL,   -- SHA-256 of the key or access token; the username in UTF-8
    kind     text NOT NULL CHECK (kind IN ('key', 'access_token', 'username')),
    user_id  bigint NOT NULL,
    token_id bigint,           -- kind 'key' only
    PRIMARY KEY (lookup, kind),
    CHECK ((kind = 'key') = (token_id IS NOT NULL))
);
INSERT INTO account_lookup (lookup, kind, user_id, token_id)
SELECT key_hash, 'key', user_id, id FROM tokens;
INSERT INTO account_lookup (lookup, kind, user_id)
SELECT access_token_hash, 'access_token', id FROM users WHERE access_token_hash IS NOT NULL;
INSERT INTO account_lookup (lookup, kind, user_id)
SELECT convert_to(username, 'UTF8'), 'username', id FROM users;

ALTER TABLE users DROP CONSTRAINT users_username_key, DROP CONSTRAINT users_access_token_hash_key;
ALTER TABLE tokens DROP CONSTRAINT tokens_key_hash_key;
-- The account tables are still read by these (one shard each on Citus, all shards for a lookup
-- by hash or name, which the instances' caches keep off the hot path).
CREATE INDEX tokens_key_hash_idx ON tokens (key_hash);
CREATE INDEX users_username_idx ON users (username);
CREATE INDEX users_access_token_idx ON users (access_token_hash) WHERE access_token_hash IS NOT NULL;

-- A token's primary key includes its account (id first: lookups by id alone still use it). The
-- ledger keeps no foreign keys to the account tables (as the other ingest tables since 0009/0010).
ALTER TABLE ledger DROP CONSTRAINT IF EXISTS ledger_token_id_fkey, DROP CONSTRAINT IF EXISTS ledger_user_id_fkey;
ALTER TABLE tokens DROP CONSTRAINT tokens_pkey, ADD PRIMARY KEY (id, user_id);

-- Redemption codes are a reference table on Citus: no foreign keys to the distributed users.
ALTER TABLE redemptions DROP CONSTRAINT redemptions_created_by_fkey, DROP CONSTRAINT redemptions_used_user_id_fkey;

-- Cache invalidations (tally_changes) are sent by the code that changes a key, a user, a group
-- or a channel (TallyStore's ChangeNotice), on the connection of its transaction: on Citus
-- these triggers would fire on the workers, where nobody listens.
DROP TRIGGER tokens_notify ON tokens;
DROP TRIGGER users_notify ON users;
DROP TRIGGER groups_notify ON groups;
DROP TRIGGER channels_notify ON channels;
DROP FUNCTION tally_notify_change();
