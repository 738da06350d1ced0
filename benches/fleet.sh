#!/usr/bin/env bash
# Fleet limits end to end, on one Redis: (1) the valid-key hot path of a gateway with
# `rate_limit.scope: fleet` beside the same gateway with `scope: local` (interleaved rounds,
# req/s and CPU per request: the exchange runs in the background, so they should match); (2) the
# overshoot: three fleet gateways, each loaded by its own wrk at full speed with one key of a
# small rate, against the bound `rate*T + burst + N*rate*sync_ms/1000`. Every answer is checked:
# the hot-path runs all 2xx, the overshoot runs only 2xx or 429. Part of `make bench`.
#   BENCH_SECONDS (8), BENCH_ROUNDS (3), BENCH_CONNECTIONS (32); FLEET_RATE (200), FLEET_BURST
#   (50), FLEET_SYNC_MS (100), FLEET_SECONDS (10)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${BENCH_ROUNDS:-3}
rate=${FLEET_RATE:-200}; burst=${FLEET_BURST:-50}; sync_ms=${FLEET_SYNC_MS:-100}
fleet_seconds=${FLEET_SECONDS:-10}
. benches/common.sh

up=$(port); redis_port=$(port)
upstream_start "$up"
redis_start "$redis_port" bench-key

valid_keys_script

# (1) The hot path: the same gateway twice, once per scope; one loaded at a time.
unlimited="per_second: 1000000000, burst: 1000000000, unauthenticated_per_ip: {per_second: 1000000000, burst: 1000000000}"
local_port=$(port); local_admin=$(port); fleet_port=$(port); fleet_admin=$(port)
KEYGATE_RATE_LIMIT="{scope: local, $unlimited}" keygate_start "$local_port" "$local_admin" "$redis_port" "$up"
local_pid=$keygate_pid
KEYGATE_RATE_LIMIT="{scope: fleet, sync_ms: $sync_ms, $unlimited}" \
    keygate_start "$fleet_port" "$fleet_admin" "$redis_port" "$up"
fleet_pid=$keygate_pid
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq "$rounds"); do
    echo "round $round of $rounds" >&2
    checked_wrk scope_local 2xx "$local_pid" "http://127.0.0.1:$local_port" valid || true
    checked_wrk scope_fleet 2xx "$fleet_pid" "http://127.0.0.1:$fleet_port" valid || true
done
kill "$local_pid" "$fleet_pid"

# (2) The overshoot: three fleet gateways on the key `fleet-bench-key` (rate and burst in its
# record), each under its own wrk at once. What the upstream saw is what the 2xx counts say.
echo "HSET keygate:key:$(printf '%s' fleet-bench-key | sha256sum | cut -d' ' -f1) app bench rate $rate burst $burst" \
    | redis-cli -p "$redis_port" >/dev/null
wrk_script limited <<'LUA'
request = function()
  return wrk.format("POST", "/ingest", {["X-ApiKey"] = "fleet-bench-key", ["Content-Type"] = "application/json"}, '{"event":"crash","n":1}')
end
LUA
gateways=(); wrk_pids=()
for n in 0 1 2; do
    p=$(port)
    KEYGATE_CPUS=$((n % 2)) KEYGATE_RATE_LIMIT="{scope: fleet, sync_ms: $sync_ms}" \
        keygate_start "$p" "$(port)" "$redis_port" "$up"
    gateways+=("$p")
done
for n in 0 1 2; do
    WRK_COUNTS="$work/fleet-$n.counts" taskset -c $((n % 2)) wrk -t1 -c8 -d"${fleet_seconds}s" \
        -s "$work/limited.lua" "http://127.0.0.1:${gateways[$n]}" > "$work/fleet-$n.wrk" &
    wrk_pids+=($!)
done
for pid in "${wrk_pids[@]}"; do wait "$pid"; done

python3 - "$work" "$rate" "$burst" "$sync_ms" <<'PY'
import re, statistics, sys
work, rate, burst, sync_ms = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rows = {}
for line in open(f"{work}/results"):
    f = line.split()
    rows.setdefault(f[0], []).append((float(f[1]), int(f[4]), int(f[5]), int(f[6])))
def median(name, i): return statistics.median(r[i] for r in rows[name])
def per_request(name, i): return sum(r[i] for r in rows[name]) / sum(r[1] for r in rows[name])
print(f"{'run':14} {'req/s':>10} {'user us/req':>12} {'sys us/req':>11} {'x scope local':>14}")
for name in ("scope_local", "scope_fleet"):
    print(f"{name:14} {median(name, 0):10.0f} {per_request(name, 2):12.1f} {per_request(name, 3):11.1f} "
          f"{median(name, 0) / median('scope_local', 0):14.3f}")
forwarded, refused, other, seconds = 0, 0, 0, 0.0
for n in range(3):
    counts = list(map(int, open(f"{work}/fleet-{n}.counts").read().split()))
    out = open(f"{work}/fleet-{n}.wrk").read()
    seconds = max(seconds, float(re.search(r"requests in ([\d.]+)s", out).group(1)))
    forwarded += counts[1]
    refused += counts[3]
    other += counts[0] + counts[2] + counts[4]
bound = rate * seconds + burst + 3 * rate * sync_ms / 1000
print(f"\nthree fleet gateways, one key at rate {rate:g}/s burst {burst:g}, sync_ms {sync_ms:g}, {seconds:.2f} s:")
print(f"  forwarded {forwarded} (rate*T {rate * seconds:.0f}, bound {bound:.0f}); refused 429: {refused}")
print(f"  overshoot over rate*T: {forwarded - rate * seconds:.0f} of the {bound - rate * seconds:.0f} the bound allows")
if other:
    print(f"FAIL fleet overshoot: {other} answers neither 2xx nor 4xx", file=sys.stderr)
    sys.exit(1)
if forwarded > bound:
    print(f"FAIL fleet overshoot: {forwarded} forwarded, over the bound {bound:.0f}", file=sys.stderr)
    sys.exit(1)
PY
fail_if_any
