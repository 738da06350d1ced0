#!/usr/bin/env bash
# End-to-end load on loopback: keygate against its floors, each built as keygate is (mimalloc,
# the same Pingora runtime): a Pingora pass-through for forwarded requests
# (examples/passthrough.rs) and Pingora's cheapest rejection for rejected ones
# (examples/passthrough_reject.rs); nginx as a plain reverse proxy beside them. The proxy
# under test runs on core 0; wrk, the upstream (nginx returning 200) and Redis on core 1.
#
# Two stretch references, each run when its Debian package is installed (`make bench-deps`)
# and skipped with a note on stderr when not: nginx with Lua doing a cached key check
# (benches/refs/key_check.lua) for valid keys, and HAProxy with a static map of the keys for
# rejections (and valid keys). Both hold the same 1000 keys keygate finds in Redis, looked up
# by their SHA-256 as keygate's cache holds them, and answer an unknown key keygate's 403 and
# JSON body; each is one worker on core 0, like keygate. A second table gives keygate's runs
# against them, and against examples/passthrough_headers.rs: the pass-through plus the header
# edits every forwarded request of keygate's makes (X-Keygate-App, X-Forwarded-For, the three
# RateLimit-* fields), which splits keygate's cost over the floor into Pingora's header API
# and keygate's own work.
#
# Every run checks its answers (a Lua counter of statuses by class, wrk's socket errors): a
# valid-key run must be all 2xx, a rejection run all 4xx, neither with a socket error; any other
# answer is named on stderr and the script exits 1 after the table. Each run also reads the
# proxy's user and system CPU time (/proc/PID/stat) and the Redis record reads. Rounds are
# interleaved; the table holds medians, ratios to the matching floor (the median of each
# round's ratio) and Redis reads per request over all rounds. Part of `make bench`.
#   BENCH_SECONDS (8) per run, BENCH_ROUNDS (3), BENCH_CONNECTIONS (32),
#   KEYGATE_THREADS (1), KEYGATE_WORK_STEALING (false): the runtime of keygate and the floors,
#   BENCH_KEY_PREFIX (bench-key): the valid runs' keys; any other prefix shows the checks fail.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${BENCH_ROUNDS:-3}
. benches/common.sh

up=$(port); redis_port=$(port); kg=$(port); kg_admin=$(port); pass=$(port); reject=$(port); ngx=$(port)
headers=$(port)
upstream_start "$up"
redis_start "$redis_port" bench-key
key_map bench-key 1000
keygate_start "$kg" "$kg_admin" "$redis_port" "$up"
reference_start passthrough "$pass" "$up"; pass_pid=$reference_pid
reference_start passthrough_reject "$reject" "$up"; reject_pid=$reference_pid
reference_start passthrough_headers "$headers" "$up"; headers_pid=$reference_pid
nginx_start proxy 0 "upstream up { server 127.0.0.1:$up; keepalive 64; }
server { listen 127.0.0.1:$ngx; location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
wait_port "$ngx"
ngx_pid=$(cat "$work/proxy/nginx.pid")
nginx_lua_pid= haproxy_pid=
if have_nginx_lua; then
    nginx_lua=$(port)
    nginx_lua_start "$nginx_lua" "$up"
else
    echo "note: nginx's Lua module is not installed (Debian libnginx-mod-http-lua, or make bench-deps): the nginx_lua reference is skipped" >&2
fi
if have_haproxy; then
    haproxy=$(port)
    haproxy_start "$haproxy" "$up"
else
    echo "note: HAProxy is not installed (Debian haproxy, or make bench-deps): the haproxy references are skipped" >&2
fi

valid_keys_script
unknown_keys_scripts

echo "threads: $threads, work stealing: $work_stealing; load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq "$rounds"); do
    echo "round $round of $rounds" >&2
    # A wrong answer is recorded (and named) by checked_wrk; the rounds go on, the exit says it.
    checked_wrk keygate_valid 2xx "$keygate_pid" "http://127.0.0.1:$kg" valid || true
    checked_wrk passthrough 2xx "$pass_pid" "http://127.0.0.1:$pass" valid || true
    checked_wrk passthrough_headers 2xx "$headers_pid" "http://127.0.0.1:$headers" valid || true
    checked_wrk nginx 2xx "$ngx_pid" "http://127.0.0.1:$ngx" valid || true
    if [ -n "$nginx_lua_pid" ]; then
        checked_wrk nginx_lua 2xx "$nginx_lua_pid" "http://127.0.0.1:$nginx_lua" valid || true
    fi
    if [ -n "$haproxy_pid" ]; then
        checked_wrk haproxy_valid 2xx "$haproxy_pid" "http://127.0.0.1:$haproxy" valid || true
    fi
    checked_wrk keygate_unknown_repeated 4xx "$keygate_pid" "http://127.0.0.1:$kg" unknown || true
    checked_wrk keygate_unknown_random 4xx "$keygate_pid" "http://127.0.0.1:$kg" random || true
    checked_wrk passthrough_reject 4xx "$reject_pid" "http://127.0.0.1:$reject" unknown || true
    if [ -n "$haproxy_pid" ]; then
        checked_wrk haproxy_reject 4xx "$haproxy_pid" "http://127.0.0.1:$haproxy" unknown || true
    fi
done

python3 - "$work/results" <<'PY'
import statistics, sys
from collections import defaultdict
# Each run's floor: forwarded requests against the pass-through, rejections against the
# cheapest rejection.
floors = {"keygate_valid": "passthrough", "nginx": "passthrough",
          "keygate_unknown_repeated": "passthrough_reject", "keygate_unknown_random": "passthrough_reject",
          "nginx_lua": "passthrough", "passthrough_headers": "passthrough", "haproxy_valid": "passthrough", "haproxy_reject": "passthrough_reject"}
# The stretch references keygate's runs are set against, in a second table (when they ran).
references = [("keygate_valid", "passthrough_headers"), ("keygate_valid", "nginx_lua"), ("keygate_valid", "haproxy_valid"),
              ("keygate_unknown_repeated", "haproxy_reject"), ("keygate_unknown_random", "haproxy_reject")]
runs = defaultdict(list)
for line in open(sys.argv[1]):
    name, rps, p50, p99, requests, user, system, reads, *rest = line.split()
    requests = max(1, int(requests))
    runs[name].append({"rps": float(rps), "p50": float(p50), "p99": float(p99),
                       "user": int(user) / requests, "sys": int(system) / requests,
                       "reads": int(reads), "requests": requests})
med = lambda name, field: statistics.median(r[field] for r in runs[name])
# Over every round: a valid key is read once, at its first sight, whichever round that is.
reads = lambda name: sum(r["reads"] for r in runs[name]) / sum(r["requests"] for r in runs[name])
print(f"{'run':26} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'user us/req':>12} {'sys us/req':>11} "
      f"{'floor':>19} {'x floor':>8} {'user us - floor':>16} {'Redis reads/req':>16}")
for name in runs:
    floor, ratio, extra = floors.get(name), "", ""
    if floor in runs:
        pairs = zip(runs[name], runs[floor])
        ratio = f"{statistics.median(a['rps'] / b['rps'] for a, b in pairs):.2f}"
        extra = f"{med(name, 'user') - med(floor, 'user'):+.1f}"
    print(f"{name:26} {med(name, 'rps'):9.0f} {med(name, 'p50'):7.2f} {med(name, 'p99'):7.2f} "
          f"{med(name, 'user'):12.1f} {med(name, 'sys'):11.1f} {floor or '-':>19} {ratio:>8} {extra:>16} "
          f"{reads(name):16.4f}")
ran = [(name, ref) for name, ref in references if name in runs and ref in runs]
if ran:
    print()
    print(f"{'run':26} {'reference':>19} {'x reference':>12} {'user us - ref':>14} {'sys us - ref':>13}")
for name, ref in ran:
    ratio = statistics.median(a["rps"] / b["rps"] for a, b in zip(runs[name], runs[ref]))
    print(f"{name:26} {ref:>19} {ratio:12.2f} {med(name, 'user') - med(ref, 'user'):+14.1f} "
          f"{med(name, 'sys') - med(ref, 'sys'):+13.1f}")
PY
fail_if_any
