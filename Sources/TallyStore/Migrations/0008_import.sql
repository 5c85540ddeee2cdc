-- Imports from other billing systems (`tally import new-api`, issue 9).

-- Which source row became which Tally row, so that a second run updates what it created
-- instead of creating it again. `source` is the import's --source name (default 'new-api').
CREATE TABLE import_map (
    source    text NOT NULL,
    kind      text NOT NULL CHECK (kind IN ('user', 'token', 'channel')),
    source_id bigint NOT NULL,
    tally_id  bigint NOT NULL,
    PRIMARY KEY (source, kind, source_id),
    UNIQUE (source, kind, tally_id)
);

-- How far each source's logs have been read (the highest log id copied), so a re-run reads
-- only what is new (and a window before it, for rows that committed late).
CREATE TABLE import_sources (
    source      text PRIMARY KEY,
    last_log_id bigint NOT NULL DEFAULT 0
);
