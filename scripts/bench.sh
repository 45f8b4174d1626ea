#!/usr/bin/env bash
# Regenerates the results section of BENCHMARKS.md.
#
# Builds the gateway and the load tester (release), starts a local-mode gateway with a private
# PostgreSQL in a temporary data folder, runs every scenario at the issue's reference sizes,
# and rewrites the part of BENCHMARKS.md between the "results:begin" and "results:end" markers.
# Raw results (JSON and HTML reports) go to target/bench/. Everything runs on loopback; every
# step is bounded by `timeout`; the gateway and its PostgreSQL are stopped on exit.
#
#   scripts/bench.sh            full sizes (about 25 minutes on 2 cores, build included)
#   BENCH_QUICK=1 scripts/bench.sh   small sizes, a quick check of the script itself
#
# Needs: cargo, the PostgreSQL server binaries (as for `cargo run`), jq, curl.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
out="$root/target/bench"
mkdir -p "$out"
quick=${BENCH_QUICK:-0}
port=${BENCH_PORT:-4100}
gw="$root/target/release/realtime-gateway"
lt="$root/target/release/loadtest"

command -v jq >/dev/null || { echo "bench.sh needs jq" >&2; exit 2; }

echo "== building (release)" >&2
cargo build --release --locked -p realtime-gateway -p loadtest >&2

data=$(mktemp -d /tmp/rtgw-bench.XXXXXX)
# The embedded cluster runs as an unprivileged user when we are root: let it in.
chmod 755 "$data"
gw_pid=""
export JWT_SECRET
JWT_SECRET="bench-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"

stop_gateway() {
    if [ -n "$gw_pid" ] && kill -0 "$gw_pid" 2>/dev/null; then
        kill -INT "$gw_pid"
        # Shutdown is bounded by the gateway's own timeout; do not wait forever regardless.
        for _ in $(seq 1 300); do kill -0 "$gw_pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$gw_pid" 2>/dev/null && kill -KILL "$gw_pid"
        wait "$gw_pid" 2>/dev/null || true
    fi
    gw_pid=""
}
cleanup() {
    stop_gateway
    rm -rf "$data"
}
trap cleanup EXIT

# Each client is a file descriptor, in the gateway as in the load tester.
ulimit -n "$(ulimit -Hn)"

# start_gateway MAX_CONNECTIONS: starts a gateway with a fresh private PostgreSQL (so every
# scenario group starts from the same state), sets DATABASE_URL, waits for /ready.
starts=0
start_gateway() {
    stop_gateway
    starts=$((starts + 1))
    local dir="$data/gw$starts"
    mkdir -p "$dir"
    chmod 755 "$dir"
    local log="$dir/gateway.log"
    # Without DATABASE_URL (the previous gateway's is still exported) it starts local mode.
    env -u DATABASE_URL RUST_LOG="${RUST_LOG:-warn}" "$gw" --listen "127.0.0.1:$port" --data-dir "$dir" \
        --max-connections "$1" >"$log" 2>&1 &
    gw_pid=$!
    for _ in $(seq 1 600); do
        if grep -q "database:" "$log"; then break; fi
        kill -0 "$gw_pid" 2>/dev/null || { cat "$log" >&2; echo "gateway died" >&2; exit 1; }
        sleep 0.1
    done
    DATABASE_URL=$(sed -n 's/^ *database: *//p' "$log" | head -n1)
    export DATABASE_URL
    [ -n "$DATABASE_URL" ] || { cat "$log" >&2; echo "no database url in the banner" >&2; exit 1; }
    for _ in $(seq 1 300); do
        if curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "gateway not ready" >&2
    exit 1
}

# run NAME LIMIT_SECONDS ARGS...: one scenario, its JSON to $out/NAME.json; never fails the script.
run() {
    local name=$1 limit=$2
    shift 2
    echo "== $name: loadtest $*" >&2
    echo "loadtest $*" >"$out/$name.cmd"
    timeout --signal=INT "$limit" "$lt" "$@" --url "ws://127.0.0.1:$port/realtime/v1" \
        --gateway-pid "$gw_pid" --json "$out/$name.json" --report "$out/$name.html" \
        >"$out/$name.out" 2>"$out/$name.err" || true
    tail -n 25 "$out/$name.out" | grep -v '^{' >&2 || true
}

rm -f "$out"/*.json "$out"/*.cmd
if [ "$quick" = 1 ]; then
    seed=(seed --clients 20 --duration 5s)
    fanout_a=(fanout --clients 100 --rate 100 --duration 5s)
    fanout_b=(fanout --clients 500 --rate 20 --duration 5s)
    idle=(idle --clients 1000 --duration 3s)
    capture=(capture --duration 8s)
    churn=(churn --connect-rate 100 --duration 5s --settle 20s)
    cap=(cap --cap 50 --clients 80 --duration 2s)
    soak=(soak --clients 20 --rate 20 --duration 20s --kill-listener-every 5s)
    rls=(rls --clients 100 --rate 20 --duration 5s --claim-sets 10)
    cap_max=50
else
    seed=(seed)
    fanout_a=(fanout --clients 1000 --rate 1000 --duration 60s)
    fanout_b=(fanout --clients 10000 --rate 20 --duration 60s --connect-concurrency 512)
    idle=(idle --clients 15000 --duration 30s --connect-concurrency 512)
    capture=(capture --writers 16 --duration 40s)
    churn=(churn --connect-rate 500 --duration 60s --settle 60s)
    cap=(cap --cap 200 --clients 260 --duration 5s)
    soak=(soak --clients 200 --rate 50 --duration 120s --kill-listener-every 20s)
    rls=(rls --clients 1000 --rate 50 --duration 60s --claim-sets 50)
    cap_max=200
fi

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
# Every scenario gets a fresh gateway and PostgreSQL: an overloaded run (fanout-1k) must not
# leave its backlog to the next one, and churn and cap need a clean baseline.
run_fresh() {
    local max=$1
    shift
    start_gateway "$max"
    run "$@"
    stop_gateway
}
run_fresh 20000 seed 300 "${seed[@]}"
run_fresh 20000 fanout-10k 600 "${fanout_b[@]}"
run_fresh 20000 idle 600 "${idle[@]}"
run_fresh 20000 capture 300 "${capture[@]}"
run_fresh 20000 soak 600 "${soak[@]}"
run_fresh 20000 churn 600 "${churn[@]}"
run_fresh "$cap_max" cap 300 "${cap[@]}"
run_fresh 20000 fanout-1k 600 "${fanout_a[@]}"
run_fresh 20000 rls 600 "${rls[@]}"
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the results section -------------------------------------------------------------------
pg_version=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n1)
results="$out/results.md"
{
    echo "<!-- results:begin (generated by scripts/bench.sh; do not edit by hand) -->"
    echo
    echo "Generated $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB memory,"
    echo "$(uname -sr), PostgreSQL ${pg_version:-?} (local mode, default settings), gateway, PostgreSQL and"
    echo "loadtest on the same machine. Load average (1/5/15 min) before: $load_start, after: $load_end."
    [ "$quick" = 1 ] && echo "**Quick sizes (BENCH_QUICK=1): not the reference sizes.**"
    echo
    echo "| scenario | command | clients ok/refused/errors | written | expected / lost / dup / ooo | p50 / p95 / p99 / p99.9 / max ms | deliveries/s | gateway RSS KiB (KiB/conn) | pg conns | pass |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for name in seed fanout-1k fanout-10k rls idle capture soak churn cap; do
        f="$out/$name.json"
        if [ ! -s "$f" ]; then
            echo "| $name | \`$(cat "$out/$name.cmd" 2>/dev/null)\` | (no result: see target/bench/$name.err) | | | | | | | |"
            continue
        fi
        jq -r --arg name "$name" --arg cmd "$(cat "$out/$name.cmd")" '
          def n: if . == null then "–" else tostring end;
          "| \($name) | `\($cmd)` | \(.clients.connected|n)/\(.clients.refused|n)/\(.clients.errors|n) | \(.changes_written|n) | \(.deliveries.expected|n) / \(.deliveries.lost|n) / \(.deliveries.duplicated|n) / \(.deliveries.out_of_order|n) | \(.latency_ms.p50|n) / \(.latency_ms.p95|n) / \(.latency_ms.p99|n) / \(.latency_ms.p999|n) / \(.latency_ms.max|n) | \(.deliveries_per_s|n) | \(.gateway.rss_kib|n) (\(.gateway.kib_per_connection|n)) | \(.gateway.pg_connections|n) | \(if .pass then "yes" else "**no**" end) |"' "$f"
    done
    echo
    echo "Targets, as measured above:"
    echo
    echo "| scenario | target | measured | met |"
    echo "|---|---|---|---|"
    for name in seed fanout-1k fanout-10k rls idle capture soak churn cap; do
        f="$out/$name.json"
        [ -s "$f" ] || continue
        jq -r --arg name "$name" '.targets[] | "| \($name) | \(.name) | \(.value|tostring) | \(if .met then "yes" else "**no**" end) |"' "$f"
    done
    echo
    echo "Failures and what the gateway lacks, per scenario:"
    echo
    for name in seed fanout-1k fanout-10k rls idle capture soak churn cap; do
        f="$out/$name.json"
        [ -s "$f" ] || continue
        jq -r --arg name "$name" '
          [(.failures[]? | "failure: " + .), (.gateway.missing[]? | "gateway lacks: " + .)]
          | if length == 0 then "- \($name): none" else "- \($name): " + join("; ") end' "$f"
    done
    echo
    echo "Scenario details (CPU seconds used during the run, setup rate, writer, PostgreSQL NOTIFY floor):"
    echo
    for name in seed fanout-1k fanout-10k rls idle capture soak churn cap; do
        f="$out/$name.json"
        [ -s "$f" ] || continue
        jq -r --arg name "$name" '"- \($name): over \(.loadtest.elapsed_s) s, cpu seconds: gateway \(.gateway.cpu_s), its PostgreSQL \(.gateway.postgres_cpu_s), loadtest \(.loadtest.cpu_s); detail `\(.detail | del(.phases) | tojson)`"' "$f"
    done
    echo
    echo "<!-- results:end -->"
} >"$results"

# Replace the section between the markers (or append it), leaving the rest of the file as is.
doc="$root/BENCHMARKS.md"
[ -f "$doc" ] || printf '# Benchmarks\n\n## Results\n\n' >"$doc"
if grep -q '<!-- results:begin' "$doc"; then
    awk -v res="$results" '
      /<!-- results:begin/ { while ((getline line < res) > 0) print line; skip = 1; next }
      /<!-- results:end/ { skip = 0; next }
      !skip { print }' "$doc" >"$doc.tmp"
else
    cat "$doc" "$results" >"$doc.tmp"
fi
mv "$doc.tmp" "$doc"
echo "== BENCHMARKS.md results rewritten; raw results in target/bench/" >&2
