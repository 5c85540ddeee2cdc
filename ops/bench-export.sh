# shellcheck shell=bash
# ops/bench-export.sh — `ops/bench export`, sourced by ops/bench once PostgreSQL runs, the
# schema is migrated, prices are loaded and --users synthetic users exist (user id = token id).
# Uses ops/bench's variables: ROOT tally url users rows work server_pid.

# Last month, with shell arithmetic (no GNU date needed: the bench kit runs this on bare hosts).
this_year="$(date -u +%Y)" this_month="$((10#$(date -u +%m)))"
if ((this_month == 1)); then month="$((this_year - 1))-12"; else month="$(printf '%s-%02d' "$this_year" $((this_month - 1)))"; fi
month_start="$month-01"
month_end="$(date -u +%Y-%m)-01"
partition="request_logs_y${month%-*}m${month#*-}"
rm -rf "$work" && mkdir -p "$work"

# 1. The month: rows straight into its partition (set-based, no API), then the rollups, ledger
#    charges and balances ingest would have written, so the database audits clean.
"$tally" partitions --from "$month" --months 1 >&2
tally_log "loading $rows request rows into $partition (a few minutes)"
load_start="$(tally_now_us)"
psql -qX -v ON_ERROR_STOP=1 "$url" >/dev/null <<SQL
SET synchronous_commit = off;
INSERT INTO $partition (request_id, created_at, user_id, token_id, model, "group", kind, status, is_stream,
                        duration_ms, prompt_tokens, completion_tokens, cached_tokens, quota, price_version_id)
SELECT format('bench-%s', lpad(i::text, 10, '0')),
       timestamptz '$month_start 00:00:00+00' + (i - 1) * ((timestamptz '$month_end 00:00:00+00' - timestamptz '$month_start 00:00:00+00') / $rows),
       u, u,
       (ARRAY['gpt-4o','gpt-4o-mini','claude-sonnet-4','gemini-2.5-pro','deepseek-chat','gpt-4.1','o4-mini','qwen-plus'])[1 + (u * 5 + i % 3) % 8],
       'default', 'chat', CASE WHEN i % 50 = 0 THEN 500 ELSE 200 END, i % 2 = 0, 200 + i % 5000,
       100 + (i * 7919) % 4000, (i * 104729) % 1500, (i * 31) % 100,
       CASE WHEN i % 50 = 0 THEN 0 ELSE 1 + (i * 7919) % 4000 + 4 * ((i * 104729) % 1500) END, 1
FROM (SELECT i, 1 + floor(power(random(), 2) * $users)::int AS u FROM generate_series(1::bigint, $rows) AS i) g;
INSERT INTO usage_daily (day, user_id, token_id, model, "group", kind, requests, failed_requests, prompt_tokens,
                         completion_tokens, cached_tokens, quota)
SELECT (created_at AT TIME ZONE 'UTC')::date, user_id, token_id, model, "group", kind, count(*),
       count(*) FILTER (WHERE status >= 400), sum(prompt_tokens), sum(completion_tokens), sum(cached_tokens), sum(quota)
FROM $partition GROUP BY 1, 2, 3, 4, 5, 6;
CREATE TEMP TABLE charges AS
SELECT user_id, token_id, sum(quota) AS quota, count(*) AS requests FROM $partition GROUP BY 1, 2;
INSERT INTO ledger (at, user_id, token_id, kind, amount, requests, reason, usage_month)
SELECT timestamptz '$month_end 00:00:00+00', user_id, token_id, 'charge', -quota, requests, 'bench load', date '$month_start'
FROM charges WHERE quota <> 0;
UPDATE users u SET quota = u.quota - c.quota, used_quota = u.used_quota + c.quota, request_count = u.request_count + c.requests
FROM charges c WHERE u.id = c.user_id;
UPDATE tokens t SET used_quota = t.used_quota + c.quota, request_count = t.request_count + c.requests
FROM charges c WHERE t.id = c.token_id;
VACUUM (ANALYZE) $partition;
VACUUM (ANALYZE) usage_daily;
SQL
load_us=$(($(tally_now_us) - load_start))
rollup_rows="$(psql -qtAX "$url" -c "SELECT count(*) FROM usage_daily WHERE day >= '$month_start' AND day < '$month_end'")"
tally_log "loaded in $(tally_fmt_duration "$load_us"); $rollup_rows usage_daily rows for the month"

audit_start="$(tally_now_us)"
"$tally" audit --month "$month" >&2
audit_us=$(($(tally_now_us) - audit_start))

port=18472
access="$("$tally" admin create-user --username bench-admin --admin --json | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')"
MALLOC_ARENA_MAX="${MALLOC_ARENA_MAX:-2}" "$tally" serve --port "$port" --log-level warning --pool-size 8 &
server_pid=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
exports="http://127.0.0.1:$port/api/admin/exports/usage?month=$month"

# time_us CMD…: run CMD, print its wall time in microseconds.
time_us() {
    local start
    start="$(tally_now_us)"
    "$@" >/dev/null
    echo $(($(tally_now_us) - start))
}
http_get() { curl -fsS -o "$2" -H "Authorization: Bearer $access" "$1"; }

# 2. By user, from the rollups.
by_user=()
for _ in 1 2 3; do by_user+=("$(time_us http_get "$exports&by=user&format=csv" "$work/by-user.csv")"); done
by_user_cli="$(time_us "$tally" export --month "$month" --by user --quiet --out /dev/null)"
user_lines="$(($(wc -l <"$work/by-user.csv") - 1))"

# 3 and 4. Raw rows: the bare COPY (before and after, the faster counts), over HTTP while the
#    server's RSS is sampled every 50 ms, and through the CLI.
bare_copy() { psql -qAtX "$url" -c "COPY $partition TO STDOUT" >/dev/null; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$server_pid/status"; }
copy_a="$(time_us bare_copy)"
rss_idle="$(rss_kb)"
(while kill -0 "$server_pid" 2>/dev/null; do rss_kb; sleep 0.05; done) >"$work/rss" &
sampler=$!
raw_start="$(tally_now_us)"
raw_bytes="$(curl -fsS -o /dev/null -w '%{size_download}' -H "Authorization: Bearer $access" "$exports&raw=true")"
raw_http=$(($(tally_now_us) - raw_start))
kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true
rss_peak="$(sort -n "$work/rss" | tail -n 1)"
raw_cli="$(time_us "$tally" export --month "$month" --raw --quiet --out /dev/null)"
copy_b="$(time_us bare_copy)"
copy_us=$((copy_a < copy_b ? copy_a : copy_b))

by_user_best="$(printf '%s\n' "${by_user[@]}" | sort -n | head -n 1)"
awk -v rows="$rows" -v users="$users" -v rollups="$rollup_rows" -v load="$load_us" -v audit="$audit_us" \
    -v u1="${by_user[0]}" -v u2="${by_user[1]}" -v u3="${by_user[2]}" -v ubest="$by_user_best" -v ucli="$by_user_cli" \
    -v ulines="$user_lines" -v copy="$copy_us" -v http="$raw_http" -v cli="$raw_cli" -v bytes="$raw_bytes" \
    -v idle="$rss_idle" -v peak="$rss_peak" -v month="$month" 'BEGIN {
    printf "\nexport benchmark (%d request rows in %s, %d users, %d rollup rows; this machine, one run)\n", rows, month, users, rollups
    printf "  %-50s %10.2f s  (not a target; INSERT ... SELECT + rollups + ledger)\n", "load", load / 1e6
    printf "  %-50s %10.2f s\n", "tally audit --month", audit / 1e6
    printf "  %-50s %10.3f s  (target <= 1 s; runs %.3f %.3f %.3f; %d rows)\n", "by-user export over HTTP, best of 3", ubest / 1e6, u1 / 1e6, u2 / 1e6, u3 / 1e6, ulines
    printf "  %-50s %10.3f s\n", "by-user export, tally export", ucli / 1e6
    printf "  %-50s %10.0f rows/s  (%.1f s)\n", "baseline: bare COPY partition TO STDOUT (psql)", rows / (copy / 1e6), copy / 1e6
    printf "  %-50s %10.0f rows/s  (%.1f s, %.0f MB) -> %.2fx baseline (target >= 0.8x)\n", "raw export over HTTP (CSV)", rows / (http / 1e6), http / 1e6, bytes / 1e6, copy / http
    printf "  %-50s %10.0f rows/s  (%.1f s) -> %.2fx baseline\n", "raw export, tally export --raw", rows / (cli / 1e6), cli / 1e6, copy / cli
    printf "  %-50s %10.1f MB  (idle before: %.1f MB)\n", "server RSS peak while streaming the raw export", peak / 1024, idle / 1024
}'
