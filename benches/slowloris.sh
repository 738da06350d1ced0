#!/usr/bin/env bash
# Valid keys while a slowloris attack holds many connections: wrk's latency and throughput
# against keygate with SLOWLORIS_CONNECTIONS (2000) connections sending their request headers a
# byte a second (each reconnecting when keygate's header deadline cuts it), beside the same run
# without the attack. Rounds are interleaved; every run must be all 2xx with no socket error
# (else the script names it and exits 1). keygate on core 0; wrk, the attacker, the upstream
# and Redis on core 1. Part of `make bench`; the figure a timed test used to assert (a median
# within 5 ms of the usual one).
#   BENCH_SECONDS (8), BENCH_ROUNDS (3), BENCH_CONNECTIONS (32), SLOWLORIS_CONNECTIONS (2000)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${BENCH_ROUNDS:-3}
attackers=${SLOWLORIS_CONNECTIONS:-2000}
. benches/common.sh

up=$(port); redis_port=$(port); kg=$(port); kg_admin=$(port)
upstream_start "$up"
redis_start "$redis_port" bench-key
keygate_start "$kg" "$kg_admin" "$redis_port" "$up"

valid_keys_script

# The attacker: COUNT connections, each sending a request head a byte a second and never
# ending it; one that keygate answers or closes is opened again. Writes how many it holds to
# FILE twice a second.
cat > "$work/slowloris.py" <<'PY'
import asyncio, os, sys

host, port, count, status = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
HEAD = b"GET /ingest HTTP/1.1\r\nHost: bench\r\nX-ApiKey: bench-key-000\r\nX-Slow: "
held = 0

async def slow_client(n):
    global held
    await asyncio.sleep(n / 1000)  # a thousand connects a second, not all at once
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        held += 1
        try:
            writer.write(HEAD)
            while True:
                try:
                    await asyncio.wait_for(reader.read(1024), timeout=1)
                    break  # answered or closed: the deadline cut it
                except asyncio.TimeoutError:
                    writer.write(b"a")
                    await writer.drain()
        except OSError:
            pass
        finally:
            held -= 1
            writer.close()

async def report():
    while True:
        with open(status + ".tmp", "w") as f:
            f.write(f"{held}\n")
        os.replace(status + ".tmp", status)
        await asyncio.sleep(0.5)

async def main():
    await asyncio.gather(report(), *(slow_client(n) for n in range(count)))

asyncio.run(main())
PY

held() { cat "$work/held" 2>/dev/null || echo 0; }
attack_start() {
    rm -f "$work/held"
    taskset -c 1 python3 "$work/slowloris.py" 127.0.0.1 "$kg" "$attackers" "$work/held" &
    attacker_pid=$!
    pids+=($attacker_pid)
    for _ in $(seq 300); do (( $(held) >= attackers )) && return; sleep 0.1; done
    echo "the attacker holds only $(held) of $attackers connections" >&2
    exit 1
}
attack_stop() { kill "$attacker_pid"; wait "$attacker_pid" 2>/dev/null || true; }

echo "threads: $threads, work stealing: $work_stealing; load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq "$rounds"); do
    echo "round $round of $rounds" >&2
    checked_wrk keygate_valid 2xx "$keygate_pid" "http://127.0.0.1:$kg" valid || true
    attack_start
    checked_wrk keygate_valid_under_slowloris 2xx "$keygate_pid" "http://127.0.0.1:$kg" valid || true
    echo "under_slowloris_held $(held)" >> "$work/held_after"
    attack_stop
done

python3 - "$work/results" "$work/held_after" "$attackers" <<'PY'
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    name, rps, p50, p99, requests, user, system, *rest = line.split()
    requests = max(1, int(requests))
    runs[name].append({"rps": float(rps), "p50": float(p50), "p99": float(p99),
                       "user": int(user) / requests, "sys": int(system) / requests})
held = [int(line.split()[1]) for line in open(sys.argv[2])]
med = lambda name, field: statistics.median(r[field] for r in runs[name])
base, attacked = "keygate_valid", "keygate_valid_under_slowloris"
print(f"{'run':30} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'user us/req':>12} {'sys us/req':>11}")
for name in (base, attacked):
    print(f"{name:30} {med(name, 'rps'):9.0f} {med(name, 'p50'):7.2f} {med(name, 'p99'):7.2f} "
          f"{med(name, 'user'):12.1f} {med(name, 'sys'):11.1f}")
ratio = statistics.median(a["rps"] / b["rps"] for a, b in zip(runs[attacked], runs[base]))
p50 = statistics.median(a["p50"] - b["p50"] for a, b in zip(runs[attacked], runs[base]))
print(f"under slowloris ({sys.argv[3]} connections; held at each run's end: {', '.join(map(str, held))}): "
      f"{ratio:.2f}x the req/s, median latency {p50:+.2f} ms")
PY
fail_if_any
