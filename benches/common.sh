# Shared by benches/e2e.sh and benches/soak.sh: processes on loopback that clean up after
# themselves, free ports, a fast upstream (nginx answering 200) and a Redis loaded with keys.

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -CONT "$pid" 2>/dev/null || true; kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done
    echo "port $1 never opened" >&2
    exit 1
}

nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

# nginx_start NAME CORE SERVER-BLOCKS: one nginx worker of our own, pinned to CORE.
nginx_start() {
    mkdir -p "$work/$1"
    cat > "$work/$1/nginx.conf" <<CONF
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

# keygate_start PORT ADMIN REDIS UPSTREAM [EXTRA-YAML]: KEYGATE_THREADS (1) worker threads on
# KEYGATE_CPUS (core 0), limits off.
keygate_start() {
    cat > "$work/keygate.yaml" <<CONF
listen: ["127.0.0.1:$1"]
admin_listen: "127.0.0.1:$2"
threads: ${KEYGATE_THREADS:-1}
grace_period_s: 0
upstream: {peers: ["127.0.0.1:$4"]}
store: {redis: {url: "redis://127.0.0.1:$3/0"}}
rate_limit: {per_second: 1000000000, burst: 1000000000, unauthenticated_per_ip: {per_second: 1000000000, burst: 1000000000}}
${5:-}
CONF
    RUST_LOG=warn taskset -c "${KEYGATE_CPUS:-0}" ./target/release/keygate -c "$work/keygate.yaml" 2>"$work/keygate.log" &
    keygate_pid=$!
    pids+=($keygate_pid)
    wait_port "$1"
    until curl -s "127.0.0.1:$2/metrics" | grep -q '^keygate_filter_trusted 1'; do sleep 0.2; done
}
