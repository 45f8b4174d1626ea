#!/usr/bin/env bash
# Regenerates the results section of BENCHMARKS.md.
#
# Builds the gateway and the load tester (release), then runs every row of the targets table
# BENCH_RUNS times (3), each run against a fresh local-mode gateway with a private PostgreSQL in
# a temporary folder. Rows with a baseline run the same job against the load tester's own
# minimal server first, in the same invocation (`--baseline`), so every run has its
# gateway / baseline ratios. The scale-out rows run the seed and fan-out jobs against 1, 2 and 4
# gateway processes sharing the first one's database. Medians of the runs, and every run's
# figures, are written between the "results:begin" and "results:end" markers of BENCHMARKS.md.
# Raw results (JSON and HTML reports) go to target/bench/. Everything runs on loopback; every
# step is bounded by `timeout`; the gateways and their PostgreSQL are stopped on exit.
#
#   scripts/bench.sh                   full sizes (about an hour on 2 cores, build included)
#   BENCH_QUICK=1 scripts/bench.sh     small sizes, a quick check of the script itself
#
# Also: BENCH_RUNS (3), BENCH_PORT (4100; the scale-out nodes use the next three ports),
# BENCH_PROFILE (release; `dev` for a debug build when checking the script), BENCH_DOC=0 (leave
# BENCHMARKS.md alone: the section is only written to target/bench/results.md).
# Needs: cargo, the PostgreSQL server binaries (as for `cargo run`), jq, curl.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
target_dir=${CARGO_TARGET_DIR:-$root/target}
out="$root/target/bench"
mkdir -p "$out"
quick=${BENCH_QUICK:-0}
runs=${BENCH_RUNS:-3}
port=${BENCH_PORT:-4100}
profile=${BENCH_PROFILE:-release}
profile_dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
gw="$target_dir/$profile_dir/realtime-gateway"
lt="$target_dir/$profile_dir/loadtest"

command -v jq >/dev/null || { echo "bench.sh needs jq" >&2; exit 2; }

echo "== building ($profile)" >&2
cargo build --profile "$profile" --locked -p realtime-gateway -p loadtest >&2

data=$(mktemp -d /tmp/rtgw-bench.XXXXXX)
# The embedded cluster runs as an unprivileged user when we are root: let it in.
chmod 755 "$data"
gw_pids=()
gw_pid=""
export JWT_SECRET
JWT_SECRET="bench-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"

# stop_gateways: stops every node, the extra ones first (the first owns the database).
stop_gateways() {
    local i pid
    for ((i = ${#gw_pids[@]} - 1; i >= 0; i--)); do
        pid=${gw_pids[$i]}
        if kill -0 "$pid" 2>/dev/null; then
            kill -INT "$pid"
            # Shutdown is bounded by the gateway's own timeout; do not wait forever regardless.
            for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
            wait "$pid" 2>/dev/null || true
        fi
    done
    gw_pids=()
    gw_pid=""
}
cleanup() {
    stop_gateways
    rm -rf "$data"
}
trap cleanup EXIT

# Each client is a file descriptor, in the gateway as in the load tester.
ulimit -n "$(ulimit -Hn)"

# wait_ready PORT: waits for /ready of the node on PORT.
wait_ready() {
    for _ in $(seq 1 300); do
        if curl -fs "http://127.0.0.1:$1/ready" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "gateway on port $1 not ready" >&2
    exit 1
}

# start_gateway MAX_CONNECTIONS: stops every node, starts one with a fresh private PostgreSQL
# (so every run starts from the same state), sets DATABASE_URL, waits for /ready.
starts=0
start_gateway() {
    stop_gateways
    starts=$((starts + 1))
    local dir="$data/gw$starts"
    mkdir -p "$dir"
    chmod 755 "$dir"
    local log="$dir/gateway.log"
    # Without DATABASE_URL (the previous gateway's is still exported) it starts local mode.
    env -u DATABASE_URL RUST_LOG="${RUST_LOG:-warn}" "$gw" --listen "127.0.0.1:$port" --data-dir "$dir" \
        --max-connections "$1" >"$log" 2>&1 &
    gw_pid=$!
    gw_pids=("$gw_pid")
    for _ in $(seq 1 600); do
        if grep -q "database:" "$log"; then break; fi
        kill -0 "$gw_pid" 2>/dev/null || { cat "$log" >&2; echo "gateway died" >&2; exit 1; }
        sleep 0.1
    done
    DATABASE_URL=$(sed -n 's/^ *database: *//p' "$log" | head -n1)
    export DATABASE_URL
    [ -n "$DATABASE_URL" ] || { cat "$log" >&2; echo "no database url in the banner" >&2; exit 1; }
    wait_ready "$port"
}

# add_node: one more gateway process on the next port, on the first node's database.
add_node() {
    local k=${#gw_pids[@]}
    local node_port=$((port + k))
    DATABASE_URL="$DATABASE_URL" RUST_LOG="${RUST_LOG:-warn}" "$gw" --listen "127.0.0.1:$node_port" \
        --max-connections 20000 >"$data/node$starts-$k.log" 2>&1 &
    gw_pids+=("$!")
    wait_ready "$node_port"
}

# run NAME LIMIT_SECONDS ARGS...: one loadtest run against every node started, its JSON to
# $out/NAME.json; never fails the script.
run() {
    local name=$1 limit=$2
    shift 2
    local urls pids k
    urls=$(for ((k = 0; k < ${#gw_pids[@]}; k++)); do printf 'ws://127.0.0.1:%d/realtime/v1,' $((port + k)); done)
    pids=$(IFS=,; echo "${gw_pids[*]}")
    echo "== $name: loadtest $*" >&2
    echo "loadtest $*" >"$out/$name.cmd"
    timeout --signal=INT "$limit" "$lt" "$@" --url "${urls%,}" \
        --gateway-pid "$pids" --json "$out/$name.json" --report "$out/$name.html" \
        >"$out/$name.out" 2>"$out/$name.err" || true
    tail -n 40 "$out/$name.out" | grep -v '^{' >&2 || true
}

rm -f "$out"/*.json "$out"/*.cmd
if [ "$quick" = 1 ]; then
    seed=(seed --clients 20 --duration 5s --baseline)
    fanout_1k=(fanout --clients 100 --rate 100 --duration 5s --baseline)
    fanout_2w=(fanout --clients 100 --rate 80 --writers 2 --duration 5s --baseline)
    fanout_10k=(fanout --clients 500 --rate 20 --duration 5s --baseline)
    idle=(idle --clients 1000 --duration 3s --baseline)
    capture=(capture --writers 4 --rounds 2 --duration 4s)
    scale_seed=(seed --clients 20 --duration 4s)
    scale_fanout=(fanout --clients 20 --rate 100 --duration 4s)
    churn=(churn --connect-rate 100 --duration 5s --settle 20s)
    cap=(cap --cap 50 --clients 80 --duration 2s)
    soak=(soak --clients 20 --rate 20 --duration 20s --kill-listener-every 5s)
    rls=(rls --clients 100 --rate 20 --duration 5s --claim-sets 10)
    cap_max=50
else
    seed=(seed --baseline)
    fanout_1k=(fanout --clients 1000 --rate 1000 --duration 30s --baseline)
    fanout_2w=(fanout --clients 1000 --rate 800 --writers 2 --duration 30s --baseline)
    fanout_10k=(fanout --clients 10000 --rate 20 --duration 30s --connect-concurrency 512 --baseline)
    idle=(idle --clients 15000 --duration 10s --connect-concurrency 512 --baseline)
    capture=(capture --writers 16 --rounds 6 --duration 60s)
    scale_seed=(seed --duration 20s)
    scale_fanout=(fanout --clients 200 --rate 1000 --duration 20s)
    churn=(churn --connect-rate 500 --duration 60s --settle 60s)
    cap=(cap --cap 200 --clients 260 --duration 5s)
    soak=(soak --clients 200 --rate 50 --duration 120s --kill-listener-every 20s)
    rls=(rls --clients 1000 --rate 50 --duration 60s --claim-sets 50)
    cap_max=200
fi

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
# Every run gets a fresh gateway and PostgreSQL: an overloaded run (fanout-1k) must not leave
# its backlog to the next one, and churn and cap need a clean baseline.
run_fresh() {
    local max=$1
    shift
    start_gateway "$max"
    run "$@"
    stop_gateways
}
for k in $(seq 1 "$runs"); do
    run_fresh 20000 "seed-$k" 600 "${seed[@]}"
    run_fresh 20000 "fanout-1k-$k" 600 "${fanout_1k[@]}"
    run_fresh 20000 "fanout-1k-2w-$k" 600 "${fanout_2w[@]}"
    run_fresh 20000 "fanout-10k-$k" 900 "${fanout_10k[@]}"
    run_fresh 20000 "idle-$k" 600 "${idle[@]}"
    run_fresh 20000 "capture-$k" 600 "${capture[@]}"
    # Scale-out: the same jobs on 1, 2 and 4 nodes of one database, nodes added between steps.
    start_gateway 20000
    for nodes in 1 2 4; do
        while [ "${#gw_pids[@]}" -lt "$nodes" ]; do add_node; done
        run "scale-seed-${nodes}n-$k" 300 "${scale_seed[@]}"
        run "scale-fanout-${nodes}n-$k" 300 "${scale_fanout[@]}"
    done
    stop_gateways
done
run_fresh 20000 soak 600 "${soak[@]}"
run_fresh 20000 churn 600 "${churn[@]}"
run_fresh "$cap_max" cap 300 "${cap[@]}"
run_fresh 20000 rls 600 "${rls[@]}"
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the results section -------------------------------------------------------------------
# jq helpers shared by every table: missing figures print as "–".
prelude='
def n: if . == null then "–" else tostring end;
def r(k): if . == null then null else (. * k | round) / k end;
def median: map(select(. != null)) | sort
  | if length == 0 then null elif length % 2 == 1 then .[(length - 1) / 2]
    else (.[length / 2 - 1] + .[length / 2]) / 2 end;
def yes: if . then "yes" else "**no**" end;
# A ratio, or null when the baseline of the run failed (it lost, duplicated or reordered a
# delivery, or a client failed): that baseline is no reference.
def ratio(f): if .baseline.pass == false then null else f end;
'
# files ROW: the JSON files of ROW's runs that exist.
files() {
    local k
    for k in $(seq 1 "$runs"); do [ -s "$out/$1-$k.json" ] && echo "$out/$1-$k.json"; done
    return 0
}
ratio_rows="seed fanout-1k fanout-1k-2w fanout-10k idle"
pg_version=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n1)
results="$out/results.md"
{
    echo "<!-- results:begin (generated by scripts/bench.sh; do not edit by hand) -->"
    echo
    echo "Generated $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB memory,"
    echo "$(uname -sr), PostgreSQL ${pg_version:-?} (local mode, default settings), gateway, PostgreSQL and"
    echo "loadtest on the same machine; runs per row: $runs. Load average (1/5/15 min) before: $load_start, after: $load_end."
    [ "$quick" = 1 ] && echo "**Quick sizes (BENCH_QUICK=1): not the reference sizes.**"
    [ "$profile" != release ] && echo "**Built with the $profile profile: not comparable with release figures.**"
    echo
    echo "### Against the baseline"
    echo
    echo "Each run: the gateway's figure / the baseline server's in the same invocation = the ratio."
    echo "CPU per delivery is measured while the deliveries flow: the server's (gateway or baseline),"
    echo "then the load tester's own in the gateway run. A run whose baseline failed (it lost,"
    echo "duplicated or reordered a delivery, or a client failed) has no reference: its ratios are"
    echo "left out of the medians and of the targets."
    echo
    echo "| row | run | deliveries/s | p99 ms | p99.9 ms (gateway) | lost | KiB per connection | connect+join/s | CPU µs per delivery: gateway / baseline / loadtest | pass |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for row in $ratio_rows; do
        for f in $(files "$row"); do
            k=${f##*-}; k=${k%.json}
            jq -r --arg row "$row" --arg k "$k" "$prelude"'
              "| \($row) | \($k) | \(.deliveries_per_s|n) / \(.baseline.deliveries_per_s|n) = \(.vs_baseline.deliveries_per_s|n) | \(.latency_ms.p99|n) / \(.baseline.latency_ms.p99|n) = \(.vs_baseline.p99_ms|n) | \(.latency_ms.p999|n) | \(.deliveries.lost|n) / \(.baseline.deliveries.lost|n) | \(.gateway.kib_per_connection|n) / \(.baseline.gateway.kib_per_connection|n) = \(.vs_baseline.kib_per_connection|n) | \(.detail.connect_join_per_s|n) / \(.baseline.detail.connect_join_per_s|n) | \(.cpu_per_delivery_us.gateway|n) / \(.baseline.cpu_per_delivery_us.gateway|n) / \(.cpu_per_delivery_us.loadtest|n) | \(.pass|yes) |"' "$f"
        done
        fs=$(files "$row")
        [ -n "$fs" ] || { echo "| $row | – | (no result: see target/bench/$row-*.err) | | | | | | | |"; continue; }
        # shellcheck disable=SC2086
        jq -rs --arg row "$row" "$prelude"'
          "| **\($row)** | **median** | \(map(.deliveries_per_s)|median|n) / \(map(.baseline.deliveries_per_s)|median|n) = **\(map(ratio(.vs_baseline.deliveries_per_s))|median|r(1000)|n)** | \(map(.latency_ms.p99)|median|n) / \(map(.baseline.latency_ms.p99)|median|n) = **\(map(ratio(.vs_baseline.p99_ms))|median|r(1000)|n)** | \(map(.latency_ms.p999)|median|n) | \(map(.deliveries.lost)|max|n) (most) | \(map(.gateway.kib_per_connection)|median|n) / \(map(.baseline.gateway.kib_per_connection)|median|n) = **\(map(ratio(.vs_baseline.kib_per_connection))|median|r(1000)|n)** | \(map(.detail.connect_join_per_s)|median|n) / \(map(.baseline.detail.connect_join_per_s)|median|n) | \(map(.cpu_per_delivery_us.gateway)|median|n) / \(map(.baseline.cpu_per_delivery_us.gateway)|median|n) / \(map(.cpu_per_delivery_us.loadtest)|median|n) | \(all(.pass)|yes) |"' $fs
    done
    echo
    echo "Commands:"
    echo
    for row in $ratio_rows; do echo "- $row: \`$(cat "$out/$row-1.cmd" 2>/dev/null)\`"; done
    echo
    echo "### Capture cost"
    echo
    echo "| run | median ratio of the rounds | each round's ratio | plain inserts/s | realtime inserts/s | WAL bytes per insert: plain / realtime |"
    echo "|---|---|---|---|---|---|"
    for f in $(files capture); do
        k=${f##*-}; k=${k%.json}
        jq -r --arg k "$k" "$prelude"'
          "| \($k) | \(.detail.ratio|n) | \(.detail.round_ratios|map(tostring)|join(", ")) | \(.detail.plain_inserts_per_s|n) | \(.detail.realtime_inserts_per_s|n) | \(.detail.wal_bytes_per_insert.plain|n) / \(.detail.wal_bytes_per_insert.realtime|n) |"' "$f"
    done
    fs=$(files capture)
    if [ -n "$fs" ]; then
        # shellcheck disable=SC2086
        jq -rs "$prelude"'
          "| **median** | **\(map(.detail.ratio)|median|n)** | | \(map(.detail.plain_inserts_per_s)|median|n) | \(map(.detail.realtime_inserts_per_s)|median|n) | \(map(.detail.wal_bytes_per_insert.plain)|median|n) / \(map(.detail.wal_bytes_per_insert.realtime)|median|n) |"' $fs
    fi
    echo
    echo "Command: \`$(cat "$out/capture-1.cmd" 2>/dev/null)\`"
    echo
    echo "### Scale-out: nodes sharing one database"
    echo
    echo "The same job against 1, 2 and 4 gateway processes on the first one's database (clients"
    echo "spread round-robin), nodes added between the steps. PostgreSQL figures are over the write"
    echo "phase: its processes' CPU (% of one core), outbox reads (\`pg_stat_user_tables\` scans of"
    echo "\`realtime.changes\`), transactions, and the gateways' connections (\`pg_stat_activity\`)."
    echo
    echo "| job | nodes | run | PostgreSQL CPU % of a core | outbox scans/s | tuples read per change | transactions/s | gateway connections | deliveries/s | p99 ms | lost |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    for job in seed fanout; do
        for nodes in 1 2 4; do
            for f in $(files "scale-$job-${nodes}n"); do
                k=${f##*-}; k=${k%.json}
                jq -r --arg job "$job" --arg nodes "$nodes" --arg k "$k" "$prelude"'
                  .detail.postgres as $p
                  | "| \($job) | \($nodes) | \($k) | \($p.cpu_pct_of_core|n) | \($p.outbox.scans_per_s|n) | \($p.outbox.tuples_read_per_change|n) | \($p.database.xact_per_s|n) | \($p.gateway_connections|n) | \(.deliveries_per_s|n) | \(.latency_ms.p99|n) | \(.deliveries.lost|n) |"' "$f"
            done
        done
    done
    echo
    echo "What each extra node costs PostgreSQL (median over the runs of (figure at N nodes − figure at 1 node) / (N − 1)):"
    echo
    echo "| job | nodes | PostgreSQL CPU, % of a core per extra node | outbox scans/s per extra node | connections per extra node |"
    echo "|---|---|---|---|---|"
    for job in seed fanout; do
        for nodes in 2 4; do
            per_run=()
            for k in $(seq 1 "$runs"); do
                one="$out/scale-$job-1n-$k.json"
                many="$out/scale-$job-${nodes}n-$k.json"
                [ -s "$one" ] && [ -s "$many" ] || continue
                per_run+=("$(jq -cn --slurpfile a "$one" --slurpfile b "$many" --argjson n "$nodes" '
                  ($a[0].detail.postgres) as $x | ($b[0].detail.postgres) as $y
                  | def d(f): if ($x|f) == null or ($y|f) == null then null else (($y|f) - ($x|f)) / ($n - 1) end;
                  {cpu: d(.cpu_pct_of_core), scans: d(.outbox.scans_per_s), conns: d(.gateway_connections)}')")
            done
            [ "${#per_run[@]}" -gt 0 ] || continue
            printf '%s\n' "${per_run[@]}" | jq -rs --arg job "$job" --arg nodes "$nodes" "$prelude"'
              "| \($job) | 1 → \($nodes) | \(map(.cpu)|median|r(100)|n) (each run: \(map(.cpu|r(100)|n)|join(", "))) | \(map(.scans)|median|r(10)|n) | \(map(.conns)|median|r(10)|n) |"'
        done
    done
    echo
    echo "Commands (with one \`--url\` and \`--gateway-pid\` per node): \`$(cat "$out/scale-seed-1n-1.cmd" 2>/dev/null)\`, \`$(cat "$out/scale-fanout-1n-1.cmd" 2>/dev/null)\`"
    echo
    echo "### Targets, as measured above"
    echo
    echo "| row | target | measured (each run; median) | met |"
    echo "|---|---|---|---|"
    # target ROW NAME JQ_VALUE JQ_MET: one line from ROW's runs (slurped into an array).
    target() {
        local row=$1 name=$2 value=$3 met=$4 fs
        fs=$(files "$row")
        if [ -z "$fs" ]; then
            echo "| $row | $name | (no result) | **no** |"
            return
        fi
        # shellcheck disable=SC2086
        jq -rs --arg row "$row" --arg name "$name" "$prelude"'
          (map('"$value"')) as $v
          | "| \($row) | \($name) | \($v|map(n)|join(", ")); \($v|median|r(1000)|n) | \(('"$met"')|yes) |"' $fs
    }
    target fanout-1k ">= 0.5x baseline deliveries/s (median)" 'ratio(.vs_baseline.deliveries_per_s)' '$v|median|. != null and . >= 0.5'
    target fanout-1k "0 lost (every run)" '.deliveries.lost' '$v|all(. == 0)'
    target fanout-1k "p99 <= 100 ms (median)" '.latency_ms.p99' '$v|median|. != null and . <= 100'
    target fanout-1k-2w "0 lost (every run)" '.deliveries.lost' '$v|all(. == 0)'
    target fanout-1k-2w "p99 <= 100 ms from commit to client read (median)" '.latency_ms.p99' '$v|median|. != null and . <= 100'
    target fanout-10k "p99 <= 2x baseline p99 (median)" 'ratio(.vs_baseline.p99_ms)' '$v|median|. != null and . <= 2'
    target fanout-10k "0 lost (every run)" '.deliveries.lost' '$v|all(. == 0)'
    target seed "p99 <= 5 ms (every run)" '.latency_ms.p99' '$v|all(. != null and . <= 5)'
    target seed "p99.9 <= 10 ms (every run)" '.latency_ms.p999' '$v|all(. != null and . <= 10)'
    target seed "0 lost (every run)" '.deliveries.lost' '$v|all(. == 0)'
    target idle "<= 1.3x baseline memory per connection (median)" 'ratio(.vs_baseline.kib_per_connection)' '$v|median|. != null and . <= 1.3'
    target idle "<= 10 KiB per connection (median)" '.gateway.kib_per_connection' '$v|median|. != null and . <= 10'
    target idle "connect + join ramp >= 5,000/s (every run)" '.detail.connect_join_per_s' '$v|all(. != null and . >= 5000)'
    target capture "median interleaved ratio >= 0.6 (median of the runs)" '.detail.ratio' '$v|median|. != null and . >= 0.6'
    for nodes in 2 4; do
        per_run=()
        for k in $(seq 1 "$runs"); do
            one="$out/scale-fanout-1n-$k.json"
            many="$out/scale-fanout-${nodes}n-$k.json"
            [ -s "$one" ] && [ -s "$many" ] || continue
            per_run+=("$(jq -cn --slurpfile a "$one" --slurpfile b "$many" --argjson n "$nodes" '
              ($a[0].detail.postgres) as $x | ($b[0].detail.postgres) as $y
              | {cpu: (if $x.cpu_pct_of_core == null or $y.cpu_pct_of_core == null then null
                       else ($y.cpu_pct_of_core - $x.cpu_pct_of_core) / ($n - 1) end),
                 conns: (($y.gateway_connections - $x.gateway_connections) / ($n - 1))}')")
        done
        if [ "${#per_run[@]}" -eq 0 ]; then
            echo "| scale-out 1 → $nodes | each extra node: <= 5% of a core of PostgreSQL CPU at 1,000 changes/s, <= pool + 1 connections | (no result) | **no** |"
            continue
        fi
        # The gateway's pool is DB_POOL_SIZE (8 by default) connections; the listener is one more.
        printf '%s\n' "${per_run[@]}" | jq -rs --arg nodes "$nodes" "$prelude"'
          (map(.cpu)) as $cpu | (map(.conns)) as $conns
          | "| scale-out 1 → \($nodes) | each extra node: <= 5% of a core of PostgreSQL CPU at 1,000 changes/s, <= 9 connections (pool of 8 + 1) | CPU \($cpu|map(r(100)|n)|join(", ")); \($cpu|median|r(100)|n) %; connections \($conns|median|r(10)|n) | \((($cpu|median) != null and ($cpu|median) <= 5 and ($conns|median) <= 9)|yes) |"'
    done
    echo
    echo "### The other scenarios (one run each)"
    echo
    echo "| scenario | command | clients ok/refused/errors | written | expected / lost / dup / ooo | p50 / p95 / p99 / p99.9 / max ms | deliveries/s | gateway RSS KiB (KiB/conn) | pg conns | pass |"
    echo "|---|---|---|---|---|---|---|---|---|---|"
    for name in rls soak churn cap; do
        f="$out/$name.json"
        if [ ! -s "$f" ]; then
            echo "| $name | \`$(cat "$out/$name.cmd" 2>/dev/null)\` | (no result: see target/bench/$name.err) | | | | | | | |"
            continue
        fi
        jq -r --arg name "$name" --arg cmd "$(cat "$out/$name.cmd")" "$prelude"'
          "| \($name) | `\($cmd)` | \(.clients.connected|n)/\(.clients.refused|n)/\(.clients.errors|n) | \(.changes_written|n) | \(.deliveries.expected|n) / \(.deliveries.lost|n) / \(.deliveries.duplicated|n) / \(.deliveries.out_of_order|n) | \(.latency_ms.p50|n) / \(.latency_ms.p95|n) / \(.latency_ms.p99|n) / \(.latency_ms.p999|n) / \(.latency_ms.max|n) | \(.deliveries_per_s|n) | \(.gateway.rss_kib|n) (\(.gateway.kib_per_connection|n)) | \(.gateway.pg_connections|n) | \(.pass|yes) |"' "$f"
    done
    echo
    echo "| scenario | target | measured | met |"
    echo "|---|---|---|---|"
    for name in rls soak churn cap; do
        f="$out/$name.json"
        [ -s "$f" ] || continue
        jq -r --arg name "$name" "$prelude"'.targets[] | "| \($name) | \(.name) | \(.value|tostring) | \(.met|yes) |"' "$f"
    done
    echo
    echo "Failures and what the gateway lacks, per run:"
    echo
    for f in "$out"/*.json; do
        [ -s "$f" ] || continue
        name=$(basename "$f" .json)
        jq -r --arg name "$name" '
          [(.failures[]? | "failure: " + .), (.gateway.missing[]? | "gateway lacks: " + .)]
          | select(length > 0) | "- \($name): " + join("; ")' "$f"
    done
    echo
    echo "CPU seconds used during each run (gateway nodes, the first node's PostgreSQL, loadtest), and the NOTIFY floor:"
    echo
    for f in "$out"/*.json; do
        [ -s "$f" ] || continue
        name=$(basename "$f" .json)
        jq -r --arg name "$name" "$prelude"'"- \($name): over \(.loadtest.elapsed_s|n) s: gateway \(.gateway.cpu_s|n), its PostgreSQL \(.gateway.postgres_cpu_s|n), loadtest \(.loadtest.cpu_s|n); pg notify p50/p99 \(.detail.bell_latency_ms.p50? // null|n)/\(.detail.bell_latency_ms.p99? // null|n) ms"' "$f"
    done
    echo
    echo "<!-- results:end -->"
} >"$results"

if [ "${BENCH_DOC:-1}" = 0 ]; then
    echo "== results in $results (BENCHMARKS.md left as it is); raw results in target/bench/" >&2
    exit 0
fi
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
