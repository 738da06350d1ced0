#!/usr/bin/env bash
# End-to-end load on loopback, one worker everywhere: keygate against the framework's floor (a
# Pingora pass-through built from this crate) and nginx as a plain reverse proxy. The proxy
# under test runs on core 0; wrk, the upstream (nginx returning 200) and Redis on core 1.
# Rounds are interleaved; medians are printed with ratios. Part of `make bench`.
#   BENCH_SECONDS (8) per run, BENCH_ROUNDS (3), BENCH_CONNECTIONS (32)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${BENCH_SECONDS:-8}
rounds=${BENCH_ROUNDS:-3}
conns=${BENCH_CONNECTIONS:-32}
. benches/common.sh

up=$(port); redis_port=$(port); kg=$(port); kg_admin=$(port); pass=$(port); ngx=$(port)
upstream_start "$up"
redis_start "$redis_port" bench-key
keygate_start "$kg" "$kg_admin" "$redis_port" "$up"
taskset -c 0 ./target/release/examples/passthrough "127.0.0.1:$pass" "127.0.0.1:$up" 2>/dev/null & pids+=($!)
nginx_start proxy 0 "upstream up { server 127.0.0.1:$up; keepalive 64; }
server { listen 127.0.0.1:$ngx; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
wait_port "$pass"; wait_port "$ngx"

cat > "$work/valid.lua" <<'LUA'
local n = 0
request = function()
  n = (n + 1) % 1000
  return wrk.format("POST", "/ingest", {["X-ApiKey"] = string.format("bench-key-%03d", n), ["Content-Type"] = "application/json"}, '{"event":"crash","n":1}')
end
LUA
cat > "$work/unknown.lua" <<'LUA'
request = function()
  return wrk.format("POST", "/ingest", {["X-ApiKey"] = "bench-unknown-key", ["Content-Type"] = "application/json"}, '{"event":"crash","n":1}')
end
LUA
cat > "$work/random.lua" <<'LUA'
math.randomseed(os.time())
request = function()
  local key = string.format("%08x%08x%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  return wrk.format("POST", "/ingest", {["X-ApiKey"] = key, ["Content-Type"] = "application/json"}, '{"event":"crash","n":1}')
end
LUA

reads() { redis-cli -p "$redis_port" info commandstats | sed -n 's/^cmdstat_hgetall:calls=\([0-9]*\),.*/\1/p' | grep . || echo 0; }
run() { # name url script
    local before after out rps p99 requests
    before=$(reads)
    out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${seconds}s" --latency -s "$work/$3.lua" "$2")
    after=$(reads)
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    non2xx=$(awk '/Non-2xx/ {print $5}' <<<"$out")
    echo "$1 $rps $p99 $(( after - before )) $requests ${non2xx:-0}" >> "$work/results"
}
for round in $(seq "$rounds"); do
    echo "round $round of $rounds" >&2
    run keygate_valid "http://127.0.0.1:$kg" valid
    run passthrough "http://127.0.0.1:$pass" valid
    run nginx "http://127.0.0.1:$ngx" valid
    run keygate_unknown_repeated "http://127.0.0.1:$kg" unknown
    run keygate_unknown_random "http://127.0.0.1:$kg" random
done

python3 - "$work/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rps, p99, reads, requests, non2xx = line.split()
    unit = 1e-3 if p99.endswith("us") else 1 if p99.endswith("ms") else 1e3
    p99_ms = float(p99.rstrip("ums")) * unit
    rows.setdefault(name, []).append((float(rps), p99_ms, int(reads), int(requests)))
median = {n: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v),
              sum(r[2] for r in v) / max(1, sum(r[3] for r in v))) for n, v in rows.items()}
floor, classic = median["passthrough"][0], median["nginx"][0]
print(f"{'run':28} {'req/s':>10} {'p99 ms':>8} {'x pass-through':>15} {'x nginx':>8} {'Redis reads/req':>16}")
for name, (rps, p99, reads) in median.items():
    print(f"{name:28} {rps:10.0f} {p99:8.2f} {rps / floor:15.2f} {rps / classic:8.2f} {reads:16.4f}")
PY
