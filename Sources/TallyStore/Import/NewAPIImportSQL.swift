import TallyCore
import TallyPostgres

/// The Tally side of `tally import new-api`: staging tables and the set-based statements that
/// merge them into Tally's tables. `$1` is always the source name.
enum NewAPIImportSQL {
    /// Session temporary tables: the entity snapshot is used again by the balance phase after
    /// the logs, on the same connection.
    static let createStaging = """
        DROP TABLE IF EXISTS import_groups, import_users, import_tokens, import_channels, import_redemptions, import_log_rows;
        CREATE TEMP TABLE import_groups (name text PRIMARY KEY, description text NOT NULL, selectable boolean NOT NULL, ratio text);
        CREATE TEMP TABLE import_users (
            source_id bigint PRIMARY KEY, username text NOT NULL, display_name text NOT NULL, email text NOT NULL,
            role integer NOT NULL, status integer NOT NULL, grp text NOT NULL, quota bigint NOT NULL, used_quota bigint NOT NULL,
            access_hash bytea, access_last6 text, created_unix bigint NOT NULL, deleted boolean NOT NULL, tally_id bigint);
        CREATE TEMP TABLE import_tokens (
            source_id bigint PRIMARY KEY, source_user_id bigint NOT NULL, name text NOT NULL, key_hash bytea NOT NULL,
            key_last6 text NOT NULL, status integer NOT NULL, grp text NOT NULL, remain_quota bigint NOT NULL,
            unlimited boolean NOT NULL, model_limits_enabled boolean NOT NULL, model_limits text NOT NULL,
            allow_ips text NOT NULL, expired_unix bigint NOT NULL, created_unix bigint NOT NULL, accessed_unix bigint NOT NULL,
            deleted_at timestamptz, tally_user_id bigint, tally_id bigint);
        CREATE TEMP TABLE import_channels (
            source_id bigint PRIMARY KEY, name text NOT NULL, status integer NOT NULL, groups text[] NOT NULL,
            models text[] NOT NULL, used_quota bigint NOT NULL, created_unix bigint NOT NULL, tally_id bigint);
        CREATE TEMP TABLE import_redemptions (
            source_id bigint PRIMARY KEY, name text NOT NULL, code_hash bytea NOT NULL, code_last6 text NOT NULL,
            quota bigint NOT NULL, status integer NOT NULL, creator_source_id bigint NOT NULL, user_source_id bigint NOT NULL,
            expired_unix bigint NOT NULL, created_unix bigint NOT NULL, redeemed_unix bigint NOT NULL, deleted boolean NOT NULL);
        CREATE TEMP TABLE import_log_rows (
            id bigint, user_id bigint, created_unix bigint, type integer, content text, model text, quota bigint,
            prompt_tokens bigint, completion_tokens bigint, use_time bigint, is_stream boolean, channel_id bigint,
            token_id bigint, grp text, ip text, status_code integer, cached_tokens bigint, cache_write_tokens bigint);
        """

    static let dropStaging =
        "DROP TABLE IF EXISTS import_groups, import_users, import_tokens, import_channels, import_redemptions, import_log_rows"

    static let stagingColumns = [
        "import_users":
            "source_id, username, display_name, email, role, status, grp, quota, used_quota, access_hash, access_last6, created_unix, deleted",
        "import_tokens": """
        source_id, source_user_id, name, key_hash, key_last6, status, grp, remain_quota, unlimited, model_limits_enabled, \
        model_limits, allow_ips, expired_unix, created_unix, accessed_unix, deleted_at
        """,
        "import_channels": "source_id, name, status, groups, models, used_quota, created_unix",
        "import_redemptions": """
        source_id, name, code_hash, code_last6, quota, status, creator_source_id, user_source_id, expired_unix, created_unix, \
        redeemed_unix, deleted
        """,
        "import_groups": "name, description, selectable, ratio",
    ]

    /// Blocks other writers of the account tables while ids are chosen and rows inserted:
    /// plain reads go on, but lease grants, the fold, top-ups and admin changes wait for the
    /// transaction (docs/import.md, "Transactions"). EXCLUSIVE, which row locks wait for too:
    /// under SHARE ROW EXCLUSIVE a change could lock an account's row first, and then its UPDATE
    /// waited for the table while the import waited for the row (a deadlock).
    static let lockAccounts = "LOCK TABLE users, tokens, channels IN EXCLUSIVE MODE"

    /// A valid Tally group name (the `groups.name` CHECK).
    private static let validGroup = "'^[A-Za-z0-9_.-]{1,64}$'"

    /// Group names Tally cannot hold, with where the source names them (before the users' and
    /// keys' groups are normalised). "auto" and "" are not names: new-api's special values.
    static let invalidGroupNames = """
        SELECT name, string_agg(origin, ', ' ORDER BY position) FROM (
            SELECT name, 1 AS position, concat_ws(' and ', CASE WHEN ratio IS NOT NULL THEN 'GroupRatio' END,
                                                  CASE WHEN selectable THEN 'UserUsableGroups' END) AS origin
            FROM import_groups
            UNION ALL SELECT grp, 2, count(*) || ' user(s)' FROM import_users GROUP BY grp
            UNION ALL SELECT grp, 3, count(*) || ' key(s)' FROM import_tokens GROUP BY grp) AS n
        WHERE name !~ \(validGroup) AND name NOT IN ('', 'auto')
        GROUP BY name ORDER BY name
        """

    /// Every group named anywhere in the source, except new-api's special "auto"; existing
    /// Tally groups are left as they are.
    static let insertGroups = """
        INSERT INTO groups (name, description, selectable)
        SELECT n.name, left(coalesce(o.description, ''), 500), coalesce(o.selectable, false)
        FROM (SELECT name FROM import_groups UNION SELECT grp FROM import_users UNION SELECT grp FROM import_tokens
              UNION SELECT unnest(groups) FROM import_channels) AS n
        LEFT JOIN import_groups o ON o.name = n.name
        WHERE n.name ~ \(validGroup) AND n.name <> 'auto'
        ORDER BY n.name
        ON CONFLICT (name) DO NOTHING
        """

    // MARK: Users

    /// Users whose new-api group Tally cannot have (not a valid group name): they go to default.
    static let usersOutsideGroups = """
        SELECT username, grp FROM import_users s WHERE NOT EXISTS (SELECT 1 FROM groups g WHERE g.name = s.grp) ORDER BY source_id
        """

    /// new-api's values in Tally's domain: roles 1/10/100, deleted or not enabled → disabled,
    /// a group Tally does not have → default.
    static let normalizeUsers = """
        UPDATE import_users s SET
            role = CASE WHEN s.role >= \(Role.root.sql) THEN \(Role.root.sql)
                        WHEN s.role >= \(Role.admin.sql) THEN \(Role.admin.sql) ELSE \(Role.user.sql) END,
            status = CASE WHEN s.deleted OR s.status <> \(UserStatus.enabled.sql) THEN \(UserStatus.disabled.sql)
                          ELSE \(UserStatus.enabled.sql) END,
            grp = CASE WHEN EXISTS (SELECT 1 FROM groups g WHERE g.name = s.grp) THEN s.grp ELSE 'default' END,
            display_name = left(s.display_name, 64)
        """

    /// Unix times past year 9999 (a key set to expire "never" with 99999999999999, milliseconds
    /// stored as seconds) would abort the accounts' transaction on every run (`to_timestamp`:
    /// out of range): an expiry that far is never (-1 for keys, 0 for codes, as new-api reads
    /// them), any other such time unknown (0).
    /// 9999-12-31 23:59:59 UTC, the last second `to_timestamp` is asked for here.
    static let lastUnixTime: Int64 = 253_402_300_799
    static let clampTimes = """
        UPDATE import_users SET created_unix = 0 WHERE created_unix > \(lastUnixTime);
        UPDATE import_tokens SET
            expired_unix = CASE WHEN expired_unix > \(lastUnixTime) THEN -1 ELSE expired_unix END,
            created_unix = CASE WHEN created_unix > \(lastUnixTime) THEN 0 ELSE created_unix END,
            accessed_unix = CASE WHEN accessed_unix > \(lastUnixTime) THEN 0 ELSE accessed_unix END
        WHERE greatest(expired_unix, created_unix, accessed_unix) > \(lastUnixTime);
        UPDATE import_channels SET created_unix = 0 WHERE created_unix > \(lastUnixTime);
        UPDATE import_redemptions SET
            expired_unix = CASE WHEN expired_unix > \(lastUnixTime) THEN 0 ELSE expired_unix END,
            created_unix = CASE WHEN created_unix > \(lastUnixTime) THEN 0 ELSE created_unix END,
            redeemed_unix = CASE WHEN redeemed_unix > \(lastUnixTime) THEN 0 ELSE redeemed_unix END
        WHERE greatest(expired_unix, created_unix, redeemed_unix) > \(lastUnixTime)
        """

    /// On a source's first run, an existing Tally account with the same username that no source
    /// has is the same person: link it. It keeps its own access token (`linked`). Later runs, and
    /// accounts another source brought, link nothing: a name registered in new-api meanwhile is
    /// not the Tally account (an admin's, say) that holds it (``newUsersWithHeldNames``).
    static let linkUsers = """
        INSERT INTO import_map (source, kind, source_id, tally_id, linked, access_token_hash)
        SELECT $1::text, 'user', s.source_id, u.id, true, s.access_hash
        FROM import_users s JOIN users u ON u.username = s.username
        WHERE NOT EXISTS (SELECT 1 FROM import_map m WHERE m.kind = 'user' AND m.tally_id = u.id)
          AND NOT EXISTS (SELECT 1 FROM import_map m WHERE m.source = $1 AND m.kind = 'user')
        """

    /// New source users, once linking is done, whose username a Tally account holds.
    static let newUsersWithHeldNames = """
        SELECT s.source_id, s.username FROM import_users s
        WHERE \(unmapped("user")) AND s.username <> '' AND EXISTS (SELECT 1 FROM users u WHERE u.username = s.username)
        ORDER BY s.source_id
        """

    /// Accounts of this source whose username must change: the source renamed them, or (gone
    /// from the source, or renamed there) they hold a name a source user wants. `wanted` is
    /// NULL for an account the source no longer names.
    static let usernameChanges = """
        SELECT u.id, m.source_id, u.username, s.username FROM import_map m JOIN users u ON u.id = m.tally_id
        LEFT JOIN import_users s ON s.source_id = m.source_id AND s.username <> ''
        WHERE m.source = $1 AND m.kind = 'user' AND u.username IS DISTINCT FROM s.username
          AND (s.username IS NOT NULL OR EXISTS (SELECT 1 FROM import_users o WHERE o.username = u.username))
        ORDER BY u.id
        """

    /// New source users whose username Tally cannot hold (longer than 64 characters).
    static let newUsersWithLongNames = """
        SELECT s.source_id, s.username FROM import_users s
        WHERE \(unmapped("user")) AND length(s.username) > \(ImportedUsername.maximumLength) ORDER BY s.source_id
        """

    /// True when an account other than `$2` (or the accounts in `$2`) holds username `$1`.
    static let usernameHeld = "SELECT EXISTS (SELECT 1 FROM users WHERE username = $1 AND id <> ALL ($2::bigint[]))"

    /// True when a source user wants username `$1`.
    static let usernameWanted = "SELECT EXISTS (SELECT 1 FROM import_users WHERE username = $1)"

    /// Frees the names of accounts about to be renamed, so renames in any order (a swap, a name
    /// passed on) never give two accounts one name. The placeholder starts with a control character,
    /// which no username Tally accepts contains.
    static let vacateUsernames = "UPDATE users SET username = chr(1) || id::text WHERE id = ANY ($1::bigint[])"

    static let setUsername = "UPDATE users SET username = $2, updated_at = now() WHERE id = $1"

    static let setStagedUsername = "UPDATE import_users SET username = $2 WHERE source_id = $1"

    static let usersToInsert = "\(unmapped("user")) AND s.username <> ''"

    /// Balances start at 0: the balance phase writes them as ledger rows. A new account whose
    /// new-api access token another Tally account holds (another source's copy of it) comes in
    /// without one, recorded as not holding new-api's: the run warns as for a blocked rotation
    /// (``blockedAccessTokens``), and a later run gives it the token once it is free (a token
    /// held twice failed the whole run on the lookup table's key).
    static let insertUsers = """
        WITH staged AS (
            SELECT s.*, NOT EXISTS (SELECT 1 FROM users o WHERE o.access_token_hash = s.access_hash) AS token_free
            FROM import_users s WHERE \(usersToInsert)
        ), fresh AS (
            INSERT INTO users (id, username, display_name, email, role, status, "group", quota, access_token_hash,
                               access_token_last6, created_at)
            SELECT s.tally_id, s.username, s.display_name, s.email, s.role, s.status, s.grp, 0,
                   CASE WHEN s.token_free THEN s.access_hash END, CASE WHEN s.token_free THEN s.access_last6 END,
                   CASE WHEN s.created_unix > 0 THEN to_timestamp(s.created_unix) ELSE now() END
            FROM staged s ORDER BY s.tally_id
            RETURNING id)
        INSERT INTO import_map (source, kind, source_id, tally_id, access_token_hash)
        SELECT $1::text, 'user', s.source_id, s.tally_id, CASE WHEN s.token_free THEN s.access_hash END
        FROM fresh f JOIN staged s ON s.tally_id = f.id
        """

    /// Profile, role, status and group follow new-api (usernames and access tokens have their
    /// own steps).
    static let updateUsers = """
        UPDATE users u SET display_name = s.display_name, email = s.email, role = s.role, status = s.status, "group" = s.grp,
            updated_at = now()
        FROM import_users s \(mapped("user"))
        WHERE u.id = m.tally_id AND (u.display_name, u.email, u.role, u.status, u."group") IS DISTINCT FROM
              (s.display_name, s.email, s.role, s.status, s.grp)
        """

    /// Accounts the import created whose access token changed in new-api since the last run.
    private static let rotatedAccessTokens = """
        SELECT m.tally_id, s.access_hash, s.access_last6 FROM import_users s \(mapped("user"))
        WHERE NOT m.linked AND s.access_hash IS DISTINCT FROM m.access_token_hash
        """

    /// Gives those accounts new-api's token (its predecessor stops working at once). When
    /// another account holds it, the account is left with none: new-api rotated the token
    /// (a leak, a sign-out everywhere), so the old one must stop working all the same (found by
    /// a review: it kept working until a later run could rotate); the run warns, and the next
    /// one gives it new-api's token once that is free.
    static let replaceAccessTokens = """
        UPDATE users u SET access_token_hash = CASE WHEN k.free THEN r.access_hash END,
            access_token_last6 = CASE WHEN k.free THEN r.access_last6 END, updated_at = now()
        FROM (\(rotatedAccessTokens)) r
        CROSS JOIN LATERAL (SELECT NOT EXISTS (SELECT 1 FROM users o WHERE o.access_token_hash = r.access_hash) AS free) k
        WHERE u.id = r.tally_id AND u.access_token_hash IS DISTINCT FROM r.access_hash
          AND (k.free OR u.access_token_hash IS NOT NULL)
        """

    /// Remembers new-api's token where the account now holds it.
    static let recordAccessTokens = """
        UPDATE import_map m SET access_token_hash = r.access_hash
        FROM (\(rotatedAccessTokens)) r JOIN users u ON u.id = r.tally_id
        WHERE m.source = $1 AND m.kind = 'user' AND m.tally_id = r.tally_id
          AND u.access_token_hash IS NOT DISTINCT FROM r.access_hash
        """

    /// What `recordAccessTokens` left: new-api tokens another account holds.
    static let blockedAccessTokens = """
        SELECT u.username FROM (\(rotatedAccessTokens)) r JOIN users u ON u.id = r.tally_id ORDER BY u.id
        """

    /// Accounts of this source that new-api no longer has (deleted for good): disabled.
    static let disableVanishedUsers = """
        UPDATE users u SET status = \(UserStatus.disabled.sql), updated_at = now() FROM import_map m
        WHERE m.source = $1 AND m.kind = 'user' AND u.id = m.tally_id AND u.status <> \(UserStatus.disabled.sql)
          AND NOT EXISTS (SELECT 1 FROM import_users s WHERE s.source_id = m.source_id)
        RETURNING u.username
        """

    // MARK: Tokens

    /// Owners mapped to Tally ids; "auto" and unknown groups → "" (the owner's group);
    /// statuses outside 1–4 → disabled.
    static let normalizeTokens = """
        UPDATE import_tokens s SET
            tally_user_id = (SELECT m.tally_id FROM import_map m WHERE m.source = $1 AND m.kind = 'user' AND m.source_id = s.source_user_id),
            grp = CASE WHEN s.grp <> 'auto' AND EXISTS (SELECT 1 FROM groups g WHERE g.name = s.grp) THEN s.grp ELSE '' END,
            status = CASE WHEN s.status BETWEEN \(TokenStatus.enabled.sql) AND \(TokenStatus.exhausted.sql)
                          THEN s.status
                          ELSE \(TokenStatus.disabled.sql) END
        """

    /// A Tally key with the same hash is the same key, when it is the same account's (the one its
    /// owner is mapped to) and no source brought it: a second source's copy of a key (a cloned
    /// new-api imported under another name) is not linked to the first source's account, whose
    /// key would then follow two sources and be charged another account's logs.
    static let linkTokens = """
        INSERT INTO import_map (source, kind, source_id, tally_id, linked)
        SELECT $1::text, 'token', s.source_id, t.id, true
        FROM import_tokens s JOIN tokens t ON t.key_hash = s.key_hash AND t.user_id = s.tally_user_id
        WHERE \(unmapped("token")) AND NOT EXISTS (SELECT 1 FROM import_map m WHERE m.kind = 'token' AND m.tally_id = t.id)
        """

    /// Keys of mapped owners left unmapped after linking and inserting: their key is another
    /// Tally key's (another account's, or one another source brought).
    static let keysHeldElsewhere = """
        SELECT count(*) FROM import_tokens s
        WHERE \(tokensToInsert) AND EXISTS (SELECT 1 FROM tokens t WHERE t.key_hash = s.key_hash)
        """

    /// Keys whose new-api key changed to one another Tally key holds: the rotation waits, with
    /// the old key disabled meanwhile (``updateTokens``), as a blocked access-token rotation
    /// leaves the account without one.
    static let blockedKeyRotations = """
        SELECT count(*) FROM import_tokens s \(mapped("token")) JOIN tokens t ON t.id = m.tally_id
        WHERE t.key_hash <> s.key_hash
        """

    static let tokensToInsert = "\(unmapped("token")) AND s.tally_user_id IS NOT NULL"

    /// new-api refuses a key unless `expired_time` is -1 (never) or still ahead
    /// (`ExpiredTime != -1 && ExpiredTime < now`): 0, which its API stores when a client leaves
    /// the field out, is an expired key there and must stay one here.
    static let keyExpiry = """
        CASE WHEN s.expired_unix = -1 THEN NULL
             ELSE to_timestamp(greatest(s.expired_unix, 0)) END
        """

    /// A redemption code of new-api expires at a positive `expired_time` only (0: never).
    static let codeExpiry = "CASE WHEN s.expired_unix > 0 THEN to_timestamp(s.expired_unix) END"

    /// Use counters start at 0 (the imported logs add to them); remain_quota is new-api's.
    static let insertTokens = """
        WITH fresh AS (
            INSERT INTO tokens (id, user_id, name, key_hash, key_last6, status, "group", remain_quota, unlimited_quota,
                                model_limits_enabled, model_limits, allow_ips, expires_at, created_at, accessed_at, deleted_at)
            SELECT s.tally_id, s.tally_user_id, s.name, s.key_hash, s.key_last6, s.status, s.grp, s.remain_quota, s.unlimited,
                   s.model_limits_enabled, s.model_limits, s.allow_ips, \(keyExpiry),
                   CASE WHEN s.created_unix > 0 THEN to_timestamp(s.created_unix) ELSE now() END,
                   CASE WHEN greatest(s.accessed_unix, s.created_unix) > 0 THEN to_timestamp(greatest(s.accessed_unix, s.created_unix))
                        ELSE now() END,
                   s.deleted_at
            FROM import_tokens s
            WHERE \(tokensToInsert) AND NOT EXISTS (SELECT 1 FROM tokens t WHERE t.key_hash = s.key_hash)
            ORDER BY s.tally_id
            RETURNING id)
        INSERT INTO import_map (source, kind, source_id, tally_id)
        SELECT $1::text, 'token', s.source_id, s.tally_id FROM fresh f JOIN import_tokens s ON s.tally_id = f.id
        """

    /// new-api's status, or disabled while its rotation waits (``updateTokens``).
    private static let keyStatus =
        "CASE WHEN t.key_hash <> s.key_hash AND NOT k.free THEN \(TokenStatus.disabled.sql) ELSE s.status END"

    /// Every key field follows new-api, the key itself included. When another key holds the new
    /// one, the old key stays but disabled until a later run can rotate it: new-api rotated it
    /// (a leak), so it must stop working all the same (found by a review: it kept working). The
    /// remaining quota is set with the balances.
    static let updateTokens = """
        UPDATE tokens t SET name = s.name, status = \(keyStatus), "group" = s.grp, unlimited_quota = s.unlimited,
            model_limits_enabled = s.model_limits_enabled, model_limits = s.model_limits, allow_ips = s.allow_ips,
            expires_at = \(keyExpiry), deleted_at = s.deleted_at,
            accessed_at = greatest(t.accessed_at, to_timestamp(s.accessed_unix)),
            key_hash = CASE WHEN k.free THEN s.key_hash ELSE t.key_hash END,
            key_last6 = CASE WHEN k.free THEN s.key_last6 ELSE t.key_last6 END
        FROM import_tokens s \(mapped("token"))
        CROSS JOIN LATERAL (SELECT NOT EXISTS (SELECT 1 FROM tokens o WHERE o.key_hash = s.key_hash) AS free) k
        WHERE t.id = m.tally_id AND (
            (t.name, t.status, t."group", t.unlimited_quota, t.model_limits_enabled, t.model_limits, t.allow_ips, t.expires_at, t.deleted_at)
            IS DISTINCT FROM (s.name, \(keyStatus), s.grp, s.unlimited, s.model_limits_enabled, s.model_limits, s.allow_ips, \(keyExpiry), s.deleted_at)
            OR t.accessed_at < to_timestamp(s.accessed_unix) OR (t.key_hash <> s.key_hash AND k.free))
        """

    /// Keys of this source that new-api no longer has (deleted for good): deleted.
    static let removeVanishedTokens = """
        UPDATE tokens t SET deleted_at = now() FROM import_map m
        WHERE m.source = $1 AND m.kind = 'token' AND t.id = m.tally_id AND t.deleted_at IS NULL
          AND NOT EXISTS (SELECT 1 FROM import_tokens s WHERE s.source_id = m.source_id)
        """

    /// The source's accounts (`$1`), whose lookup rows are made anew after a run.
    private static let sourceAccounts = "SELECT m.tally_id FROM import_map m WHERE m.source = $1 AND m.kind = 'user'"

    /// The lookup rows (AccountLookup) of the source's accounts, dropped once the accounts are
    /// merged (a run renames, rotates access tokens and re-keys) and made anew from what they
    /// hold by ``addLookups``, whose primary key then proves every name, token and key unique.
    static let dropLookups = "DELETE FROM account_lookup WHERE user_id IN (\(sourceAccounts))"

    static let addLookups = """
        INSERT INTO account_lookup (lookup, kind, user_id, token_id)
        SELECT convert_to(u.username, 'UTF8'), 'username', u.id, NULL::bigint FROM users u
        WHERE u.id IN (\(sourceAccounts))
        UNION ALL
        SELECT u.access_token_hash, 'access_token', u.id, NULL FROM users u
        WHERE u.access_token_hash IS NOT NULL AND u.id IN (\(sourceAccounts))
        UNION ALL
        SELECT t.key_hash, 'key', t.user_id, t.id FROM tokens t WHERE t.user_id IN (\(sourceAccounts))
        UNION ALL
        SELECT int8send(t.id), 'token', t.user_id, t.id FROM tokens t WHERE t.user_id IN (\(sourceAccounts))
        """

    /// Keys whose owner is not in the source (removed from new-api's users table).
    static let orphanTokens = "SELECT count(*) FROM import_tokens WHERE tally_user_id IS NULL"

    // MARK: Channels

    static let channelsToInsert = unmapped("channel")

    static let insertChannels = """
        WITH fresh AS (
            INSERT INTO channels (id, name, status, groups, models, used_quota, created_at)
            SELECT s.tally_id, s.name, s.status, s.groups, s.models, s.used_quota,
                   CASE WHEN s.created_unix > 0 THEN to_timestamp(s.created_unix) ELSE now() END
            FROM import_channels s WHERE \(channelsToInsert) ORDER BY s.tally_id
            RETURNING id)
        INSERT INTO import_map (source, kind, source_id, tally_id)
        SELECT $1::text, 'channel', s.source_id, s.tally_id FROM fresh f JOIN import_channels s ON s.tally_id = f.id
        """

    static let updateChannels = """
        UPDATE channels c SET name = s.name, status = s.status, groups = s.groups, models = s.models, used_quota = s.used_quota,
            updated_at = now()
        FROM import_channels s \(mapped("channel"))
        WHERE c.id = m.tally_id AND (c.name, c.status, c.groups, c.models, c.used_quota) IS DISTINCT FROM
              (s.name, s.status, s.groups, s.models, s.used_quota)
        """

    /// Channels of this source that new-api no longer has: disabled, so nothing routes to them.
    static let disableVanishedChannels = """
        UPDATE channels c SET status = \(ChannelStatus.disabled.sql), updated_at = now() FROM import_map m
        WHERE m.source = $1 AND m.kind = 'channel' AND c.id = m.tally_id AND c.status <> \(ChannelStatus.disabled.sql)
          AND NOT EXISTS (SELECT 1 FROM import_channels s WHERE s.source_id = m.source_id)
        """

    // MARK: Ids

    /// Where Tally's own ids go once an import has made room: far above any id new-api hands
    /// out (its tables count from 1), within `integer` (channels). Drawn just above the source's
    /// highest id, a displaced row took the id new-api gave its next row, which the following
    /// run displaced again, and a gateway line naming that next row's `token_id` was charged to
    /// the displaced one's owner (found by a review); rows made in Tally between runs did the same.
    static let ownIDsFrom: Int64 = 1_000_000_000

    /// Moves `table`'s id sequence past its own ids, the source's and `ownIDsFrom`, on every run
    /// (also one that inserts nothing into `table`: the rows Tally makes after it must not take
    /// ids new-api will give), so that `assignIDs` can keep new-api ids and draw the others (and
    /// every row Tally makes afterwards) where new-api's never reach.
    static func makeRoom(table: String, staging: String) -> String {
        """
        SELECT setval(pg_get_serial_sequence('\(table)', 'id'), greatest(
            coalesce(pg_sequence_last_value(pg_get_serial_sequence('\(table)', 'id')::regclass), 0),
            (SELECT coalesce(max(id), 0) FROM \(table)), (SELECT coalesce(max(source_id), 0) FROM \(staging)),
            \(ownIDsFrom)))
        """
    }

    /// The rows to insert whose new-api id was taken: `source_id → tally_id`, by source id.
    static func renumbered(staging: String, where condition: String) -> String {
        """
        SELECT s.source_id || ' → ' || s.tally_id FROM \(staging) s
        WHERE \(condition) AND s.tally_id <> s.source_id ORDER BY s.source_id
        """
    }

    /// Gives each row to insert its Tally id: the new-api id where `table` has no row with it,
    /// else the next of the sequence (above every id of both, after `makeRoom`).
    static func assignIDs(table: String, staging: String, where condition: String) -> String {
        """
        UPDATE \(staging) s SET tally_id = CASE WHEN EXISTS (SELECT 1 FROM \(table) x WHERE x.id = s.source_id)
            THEN nextval(pg_get_serial_sequence('\(table)', 'id')) ELSE s.source_id END
        WHERE \(condition)
        """
    }

    private static func unmapped(_ kind: String) -> String {
        "NOT EXISTS (SELECT 1 FROM import_map m WHERE m.source = $1 AND m.kind = '\(kind)' AND m.source_id = s.source_id)"
    }

    private static func mapped(_ kind: String) -> String {
        "JOIN import_map m ON m.source = $1 AND m.kind = '\(kind)' AND m.source_id = s.source_id"
    }

    // MARK: Redemption codes

    // new-api numbers redemption statuses as Tally does.
    private static let codeEnabled = RedemptionStatus.enabled.sql
    private static let codeDisabled = RedemptionStatus.disabled.sql
    private static let codeUsed = RedemptionStatus.used.sql

    /// Codes an earlier run brought in before the import remembered codes (migration 0039), by
    /// their hash, unless another source's they are.
    static let linkRedemptions = """
        INSERT INTO import_map (source, kind, source_id, tally_id)
        SELECT DISTINCT ON (r.id) $1::text, 'redemption', s.source_id, r.id
        FROM import_redemptions s JOIN redemptions r ON r.code_hash = s.code_hash
        WHERE \(unmapped("redemption")) AND NOT EXISTS (SELECT 1 FROM import_map m WHERE m.kind = 'redemption' AND m.tally_id = r.id)
        ORDER BY r.id, s.source_id
        """

    /// Codes with a positive value; a deleted unused code comes in disabled. Each is remembered
    /// as this source's.
    static let insertRedemptions = """
        WITH fresh AS (
        INSERT INTO redemptions (name, code_hash, code_last6, quota, status, created_by, used_user_id, expires_at, created_at, redeemed_at)
        SELECT s.name, s.code_hash, s.code_last6, s.quota,
               CASE WHEN s.status = \(codeUsed) THEN \(codeUsed)
                    WHEN s.deleted OR s.status <> \(codeEnabled) THEN \(codeDisabled) ELSE \(codeEnabled) END,
               creator.tally_id, redeemer.tally_id, \(codeExpiry),
               CASE WHEN s.created_unix > 0 THEN to_timestamp(s.created_unix) ELSE now() END,
               CASE WHEN s.redeemed_unix > 0 THEN to_timestamp(s.redeemed_unix) END
        FROM import_redemptions s
        LEFT JOIN import_map creator ON creator.source = $1 AND creator.kind = 'user' AND creator.source_id = s.creator_source_id
        LEFT JOIN import_map redeemer ON redeemer.source = $1 AND redeemer.kind = 'user' AND redeemer.source_id = s.user_source_id
        WHERE s.quota > 0 ORDER BY s.source_id
        ON CONFLICT (code_hash) DO NOTHING
        RETURNING id, status, code_hash
        ), mapped AS (
            INSERT INTO import_map (source, kind, source_id, tally_id)
            -- Two codes of new-api that differ only in case are one code here (redeemed lower-cased).
            SELECT DISTINCT ON (f.id) $1::text, 'redemption', s.source_id, f.id
            FROM fresh f JOIN import_redemptions s ON s.code_hash = f.code_hash ORDER BY f.id, s.source_id
        )
        SELECT id, status FROM fresh
        """

    /// Enabled codes of this source that new-api no longer has (deleted outright): disabled, as
    /// such users and channels are. Only when the source has a codes table (it was staged).
    static let disableVanishedRedemptions = """
        UPDATE redemptions r SET status = \(codeDisabled) FROM import_map m
        WHERE m.source = $1 AND m.kind = 'redemption' AND r.id = m.tally_id AND r.status = \(codeEnabled)
          AND NOT EXISTS (SELECT 1 FROM import_redemptions s WHERE s.source_id = m.source_id)
        RETURNING r.id, r.status
        """

    /// A code used or disabled in new-api since the last run; never back to usable.
    static let updateRedemptions = """
        UPDATE redemptions r SET status = CASE WHEN s.status = \(codeUsed) THEN \(codeUsed) ELSE \(codeDisabled) END,
            used_user_id = redeemer.tally_id,
            redeemed_at = CASE WHEN s.redeemed_unix > 0 THEN to_timestamp(s.redeemed_unix) END
        FROM import_redemptions s
        LEFT JOIN import_map redeemer ON redeemer.source = $1 AND redeemer.kind = 'user' AND redeemer.source_id = s.user_source_id
        WHERE r.code_hash = s.code_hash AND r.status = \(codeEnabled) AND (s.status <> \(codeEnabled) OR s.deleted)
        RETURNING r.id, r.status
        """

    /// A `redemption.disable` row (actor the command line, as root) for each code of `$1` the
    /// import brought in disabled (`$3` false) or disabled (`$3` true: it was enabled before):
    /// who last changed a code's status decides who may enable it again, and new-api's stop is
    /// root's as far as Tally can tell (migration 0037 did the same for earlier imports).
    static let recordCodesDisabled = """
        INSERT INTO audit_log (actor_id, actor, action, target, before, after, tid)
        SELECT NULL, 'cli', 'redemption.disable', 'redemption:' || id,
               CASE WHEN $3 THEN jsonb_build_object('status', \(codeEnabled)::text) END,
               jsonb_build_object('status', \(codeDisabled)::text), $2
        FROM unnest($1::bigint[]) AS id
        """

    // MARK: Logs

    static let logColumns = """
        id, user_id, created_unix, type, content, model, quota, prompt_tokens, completion_tokens, use_time, is_stream,
        channel_id, token_id, grp, ip, status_code, cached_tokens, cache_write_tokens
        """

    /// The months of the staged rows, for their partitions.
    /// Staged logs of the months retention dropped ($1, `YYYY-MM`), left out.
    static let unstageDroppedMonths = """
        DELETE FROM import_log_rows WHERE to_char(to_timestamp(created_unix) AT TIME ZONE 'UTC', 'YYYY-MM') = ANY ($1::text[])
        """

    static let stagedMonths =
        "SELECT DISTINCT date_trunc('month', to_timestamp(created_unix) AT TIME ZONE 'UTC')::text FROM import_log_rows"

    /// Staged rows whose user is in Tally: the others (users gone from new-api) are skipped.
    static let eligibleLogs = """
        SELECT count(*) FROM import_log_rows r
        JOIN import_map mu ON mu.source = $1 AND mu.kind = 'user' AND mu.source_id = r.user_id
        """

    /// Inserts the staged logs not imported yet and keeps them in `ingest_new` for the rest of
    /// the ingest pipeline. Request id `<source>:<log id>`; kind chat (new-api logs carry none);
    /// an error log's status is the one in its `other`, else 500; no key → token 0.
    static let insertLogs = """
        WITH fresh AS (
            INSERT INTO request_logs (request_id, created_at, user_id, token_id, channel_id, model, "group", kind, status,
                is_stream, duration_ms, ip, error, prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, quota, batch_id)
            SELECT $1::text || ':' || r.id, to_timestamp(r.created_unix), mu.tally_id, coalesce(mt.tally_id, 0), mc.tally_id::integer,
                   r.model, CASE WHEN \(loggedGroupKept) THEN r.grp ELSE u."group" END, 'chat',
                   CASE WHEN r.type = 2 THEN 200 WHEN r.status_code BETWEEN 400 AND 599 THEN r.status_code ELSE 500 END,
                   r.is_stream, (least(greatest(r.use_time, 0), 2000000) * 1000)::integer, nullif(r.ip, ''), r.content,
                   greatest(r.prompt_tokens, 0), greatest(r.completion_tokens, 0), coalesce(r.cached_tokens, 0),
                   coalesce(r.cache_write_tokens, 0), r.quota, $2
            FROM import_log_rows r
            JOIN import_map mu ON mu.source = $1 AND mu.kind = 'user' AND mu.source_id = r.user_id
            JOIN users u ON u.id = mu.tally_id
            LEFT JOIN import_map mt ON mt.source = $1 AND mt.kind = 'token' AND mt.source_id = r.token_id
            LEFT JOIN import_map mc ON mc.source = $1 AND mc.kind = 'channel' AND mc.source_id = r.channel_id
            ORDER BY r.id
            ON CONFLICT (user_id, created_at, request_id) DO NOTHING
            RETURNING *)
        INSERT INTO ingest_new SELECT * FROM fresh
        """

    /// The batch's new rows, for its ledger and pending usage; emptied at every commit.
    static let createFresh = """
        CREATE TEMP TABLE IF NOT EXISTS ingest_new (LIKE request_logs INCLUDING DEFAULTS) ON COMMIT DELETE ROWS
        """

    /// A log keeps its group when Tally can hold the name; else (empty, "auto", or a name
    /// outside Tally's rule) it carries the group its account is in.
    private static let loggedGroupKept = "r.grp ~ \(validGroup) AND r.grp <> 'auto'"

    /// Group names of staged logs that the logs will not carry, with their counts.
    static let replacedLogGroups = """
        SELECT grp, count(*) FROM import_log_rows r WHERE r.grp <> '' AND NOT (\(loggedGroupKept)) GROUP BY grp
        """

    static let freshTotals = "SELECT count(*), coalesce(sum(quota), 0)::bigint FROM ingest_new"

    /// What the batch owes balances, per user × key, for the balance fold of migration 0010.
    /// `$1` is the batch id.
    static let appendPendingCharges = """
        INSERT INTO pending_charges (user_id, token_id, batch_id, quota, requests, last_at, user_returned, token_returned)
        SELECT user_id, token_id, $1, sum(quota), count(*), max(created_at), 0, 0
        FROM ingest_new GROUP BY user_id, token_id ORDER BY user_id, token_id
        """

    /// What the batch owes the usage rollups, per user × key × UTC day × model × group × kind,
    /// for the roll-up of migration 0010. `$1` is the batch id.
    static let appendPendingUsage = """
        INSERT INTO pending_usage (user_id, token_id, day, model, "group", kind, requests, failed_requests,
            prompt_tokens, completion_tokens, cached_tokens, cache_write_tokens, audio_input_tokens,
            audio_output_tokens, images, video_seconds, calls, predict_time, quota, batch_id)
        SELECT user_id, token_id, (created_at AT TIME ZONE 'UTC')::date, model, "group", kind, count(*),
            count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens),
            sum(cache_write_tokens), sum(audio_input_tokens), sum(audio_output_tokens), sum(images),
            sum(video_seconds), sum(calls), sum(predict_time), sum(quota), $1
        FROM ingest_new
        GROUP BY user_id, token_id, 3, model, "group", kind
        ORDER BY user_id, token_id, 3, model, "group", kind
        """

    /// Charges per user, key and month, dated at the last request they cover, so monthly
    /// statements of the imported months hold their own charges.
    static let appendLedger = """
        INSERT INTO ledger (at, user_id, token_id, kind, amount, requests, batch_id, tid, reason)
        SELECT max(created_at), user_id, nullif(token_id, 0), 'charge', -sum(quota), count(*), $2, $3, 'imported from ' || $1::text
        FROM ingest_new GROUP BY user_id, token_id, date_trunc('month', created_at AT TIME ZONE 'UTC')
        HAVING sum(quota) <> 0
        ORDER BY user_id, token_id
        """

    static let saveCursor = """
        INSERT INTO import_sources (source, last_log_id) VALUES ($1, $2)
        ON CONFLICT (source) DO UPDATE SET last_log_id = EXCLUDED.last_log_id WHERE import_sources.last_log_id < EXCLUDED.last_log_id
        """

    static let cursor = "SELECT last_log_id FROM import_sources WHERE source = $1"

    // MARK: Balances

    /// Locks the imported accounts (in id order) and folds what they have pending, so their
    /// balances below are the exact ones.
    static let foldImportedUsers = """
        SELECT tally_fold(ARRAY(SELECT m.tally_id FROM import_users s \(mapped("user"))), false)
        """

    /// The accounts a batch charged, folded in the batch's own transaction: a settler never
    /// folds an import's charges on its own, so their balance events can be dropped below.
    static let foldBatchUsers = """
        SELECT tally_fold(ARRAY(SELECT DISTINCT p.user_id FROM pending_charges p WHERE p.batch_id = $1), false)
        """

    /// The balance.low / balance.exhausted events the folds of this transaction queued: an
    /// import is no debit. Its charges were spent in new-api long ago and the balance is then
    /// set to new-api's, so an event would announce a balance that never was (docs/import.md).
    /// (The fold queues them pending, due at its transaction's start: found by the due index,
    /// not by reading the outbox's history at every batch.)
    static let dropBalanceEvents = """
        DELETE FROM webhook_outbox
        WHERE status = 'pending' AND next_attempt_at = now()
          AND xmin = pg_current_xact_id()::xid AND type IN ('balance.low', 'balance.exhausted')
        """

    /// One adjustment per account whose balance differs from new-api's. Until a run has set the
    /// account's balance (`import_map.balance_set_at`, migration 0040), and while its books hold
    /// nothing but what imports wrote (imported charges, nothing Tally did: a linked account's
    /// top-ups are its own history), it is the opening balance, dated before its first ledger row
    /// so that the statements of imported months open with it. Otherwise it is dated now, so
    /// that no statement already issued changes: found by a review, an account whose balance was 0
    /// at its first run (no row then) had a later run's adjustment dated months back. Its
    /// `balance_after` is the balance at its date: an opening's is its own amount (the charges
    /// come after it), a later one's is new-api's balance.
    static let adjustBalances = """
        INSERT INTO ledger (at, user_id, kind, amount, reason, idempotency_key, tid, balance_after)
        SELECT CASE WHEN o.opened THEN now()
                    ELSE least(u.created_at, (SELECT min(l.at) FROM ledger l WHERE l.user_id = u.id)) - interval '1 microsecond' END,
               u.id, 'adjust', s.quota - u.quota, 'balance imported from ' || $1::text,
               CASE WHEN o.opened THEN 'import:' || $1::text || ':' || $2::text || ':user:' || u.id ELSE 'import:' || $1::text || ':user:' || u.id || ':opening' END,
               $2, CASE WHEN o.opened THEN s.quota ELSE s.quota - u.quota END
        FROM import_users s \(mapped("user")) JOIN users u ON u.id = m.tally_id
        CROSS JOIN LATERAL (
            SELECT m.balance_set_at IS NOT NULL OR EXISTS (
                SELECT 1 FROM ledger l
                WHERE l.user_id = u.id AND coalesce(l.idempotency_key, '') NOT LIKE 'import:%'
                  AND NOT EXISTS (SELECT 1 FROM ingest_batches b WHERE b.id = l.batch_id AND b.source = 'import')
            ) AS opened) o
        WHERE u.quota <> s.quota
        ORDER BY u.id
        RETURNING amount
        """

    /// Every account of this source has had its balance set by now (`adjustBalances`).
    static let markBalancesSet = """
        UPDATE import_map m SET balance_set_at = now()
        FROM import_users s
        WHERE m.source = $1 AND m.kind = 'user' AND m.source_id = s.source_id AND m.balance_set_at IS NULL
        """

    static let setBalances = """
        UPDATE users u SET quota = s.quota, updated_at = now()
        FROM import_users s \(mapped("user")) WHERE u.id = m.tally_id AND u.quota <> s.quota
        """

    static let setTokenQuotas = """
        UPDATE tokens t SET remain_quota = s.remain_quota
        FROM import_tokens s \(mapped("token")) WHERE t.id = m.tally_id AND t.remain_quota <> s.remain_quota
        """

    /// new-api's own used_quota total, and what the imported logs account for.
    static let usedQuotaTotals = """
        SELECT coalesce(sum(s.used_quota), 0)::bigint, coalesce(sum(u.used_quota), 0)::bigint
        FROM import_users s \(mapped("user")) JOIN users u ON u.id = m.tally_id
        """
}
