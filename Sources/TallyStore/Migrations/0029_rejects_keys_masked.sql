-- Rejected lines are kept as written (ingest_rejects.raw) and admins read them
-- (GET /api/admin/logs): the API keys in them are masked to `sk-…` + their last 6 characters,
-- as TallyCore's KeyRedaction does for every line rejected from now on. Same rules, in the same
-- order: the value of a "key" member, a Bearer token, any other sk- key.
UPDATE ingest_rejects
SET raw = regexp_replace(
        regexp_replace(
            regexp_replace(raw, '("key"\s*:\s*")(sk-)?[^"\\]+([^"\\]{6})"', '\1\2…\3"', 'g'),
            '(bearer\s+)[^\s"\\]+([^\s"\\]{6})', '\1…\2', 'gi'),
        '(^|[^A-Za-z0-9_-])sk-[A-Za-z0-9_-]+([A-Za-z0-9_-]{6})', '\1sk-…\2', 'g')
WHERE raw ~* '"key"|bearer|sk-';
