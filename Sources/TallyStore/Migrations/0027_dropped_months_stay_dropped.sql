-- A month retention dropped is never made again (found by a review of retention).
--
-- Ingest made any month a line needed, and after `tally retention` dropped a month, a resent
-- batch of it (a gateway's late logs) found no row to conflict with: the month's partition was
-- made again and every line charged a second time. A restarted instance also made last month
-- again, empty, for the streamed batches around a month's end, and `tally audit` then found its
-- rollups without request rows. Retention records each drop in the audit log
-- (`retention.drop`, target `request_logs:YYYY-MM`); partitions are no longer made for those
-- months, and ingest rejects their lines (`month_dropped`).

CREATE INDEX audit_log_retention_idx ON audit_log (target) WHERE action = 'retention.drop';

CREATE OR REPLACE FUNCTION tally_create_log_partitions(first timestamptz, months integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', first AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    created integer := 0;
    partition_name text;
BEGIN
    FOR i IN 0 .. months - 1 LOOP
        partition_name := format('request_logs_y%sm%s',
            to_char(month_start AT TIME ZONE 'UTC', 'YYYY'), to_char(month_start AT TIME ZONE 'UTC', 'MM'));
        IF to_regclass(partition_name) IS NULL AND NOT EXISTS (
            SELECT 1 FROM audit_log WHERE action = 'retention.drop'
              AND target = 'request_logs:' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY-MM')) THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF request_logs FOR VALUES FROM (%L) TO (%L)',
                partition_name, month_start, month_start + interval '1 month');
            created := created + 1;
        END IF;
        month_start := month_start + interval '1 month';
    END LOOP;
    RETURN created;
END $$;
