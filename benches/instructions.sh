#!/usr/bin/env bash
# Instructions per request: keygate and its floors (the Pingora pass-through, the pass-through
# with keygate's header edits, Pingora's cheapest rejection) each run under valgrind's callgrind,
# which counts every instruction the process executes while wrk sends it requests. The counts
# are deterministic where wall-clock ratios are not: on a shared virtual machine the same binary
# moves ±10% in req/s from one run to the next, while its count moves well under 1%. They leave
# out what costs time without instructions (cache misses, the kernel), so they complement the
# req/s of benches/e2e.sh rather than replace them. Part of `make bench`; skipped with a note
# when valgrind is not installed (`make bench-deps` installs it).
#
# Each process runs alone on core 0 (valgrind is some 50 times slower), is warmed first (every
# key looked up once, connections open), then counted over INSTR_SECONDS (8) of wrk with 4
# connections. Every run checks its answers as benches/e2e.sh does. "x floor" is the floor's
# count over the run's: the throughput ratio a proxy bound by its instructions would show.
#
# Valgrind's virtual CPU has no SHA extensions, so keygate hashes keys in software here: the
# "software SHA-256" column gives what that costs, the part of keygate's count that a CPU with
# SHA-NI does in hardware (the whole hash in 60 ns on this project's machine: `cargo bench
# --bench decision`, stage/key_id_sha256), and a CPU without them pays as counted.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/common.sh
if ! command -v valgrind >/dev/null; then
    echo "note: valgrind is not installed (Debian valgrind, or make bench-deps): instruction counts skipped" >&2
    exit 0
fi
seconds=${INSTR_SECONDS:-8}
launcher="valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$work/callgrind.%p"
PORT_WAIT_TRIES=600

up=$(port); redis_port=$(port)
upstream_start "$up"
redis_start "$redis_port" bench-key
valid_keys_script
unknown_keys_scripts

# counted NAME EXPECT PID URL SCRIPT: warms PID, then counts its instructions over one checked
# wrk run; appends "NAME instructions software-sha256-instructions" to $work/instructions. A run
# that leaves no dump, or one without a count, is a failure (fail_if_any).
counted() {
    local name=$1 expect=$2 pid=$3 url=$4 script=$5 dumps dump
    BENCH_CONNECTIONS=4 BENCH_SECONDS=6 checked_wrk "warm-$name" "$expect" "$pid" "$url" "$script" || true
    # A process's dumps are numbered on (callgrind.PID.1, .2, ...): this run's is the next.
    dumps=$(find "$work" -maxdepth 1 -name "callgrind.$pid.*" | wc -l)
    dump=$work/callgrind.$pid.$((dumps + 1))
    callgrind_control --instr=on "$pid" >/dev/null 2>&1
    BENCH_CONNECTIONS=4 BENCH_SECONDS=$seconds checked_wrk "$name" "$expect" "$pid" "$url" "$script" || true
    callgrind_control --instr=off "$pid" >/dev/null 2>&1
    callgrind_control --dump "$pid" >/dev/null 2>&1
    if [ ! -s "$dump" ]; then
        echo "FAIL $name: callgrind wrote no $dump" | tee -a "$work/failures" >&2
        return
    fi
    callgrind_annotate --auto=no --threshold=100 "$dump" 2>/dev/null | python3 -c '
import re, sys
total = sha = 0
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+) \(.*?\)\s+(.*)", line)
    if not m:
        continue
    count = int(m.group(1).replace(",", ""))
    if "PROGRAM TOTALS" in m.group(2):
        total = count
    elif ":sha2::sha256::soft::" in m.group(2) or ":sha2::sha256::compress256" in m.group(2):
        sha += count
if total == 0:
    sys.exit(1)
print(sys.argv[1], total, sha)' "$name" >> "$work/instructions" ||
        echo "FAIL $name: no instruction count in $dump" | tee -a "$work/failures" >&2
}

# alone NAME EXPECT SCRIPT START...: starts one process under callgrind, counts it, stops it.
alone() {
    local name=$1 expect=$2 script=$3 p a pid
    shift 3
    p=$(port)
    case $1 in
        keygate)
            a=$(port)
            keygate_start "$p" "$a" "$redis_port" "$up"
            pid=$keygate_pid
            ;;
        *)
            reference_start "$1" "$p" "$up"
            pid=$reference_pid
            ;;
    esac
    counted "$name" "$expect" "$pid" "http://127.0.0.1:$p" "$script"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

echo "instruction counts under callgrind, $seconds s each; load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
alone passthrough 2xx valid passthrough
alone passthrough_headers 2xx valid passthrough_headers
alone keygate_valid 2xx valid keygate
alone passthrough_reject 4xx unknown passthrough_reject
# One keygate for both rejection runs, as in benches/e2e.sh.
p=$(port); a=$(port)
keygate_start "$p" "$a" "$redis_port" "$up"
counted keygate_unknown_repeated 4xx "$keygate_pid" "http://127.0.0.1:$p" unknown
counted keygate_unknown_random 4xx "$keygate_pid" "http://127.0.0.1:$p" random
kill -KILL "$keygate_pid" 2>/dev/null || true

touch "$work/instructions"
python3 - "$work/results" "$work/instructions" "$work/failures" <<'PY'
import sys
requests, reads = {}, {}
for line in open(sys.argv[1]):
    fields = line.split()
    requests[fields[0]] = int(fields[4])
    reads[fields[0]] = int(fields[7])
# Warmed, keygate answers every valid key from its cache: a store read in the counted run would
# count a Redis round trip as the valid path's.
if reads.get("keygate_valid", 0):
    with open(sys.argv[3], "a") as failures:
        print(f"FAIL keygate_valid: {reads['keygate_valid']} store reads in the counted run (warm-up too short)",
              file=failures)
counts = {}
for line in open(sys.argv[2]):
    name, total, sha = line.split()
    counts[name] = (int(total) / max(1, requests[name]), int(sha) / max(1, requests[name]))
floors = {"keygate_valid": "passthrough", "passthrough_headers": "passthrough",
          "keygate_unknown_repeated": "passthrough_reject", "keygate_unknown_random": "passthrough_reject"}
print(f"{'run':26} {'requests':>9} {'instructions/req':>17} {'software SHA-256':>17} {'floor':>19} "
      f"{'x floor':>8} {'over floor':>11}")
for name, (per, sha) in counts.items():
    floor, ratio, over = floors.get(name), "", ""
    if floor in counts:
        ratio = f"{counts[floor][0] / per:.3f}"
        over = f"{per - counts[floor][0]:+.0f}"
    print(f"{name:26} {requests[name]:9d} {per:17.0f} {sha:17.0f} {floor or '-':>19} {ratio:>8} {over:>11}")
if "keygate_valid" in counts and "passthrough_headers" in counts:
    per, ref = counts["keygate_valid"][0], counts["passthrough_headers"][0]
    print(f"\nkeygate_valid against passthrough_headers: x {ref / per:.3f}, {per - ref:+.0f} instructions a request")
PY
fail_if_any
