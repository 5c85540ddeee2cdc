-- Request logs, range-partitioned by month on created_at (UTC), and the daily rollup.

CREATE TABLE request_logs (
    request_id          text NOT NULL,
    created_at          timestamptz NOT NULL,
    user_id             bigint NOT NULL,
    token_id            bigint NOT NULL,
    channel_id          integer,
    model               text NOT NULL,
    "group"             text NOT NULL,
    kind                text NOT NULL,
    status              integer NOT NULL,
    is_stream           boolean NOT NULL DEFAULT false,
    duration_ms         integer NOT NULL DEFAULT 0,
    ip                  text,
    tid                 text,
    error               text,
    prompt_tokens       bigint NOT NULL DEFAULT 0,
    completion_tokens   bigint NOT NULL DEFAULT 0,
    cached_tokens       bigint NOT NULL DEFAULT 0,
    cache_write_tokens  bigint NOT NULL DEFAULT 0,
    audio_input_tokens  bigint NOT NULL DEFAULT 0,
    audio_output_tokens bigint NOT NULL DEFAULT 0,
    images              integer NOT NULL DEFAULT 0,
    size                text,
    quality             text,
    video_seconds       numeric NOT NULL DEFAULT 0,
    resolution          text,
    calls               integer NOT NULL DEFAULT 0,
    predict_time        numeric NOT NULL DEFAULT 0,
    quota               bigint NOT NULL,
    price_version_id    bigint,
    batch_id            bigint,
    PRIMARY KEY (request_id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX request_logs_user_idx ON request_logs (user_id, created_at);
CREATE INDEX request_logs_tid_idx ON request_logs (tid) WHERE tid IS NOT NULL;

-- Creates the monthly partitions request_logs_yYYYYmMM for `months` months starting at the
-- month containing `first`. Idempotent; returns the number of partitions it created.
CREATE FUNCTION tally_create_log_partitions(first timestamptz, months integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', first AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    created integer := 0;
    partition_name text;
BEGIN
    FOR i IN 0 .. months - 1 LOOP
        partition_name := format('request_logs_y%sm%s',
            to_char(month_start AT TIME ZONE 'UTC', 'YYYY'), to_char(month_start AT TIME ZONE 'UTC', 'MM'));
        IF to_regclass(partition_name) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF request_logs FOR VALUES FROM (%L) TO (%L)',
                partition_name, month_start, month_start + interval '1 month');
            created := created + 1;
        END IF;
        month_start := month_start + interval '1 month';
    END LOOP;
    RETURN created;
END $$;

SELECT tally_create_log_partitions(now() - interval '1 month', 4);

CREATE TABLE usage_daily (
    day                 date NOT NULL,          -- UTC
    user_id             bigint NOT NULL,
    token_id            bigint NOT NULL,
    model               text NOT NULL,
    "group"             text NOT NULL,
    kind                text NOT NULL,
    requests            bigint NOT NULL DEFAULT 0,
    failed_requests     bigint NOT NULL DEFAULT 0,
    prompt_tokens       bigint NOT NULL DEFAULT 0,
    completion_tokens   bigint NOT NULL DEFAULT 0,
    cached_tokens       bigint NOT NULL DEFAULT 0,
    cache_write_tokens  bigint NOT NULL DEFAULT 0,
    audio_input_tokens  bigint NOT NULL DEFAULT 0,
    audio_output_tokens bigint NOT NULL DEFAULT 0,
    images              bigint NOT NULL DEFAULT 0,
    video_seconds       numeric NOT NULL DEFAULT 0,
    calls               bigint NOT NULL DEFAULT 0,
    predict_time        numeric NOT NULL DEFAULT 0,
    quota               bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (day, user_id, token_id, model, "group", kind)
);
CREATE INDEX usage_daily_user_idx ON usage_daily (user_id, day);
