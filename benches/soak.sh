#!/usr/bin/env bash
# Soak: keygate at about 60% of its measured capacity for SOAK_SECONDS (600), with a Redis
# fault every minute (a 2 s freeze, then the next minute a restart on its persisted data, in
# turn). After
# each minute it records resident memory, open files and p99, and at the end checks that memory
# grew under 5% after the first minute, open files stayed flat, no valid key was refused, and
# every run was answered 2xx only, without a socket error.
# `make soak`; not in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
total=${SOAK_SECONDS:-600}
conns=${SOAK_CONNECTIONS:-32}
. benches/common.sh

up=$(port); redis_port=$(port); kg=$(port); kg_admin=$(port)
upstream_start "$up"
redis_start "$redis_port" soak-key
keygate_start "$kg" "$kg_admin" "$redis_port" "$up" "cache: {ttl_s: 30}"
kg_pid=$keygate_pid

script() { # delay in ms per request and connection
    wrk_script load <<LUA
local n = 0
request = function()
  n = (n + 1) % 1000
  return wrk.format("POST", "/ingest", {["X-ApiKey"] = string.format("soak-key-%03d", n)}, '{"event":1}')
end
delay = function() return $1 end
LUA
}
# run NAME CONNECTIONS SECONDS: one checked run of valid keys (all 2xx, no socket error).
run() {
    BENCH_CONNECTIONS=$2 BENCH_SECONDS=$3 checked_wrk "$1" 2xx "$kg_pid" "http://127.0.0.1:$kg" load || true
}
# field NAME N: field N of run NAME's line in the results (see checked_wrk).
field() { awk -v name="$1" -v n="$2" '$1 == name {print $n}' "$work/results"; }
script 0
run capacity "$conns" 10
capacity=$(field capacity 2 | cut -d. -f1)
# wrk paces only in whole milliseconds per request: pace each connection at 1 ms and choose how
# many connections make 60% of capacity.
script 1
run paced "$conns" 5
paced=$(field paced 2 | cut -d. -f1)
conns=$(python3 -c "print(max(1, round($conns * 0.6 * $capacity / $paced)))")
echo "capacity ${capacity} req/s; soaking at about 60% (${conns} connections, 1 ms apart) for ${total}s" >&2

footprint() { echo "$(( $(awk '{print $2}' /proc/$kg_pid/statm) * 4 )) $(ls /proc/$kg_pid/fd | wc -l)"; }
printf '%-6s %10s %10s %8s %8s %8s %8s %s\n' minute req/s p99_ms rss_kb fds non2xx sock_err fault
minute=0; first_rss=""
while (( minute * 60 < total )); do
    minute=$((minute + 1))
    run "minute-$minute" "$conns" 60 &
    wrk_pid=$!
    sleep 30
    if (( minute % 2 == 1 )); then
        fault="freeze 2s"
        kill -STOP "$redis_pid"; sleep 2; kill -CONT "$redis_pid"
    else
        fault="restart"
        redis_restart "$redis_port"
    fi
    wait "$wrk_pid"
    # name req/s p50 p99 requests user sys reads 1xx 2xx 3xx 4xx 5xx socket_errors
    read -r _ rps _ p99 requests _ _ _ _ ok _ _ _ errors <<<"$(grep "^minute-$minute " "$work/results")"
    read -r rss fds <<<"$(footprint)"
    [ -z "$first_rss" ] && first_rss=$rss && first_fds=$fds
    printf '%-6s %10.0f %10.2f %8s %8s %8s %8s %s\n' "$minute" "$rps" "$p99" "$rss" "$fds" \
        "$((requests - ok))" "$errors" "$fault"
    last_rss=$rss; last_fds=$fds
done
refusals=$(curl -s "127.0.0.1:$kg_admin/metrics" | awk '/^keygate_requests_total\{outcome="(unknown_key|disabled_key|missing_key|malformed_key)"\}/ {s += $2} END {print s + 0}')
growth=$(python3 -c "print(round(100 * ($last_rss - $first_rss) / $first_rss, 2))")
echo "resident memory after minute 1: ${first_rss} kB, at the end: ${last_rss} kB (${growth}%); open files ${first_fds} -> ${last_fds}; valid keys refused: ${refusals}"
# Every run's answers count too: checked_wrk recorded any that was not all 2xx or had a
# socket error.
answers_ok=$([ -s "$work/failures" ] && echo False || echo True)
python3 -c "import sys; sys.exit(0 if $growth < 5 and abs($last_fds - $first_fds) <= 10 and $refusals == 0 and $answers_ok else 1)" \
    && echo "soak: PASS" || { echo "soak: FAIL"; [ -s "$work/failures" ] && cat "$work/failures"; exit 1; }
