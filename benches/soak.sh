#!/usr/bin/env bash
# Soak: keygate at about 60% of its measured capacity for SOAK_SECONDS (600), with a Redis
# fault every minute (a 2 s freeze, then the next minute a restart on its persisted data, in
# turn). After
# each minute it records resident memory, open files and p99, and at the end checks that memory
# grew under 5% after the first minute, open files stayed flat, and no valid key was refused.
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
    cat > "$work/load.lua" <<LUA
local n = 0
request = function()
  n = (n + 1) % 1000
  return wrk.format("POST", "/ingest", {["X-ApiKey"] = string.format("soak-key-%03d", n)}, '{"event":1}')
end
delay = function() return $1 end
LUA
}
script 0
rate() { taskset -c 1 wrk -t1 -c"$1" -d"$2" -s "$work/load.lua" "http://127.0.0.1:$kg" | awk '/^Requests\/sec/ {printf "%d", $2}'; }
capacity=$(rate "$conns" 10s)
# wrk paces only in whole milliseconds per request: pace each connection at 1 ms and choose how
# many connections make 60% of capacity.
script 1
paced=$(rate "$conns" 5s)
conns=$(python3 -c "print(max(1, round($conns * 0.6 * $capacity / $paced)))")
echo "capacity ${capacity} req/s; soaking at about 60% (${conns} connections, 1 ms apart) for ${total}s" >&2

footprint() { echo "$(( $(awk '{print $2}' /proc/$kg_pid/statm) * 4 )) $(ls /proc/$kg_pid/fd | wc -l)"; }
printf '%-6s %10s %10s %8s %8s %8s %s\n' minute req/s p99_ms rss_kb fds non2xx fault
minute=0; first_rss=""
while (( minute * 60 < total )); do
    minute=$((minute + 1))
    taskset -c 1 wrk -t1 -c"$conns" -d60s --latency -s "$work/load.lua" "http://127.0.0.1:$kg" > "$work/minute.out" &
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
    out=$(cat "$work/minute.out")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out"); non2xx=${non2xx:-0}
    read -r rss fds <<<"$(footprint)"
    [ -z "$first_rss" ] && first_rss=$rss && first_fds=$fds
    printf '%-6s %10s %10s %8s %8s %8s %s\n' "$minute" "$rps" "$p99" "$rss" "$fds" "$non2xx" "$fault"
    last_rss=$rss; last_fds=$fds
done
refusals=$(curl -s "127.0.0.1:$kg_admin/metrics" | awk '/^keygate_requests_total\{outcome="(unknown_key|disabled_key|missing_key|malformed_key)"\}/ {s += $2} END {print s + 0}')
growth=$(python3 -c "print(round(100 * ($last_rss - $first_rss) / $first_rss, 2))")
echo "resident memory after minute 1: ${first_rss} kB, at the end: ${last_rss} kB (${growth}%); open files ${first_fds} -> ${last_fds}; valid keys refused: ${refusals}"
python3 -c "import sys; sys.exit(0 if $growth < 5 and abs($last_fds - $first_fds) <= 10 and $refusals == 0 else 1)" \
    && echo "soak: PASS" || { echo "soak: FAIL"; exit 1; }
