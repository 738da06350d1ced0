# Shared by the benches' scripts (e2e.sh, instructions.sh, slowloris.sh, flood.sh, soak.sh,
# fleet.sh): processes on loopback that clean up after themselves, free ports, a fast upstream
# (nginx answering 200), a Redis loaded with keys, keygate and its references on the same
# runtime, and wrk runs that check their answers and read the proxy's CPU time.

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_port PORT: up to PORT_WAIT_TRIES (100) tenths of a second for PORT to open.
wait_port() {
    for _ in $(seq "${PORT_WAIT_TRIES:-100}"); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done
    echo "port $1 never opened" >&2
    exit 1
}

nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

# nginx_start NAME CORE SERVER-BLOCKS [MAIN-DIRECTIVES]: one nginx worker of our own, pinned to
# CORE; MAIN-DIRECTIVES (e.g. load_module) go first, in the main context.
nginx_start() {
    mkdir -p "$work/$1"
    cat > "$work/$1/nginx.conf" <<CONF
${4:-}
daemon off; master_process off; user root; worker_processes 1;
error_log $work/$1/error.log; pid $work/$1/nginx.pid;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $work/$1/body; proxy_temp_path $work/$1/proxy;
  fastcgi_temp_path $work/$1/f; uwsgi_temp_path $work/$1/u; scgi_temp_path $work/$1/s;
  keepalive_requests 1000000;
$3
}
CONF
    taskset -c "$2" "$nginx_bin" -p "$work/$1" -c "$work/$1/nginx.conf" -e "$work/$1/error.log" &
    pids+=($!)
}

# upstream_start PORT: the ingestion node, answering 200 at once, on core 1.
upstream_start() {
    nginx_start upstream 1 "server { listen 127.0.0.1:$1; location / { return 200 '{\"ok\":true}'; } }"
    wait_port "$1"
}

# redis_start PORT PREFIX: Redis on core 1 with 1000 keys PREFIX-000 … PREFIX-999 (app bench),
# persisted (append-only file) like a production Redis, so redis_restart brings them back;
# sets redis_pid.
redis_start() {
    redis_run "$1"
    for n in $(seq -w 0 999); do
        echo "HSET keygate:key:$(printf '%s-%s' "$2" "$n" | sha256sum | cut -d' ' -f1) app bench"
    done | redis-cli -p "$1" >/dev/null
}

redis_run() {
    mkdir -p "$work/redis"
    taskset -c 1 redis-server --port "$1" --bind 127.0.0.1 --dir "$work/redis" --save '' --appendonly yes \
        --appendfsync always >/dev/null &
    redis_pid=$!
    pids+=($redis_pid)
    wait_port "$1"
}

# redis_restart PORT: stop Redis the way a crash-free restart does, and start it on its data.
redis_restart() {
    kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
    redis_run "$1"
}

# The runtime keygate and its references are given alike: KEYGATE_THREADS (1) worker threads
# and KEYGATE_WORK_STEALING (false: keygate's default `work_stealing`).
threads=${KEYGATE_THREADS:-1}
work_stealing=${KEYGATE_WORK_STEALING:-false}
runtime_yaml() {
    echo "threads: $threads"
    echo "work_stealing: $work_stealing"
}

# What keygate and the references are started under: nothing, unless a script sets it (the
# instruction counts of benches/instructions.sh run them under valgrind).
launcher=

# keygate_start PORT ADMIN REDIS UPSTREAM [EXTRA-YAML]: on KEYGATE_CPUS (core 0), limits off
# unless KEYGATE_RATE_LIMIT gives the `rate_limit` section's flow mapping; sets keygate_pid.
# Its config is $work/keygate-PORT.yaml and its log $work/keygate-PORT.log. Redis shares core 1
# with wrk running flat out, so a filter false positive's read can wait tens of milliseconds for
# the core: a store timeout of 1 s keeps those reads answered (a 503 there would measure the
# bench's scheduling, not keygate).
keygate_start() {
    local limits="{per_second: 1000000000, burst: 1000000000, unauthenticated_per_ip: {per_second: 1000000000, burst: 1000000000}}"
    cat > "$work/keygate-$1.yaml" <<CONF
listen: ["127.0.0.1:$1"]
admin_listen: "127.0.0.1:$2"
$(runtime_yaml)
grace_period_s: 0
upstream: {peers: ["127.0.0.1:$4"]}
store: {redis: {url: "redis://127.0.0.1:$3/0", timeout_ms: 1000}}
rate_limit: ${KEYGATE_RATE_LIMIT:-$limits}
${5:-}
CONF
    RUST_LOG=warn taskset -c "${KEYGATE_CPUS:-0}" $launcher ./target/release/keygate -c "$work/keygate-$1.yaml" \
        2>"$work/keygate-$1.log" &
    keygate_pid=$!
    pids+=($keygate_pid)
    wait_port "$1"
    until curl -s "127.0.0.1:$2/metrics" | grep -q '^keygate_filter_trusted 1'; do sleep 0.2; done
}

# reference_start NAME PORT UPSTREAM: an example from examples/ (passthrough,
# passthrough_reject) on core 0, with keygate's runtime; sets reference_pid.
reference_start() {
    taskset -c "${KEYGATE_CPUS:-0}" $launcher "./target/release/examples/$1" "127.0.0.1:$2" "127.0.0.1:$3" \
        "$threads" "$work_stealing" 2>"$work/$1.log" &
    reference_pid=$!
    pids+=($reference_pid)
    wait_port "$2"
}

# The stretch references (benches/e2e.sh), each present only when its Debian package is:
# nginx's Lua module (libnginx-mod-http-lua, with the NDK it needs) and HAProxy (haproxy).
nginx_modules=/usr/lib/nginx/modules
have_nginx_lua() { [ -e "$nginx_modules/ndk_http_module.so" ] && [ -e "$nginx_modules/ngx_http_lua_module.so" ]; }
haproxy_bin=$(command -v haproxy || echo /usr/sbin/haproxy)
have_haproxy() { [ -x "$haproxy_bin" ]; }

# key_map PREFIX COUNT: $work/keys.map, "<id> bench" a line for the keys PREFIX-000 …
# (redis_start's keys), ids as keygate's store holds them (lowercase hex SHA-256 of the key).
key_map() {
    python3 - "$1" "$2" > "$work/keys.map" <<'PY'
import hashlib, sys
prefix, count = sys.argv[1], int(sys.argv[2])
for n in range(count):
    print(hashlib.sha256(f"{prefix}-{n:03d}".encode()).hexdigest(), "bench")
PY
}

# nginx_lua_start PORT UPSTREAM: nginx with Lua doing a cached key check (benches/refs/
# key_check.lua, the keys of $work/keys.map in a Lua table loaded at start), one worker on
# KEYGATE_CPUS (core 0): 403 and keygate's JSON body for an unknown key, a known one proxied
# with keepalive to UPSTREAM; sets nginx_lua_pid.
nginx_lua_start() {
    nginx_start nginx_lua "${KEYGATE_CPUS:-0}" "lua_package_path '$PWD/benches/refs/?.lua;;';
init_by_lua_block { require('key_check').load('$work/keys.map') }
upstream up { server 127.0.0.1:$2; keepalive 64; }
server { listen 127.0.0.1:$1; location / { access_by_lua_block { require('key_check').check() }
  proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" \
        "load_module $nginx_modules/ndk_http_module.so; load_module $nginx_modules/ngx_http_lua_module.so;"
    wait_port "$1"
    nginx_lua_pid=$(cat "$work/nginx_lua/nginx.pid")
}

# haproxy_start PORT UPSTREAM: HAProxy, one process with one thread on KEYGATE_CPUS (core 0),
# with the keys of $work/keys.map as a static map looked up by the key's SHA-256 (as keygate's
# store holds them): 403 and keygate's JSON body for an unknown or missing key, a known one
# proxied (idle server connections reused) to UPSTREAM with its app named; sets haproxy_pid.
haproxy_start() {
    mkdir -p "$work/haproxy"
    cat > "$work/haproxy/haproxy.cfg" <<CONF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
frontend keys
    bind 127.0.0.1:$1
    http-request set-var(txn.app) req.hdr(X-ApiKey),sha2(256),hex,lower,map($work/keys.map)
    http-request return status 403 content-type application/json string '{"error":"unknown_api_key"}' unless { var(txn.app) -m found }
    http-request set-header X-Keygate-App %[var(txn.app)]
    default_backend upstream
backend upstream
    http-reuse always
    server up 127.0.0.1:$2
CONF
    taskset -c "${KEYGATE_CPUS:-0}" "$haproxy_bin" -db -f "$work/haproxy/haproxy.cfg" 2>"$work/haproxy/haproxy.log" &
    haproxy_pid=$!
    pids+=($haproxy_pid)
    wait_port "$1"
}

# Written first into every wrk script: counts the answers by status class in each thread, and
# writes the totals ("1xx 2xx 3xx 4xx 5xx") to the file $WRK_COUNTS when the run is done, so a
# run knows exactly what it was answered (wrk itself only says "Non-2xx or 3xx").
count_answers_lua() {
    cat <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
c1, c2, c3, c4, c5 = 0, 0, 0, 0, 0
function response(status, headers, body)
  if status < 200 then c1 = c1 + 1
  elseif status < 300 then c2 = c2 + 1
  elseif status < 400 then c3 = c3 + 1
  elseif status < 500 then c4 = c4 + 1
  else c5 = c5 + 1 end
end
function done(summary, latency, requests)
  local totals = {0, 0, 0, 0, 0}
  for _, thread in ipairs(threads) do
    for i = 1, 5 do totals[i] = totals[i] + thread:get("c" .. i) end
  end
  local file = assert(io.open(os.getenv("WRK_COUNTS"), "w"))
  file:write(table.concat(totals, " "), "\n")
  file:close()
end
LUA
}

# wrk_script NAME: $work/NAME.lua from the answer counter and the request part on stdin.
wrk_script() {
    { count_answers_lua; cat; } > "$work/$1.lua"
}

# valid_keys_script: $work/valid.lua, POSTs rotating over the 1000 keys redis_start wrote
# (BENCH_KEY_PREFIX, bench-key unless set: another prefix shows a run's checks fail).
valid_keys_script() {
    wrk_script valid <<LUA
local n = 0
request = function()
  n = (n + 1) % 1000
  return wrk.format("POST", "/ingest", {["X-ApiKey"] = string.format("${BENCH_KEY_PREFIX:-bench-key}-%03d", n), ["Content-Type"] = "application/json"}, '{"event":"crash","n":1}')
end
LUA
}

# unknown_keys_scripts: $work/unknown.lua (one unknown key, repeated) and $work/random.lua (a
# random unknown key per request), the rejection runs' POSTs.
unknown_keys_scripts() {
wrk_script unknown <<'LUA'
request = function()
  return wrk.format("POST", "/ingest", {["X-ApiKey"] = "bench-unknown-key", ["Content-Type"] = "application/json"}, '{"event":"crash","n":1}')
end
LUA
wrk_script random <<'LUA'
math.randomseed(os.time())
request = function()
  local key = string.format("%08x%08x%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  return wrk.format("POST", "/ingest", {["X-ApiKey"] = key, ["Content-Type"] = "application/json"}, '{"event":"crash","n":1}')
end
LUA
}

# The process's user and system CPU time so far, in microseconds (all its threads).
cpu_us() {
    local ticks
    ticks=$(getconf CLK_TCK)
    # Fields 14 and 15 (utime, stime); the name in parentheses may hold spaces.
    awk -v t="$ticks" '{ sub(/^.*\) /, ""); printf "%d %d\n", $12 * 1e6 / t, $13 * 1e6 / t }' "/proc/$1/stat"
}

# Redis record reads so far (a record is one HGETALL).
redis_reads() {
    redis-cli -p "$redis_port" info commandstats | sed -n 's/^cmdstat_hgetall:calls=\([0-9]*\),.*/\1/p' | grep . || echo 0
}

# checked_wrk NAME EXPECT PID URL SCRIPT [WRK-ARGS...]: one wrk run (core 1, one thread,
# BENCH_CONNECTIONS or 32 connections, BENCH_SECONDS or 8 s unless WRK-ARGS say otherwise)
# against the proxy PID, whose answers must all be of the class EXPECT (2xx or 4xx), with no
# socket error. Appends to $work/results:
#   name req/s p50_ms p99_ms requests user_us sys_us redis_reads 1xx 2xx 3xx 4xx 5xx socket_errors
# and on a wrong answer says which run it was on stderr, appends it to $work/failures and
# returns 1.
checked_wrk() {
    local name=$1 expect=$2 pid=$3 url=$4 script=$5
    shift 5
    local out cpu_before cpu_after reads_before reads_after counts
    reads_before=$(redis_reads)
    cpu_before=$(cpu_us "$pid")
    out=$(WRK_COUNTS="$work/counts" taskset -c 1 wrk -t1 -c"${BENCH_CONNECTIONS:-32}" \
        -d"${BENCH_SECONDS:-8}s" --latency -s "$work/$script.lua" "$@" "$url")
    cpu_after=$(cpu_us "$pid")
    reads_after=$(redis_reads)
    counts=$(cat "$work/counts")
    echo "$out" > "$work/$name.wrk"
    python3 - "$name" "$expect" "$cpu_before" "$cpu_after" "$((reads_after - reads_before))" "$counts" \
        "$work/$name.wrk" "$work/results" "$work/failures" <<'PY'
import re, sys
name, expect, before, after, reads, counts, output, results, failures = sys.argv[1:]
out = open(output).read()
def ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1, "s": 1e3}[unit]
rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M).group(1))
requests = int(re.search(r"^\s*(\d+) requests in", out, re.M).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
errors = sum(map(int, socket.groups())) if socket else 0
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
non2xx = int(non2xx.group(1)) if non2xx else 0
(u0, s0), (u1, s1) = (map(int, before.split()), map(int, after.split()))
classes = list(map(int, counts.split()))
with open(results, "a") as f:
    print(name, rps, p50, p99, requests, u1 - u0, s1 - s0, reads, *classes, errors, file=f)
wanted = {"2xx": 1, "4xx": 3}[expect]
answered = sum(classes)
wrong = answered - classes[wanted]
problems = []
if answered == 0:
    problems.append("no answer at all")
if wrong:
    problems.append(f"{wrong} of {answered} answers not {expect} (1xx-5xx: {' '.join(map(str, classes))})")
if expect == "2xx" and non2xx:
    problems.append(f"wrk counted {non2xx} non-2xx answers")
if errors:
    problems.append(f"socket errors: {socket.group(0)}")
if problems:
    message = f"FAIL {name}: " + "; ".join(problems)
    print(message, file=sys.stderr)
    with open(failures, "a") as f:
        print(message, file=f)
    sys.exit(1)
PY
}

# fail_if_any: after the runs, exits non-zero naming every run whose answers were wrong.
fail_if_any() {
    if [ -s "$work/failures" ]; then
        echo "benchmark FAILED: these runs had wrong answers or socket errors:" >&2
        cat "$work/failures" >&2
        exit 1
    fi
}
