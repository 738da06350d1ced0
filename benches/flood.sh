#!/usr/bin/env bash
# Memory under floods: keygate behind a trusted proxy (X-Forwarded-For believed from 127.0.0.1)
# takes FLOOD_ROUNDS (3) floods at full rate, each from ever new client addresses with random
# keys, with a pause between them long enough for the per-IP limiter's sweep. It prints resident
# memory (VmRSS) idle, when the per-IP limiter held the most addresses during each flood, and
# after each pause; the addresses it held and forgot (from /metrics); and the bytes per held
# address (resident memory over idle, at the most held, divided by the addresses held). keygate on core 0,
# wrk, the upstream and Redis on core 1. Part of `make bench`.
#
# Checked, as a benchmark must (exit 1 otherwise): every answer to a flood is the gateway's own
# 4xx (no 5xx, nothing forwarded, no socket error); a valid key between floods is forwarded
# (200); the limiter never held more than FLOOD_MAX_ADDRESSES; and memory after the last pause
# is within FLOOD_RATCHET_MIB (8) of memory after the first.
#   FLOOD_SECONDS (10) per flood, FLOOD_PAUSE (15) seconds between, FLOOD_ROUNDS (3),
#   FLOOD_CONNECTIONS (32), FLOOD_MAX_ADDRESSES (1000000), FLOOD_RATCHET_MIB (8),
#   FLOOD_STORE_TIMEOUT_MS (1000)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FLOOD_SECONDS:-10}
pause=${FLOOD_PAUSE:-15}
rounds=${FLOOD_ROUNDS:-3}
conns=${FLOOD_CONNECTIONS:-32}
bound=${FLOOD_MAX_ADDRESSES:-1000000}
ratchet_mib=${FLOOD_RATCHET_MIB:-8}
. benches/common.sh

up=$(port); redis_port=$(port); kg=$(port); kg_admin=$(port)
upstream_start "$up"
redis_start "$redis_port" bench-key

# Not keygate_start: the per-IP limit is the point here, so it stays on (at its defaults). The
# store timeout is keygate_start's, for its reason (common.sh): Redis shares core 1 with wrk
# running flat out, and a filter false positive's read waiting past the default 50 ms for the
# core would be answered a correct 503 that measures the bench's scheduling.
store_timeout_ms=${FLOOD_STORE_TIMEOUT_MS:-1000}
cat > "$work/keygate.yaml" <<CONF
listen: ["127.0.0.1:$kg"]
admin_listen: "127.0.0.1:$kg_admin"
threads: ${KEYGATE_THREADS:-1}
grace_period_s: 0
upstream: {peers: ["127.0.0.1:$up"]}
store: {redis: {url: "redis://127.0.0.1:$redis_port/0", timeout_ms: $store_timeout_ms}}
rate_limit:
  unauthenticated_per_ip: {per_second: 10, burst: 20, max_addresses: $bound}
trusted_proxies: [127.0.0.1/32]
CONF
RUST_LOG=warn taskset -c "${KEYGATE_CPUS:-0}" ./target/release/keygate -c "$work/keygate.yaml" 2>"$work/keygate.log" &
kg_pid=$!
pids+=($kg_pid)
wait_port "$kg"
until curl -s "127.0.0.1:$kg_admin/metrics" | grep -q '^keygate_filter_trusted 1'; do sleep 0.2; done

# A new address for nearly every request (random over the public IPv4 space: repeats are rare
# at a few million requests), and a random key (unknown: the filter answers it).
cat > "$work/flood.lua" <<'LUA'
local seed = 0
setup = function(thread) seed = seed + 1; thread:set("seed", seed) end
init = function() math.randomseed(os.time() * 1000 + (seed or 0)) end
request = function()
  local ip = string.format("%d.%d.%d.%d", math.random(1, 223), math.random(0, 255), math.random(0, 255), math.random(1, 254))
  local key = string.format("%08x%08x%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  return wrk.format("POST", "/ingest", {["X-ApiKey"] = key, ["X-Forwarded-For"] = ip, ["Content-Type"] = "application/json"}, '{"event":"crash","n":1}')
end
LUA

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$kg_pid/status"; }
metric() { curl -s "127.0.0.1:$kg_admin/metrics" | awk -v m="$1" '$1 == m {print $2; found=1} END {if (!found) print 0}'; }
outcome() { metric "keygate_requests_total{outcome=\"$1\"}"; }
sum_outcomes() { local total=0 o; for o in "$@"; do total=$(python3 -c "print(int($total + $(outcome "$o")))"); done; echo "$total"; }
rejections_4xx() { sum_outcomes missing_key malformed_key unknown_key disabled_key rate_limited; }
other_outcomes="forwarded store_unavailable overloaded upstream_error"
# shellcheck disable=SC2086
others() { sum_outcomes $other_outcomes; }
# Each of the other outcomes as "name=count", to name what a failed check saw.
others_by_name() { local o; for o in $other_outcomes; do printf '%s=%s ' "$o" "$(outcome "$o")"; done; }
failed=0
fail() { echo "FAIL: $*" >&2; failed=1; }
probe() {
    local status
    status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "127.0.0.1:$kg/ingest" -H 'X-ApiKey: bench-key-007' -d '{}')
    [ "$status" = 200 ] || fail "a valid key between floods got $status"
}

probe
idle=$(rss_kib)
echo "idle: $((idle / 1024)) MiB resident" >&2
for round in $(seq "$rounds"); do
    before_4xx=$(rejections_4xx); before_others=$(others); before_by_name=$(others_by_name)
    # The most held and resident, sampled through the flood (the sweep may empty the limiter
    # at any moment of it).
    (
        most=0; most_rss=0
        while :; do
            h=$(metric keygate_ip_limiter_addresses); r=$(rss_kib)
            [ "${h%.*}" -gt "$most" ] && most=${h%.*} && most_rss=$r
            echo "$most $most_rss" > "$work/sampled"
            sleep 0.25
        done
    ) & sampler=$!
    out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${seconds}s" -s "$work/flood.lua" "http://127.0.0.1:$kg")
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    read -r held peak < "$work/sampled"
    forgotten=$(metric keygate_ip_limiter_forgotten_total)
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    errors=$(awk '/Socket errors/ {print}' <<<"$out")
    # Counted just after each answer is sent: let the last ones land.
    sleep 1
    got_4xx=$(( $(rejections_4xx) - before_4xx )); got_others=$(( $(others) - before_others ))
    [ "${non2xx:-0}" = "$requests" ] || fail "flood $round: ${non2xx:-0} of $requests answers not 2xx/3xx"
    [ "$got_others" = 0 ] ||
        fail "flood $round: $got_others answers were not the gateway's 4xx (outcomes before: $before_by_name; after: $(others_by_name))"
    [ "$got_4xx" -ge "$requests" ] || fail "flood $round: $got_4xx 4xx counted for $requests requests"
    [ -z "$errors" ] || fail "flood $round: $errors"
    python3 -c "import sys; sys.exit(0 if float('$held') <= $bound else 1)" || fail "flood $round: $held addresses held, bound $bound"
    # The sweep (every 10 s) forgets the addresses; then the allocator has its say.
    for _ in $(seq "$((pause * 5))"); do [ "$(metric keygate_ip_limiter_addresses)" = 0 ] && break; sleep 0.2; done
    sleep "$(( pause > 12 ? pause - 12 : 2 ))"
    after=$(rss_kib)
    probe
    echo "$round $requests $rps $held $forgotten $peak $after" >> "$work/results"
    echo "flood $round: $requests requests at $rps/s; at most $held addresses held (RSS then $((peak / 1024)) MiB); after the pause $((after / 1024)) MiB" >&2
done

python3 - "$work/results" "$idle" "$ratchet_mib" <<'PY' || failed=1
import sys
rows = [line.split() for line in open(sys.argv[1])]
idle, ratchet = int(sys.argv[2]), float(sys.argv[3])
mib = lambda kib: kib / 1024
print(f"idle: {mib(idle):.1f} MiB resident")
print(f"{'flood':>5} {'requests':>9} {'req/s':>9} {'most held':>9} {'forgotten':>10} {'RSS then MiB':>12} {'+idle':>7} {'B/held':>7} {'RSS after pause':>16} {'+idle':>7}")
for n, requests, rps, held, forgotten, peak, after in rows:
    held, peak, after = float(held), int(peak), int(after)
    per = (peak - idle) * 1024 / held if held else float("nan")
    print(f"{n:>5} {requests:>9} {float(rps):9.0f} {held:9.0f} {float(forgotten):10.0f} {mib(peak):12.1f} {mib(peak - idle):7.1f} {per:7.0f} {mib(after):16.1f} {mib(after - idle):7.1f}")
first, last = int(rows[0][6]), int(rows[-1][6])
print(f"after the last pause vs after the first: {mib(last - first):+.1f} MiB (allowed {ratchet:.0f})")
sys.exit(0 if mib(last - first) <= ratchet else 1)
PY
[ "$failed" = 0 ] || { echo "flood benchmark: FAILED (see above)" >&2; exit 1; }
