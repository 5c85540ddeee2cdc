-- Where PostgreSQL's time went during a benchmark (ops/bench and the kit's run, --statements):
-- pg_stat_statements, preloaded with track = all and reset once the set-up was done. Wall time
-- per statement, so on a busy machine it includes waiting for a core. A nested statement (a
-- function's, marked "in") is also counted in the call that ran it. The baselines' own
-- statements are there too: COPY bench_raw_logs (raw COPY) and the bench_* tables (pgbench).
\pset footer off
SELECT calls,
       round(total_exec_time)::bigint AS total_ms,
       round((total_exec_time / calls)::numeric, 2) AS ms_per_call,
       rows,
       round(wal_bytes / 1e6, 1) AS wal_mb,
       CASE WHEN toplevel THEN '' ELSE 'in' END AS nested,
       left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS statement
FROM pg_stat_statements
ORDER BY total_exec_time DESC
LIMIT 20;
