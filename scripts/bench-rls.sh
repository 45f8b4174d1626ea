#!/usr/bin/env bash
# Measures what row-level security costs Postgres Changes, against a baseline in the same run.
#
# One local-mode gateway (private PostgreSQL in a temporary folder), then ROUNDS rounds, each
# running in turn: `fanout` (the same clients and rate, anon keys, no RLS: the baseline) and
# `rls` with 1, 50 and 1000 distinct claim sets (users). Prints each run's deliveries/s, p99,
# and the gateway's check cost (ms per check query, µs per row check), then the medians.
# Raw JSON goes to target/bench/rls/. Loopback only; every step is bounded by `timeout`.
#
#   scripts/bench-rls.sh                    1000 clients, 50 rows/s, 20 s runs, 3 rounds
#   CLIENTS=500 RATE=20 SECONDS_PER_RUN=10 ROUNDS=1 scripts/bench-rls.sh
#
# Needs: cargo, the PostgreSQL server binaries, jq, curl.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$(pwd)
out="$root/target/bench/rls"
mkdir -p "$out"
rm -f "$out"/*.json
clients=${CLIENTS:-1000}
rate=${RATE:-50}
secs=${SECONDS_PER_RUN:-20}
rounds=${ROUNDS:-3}
port=${BENCH_PORT:-4110}
gw="$root/target/release/realtime-gateway"
lt="$root/target/release/loadtest"
command -v jq >/dev/null || { echo "bench-rls.sh needs jq" >&2; exit 2; }

cargo build --release --locked -p realtime-gateway -p loadtest >&2

data=$(mktemp -d /tmp/rtgw-rls.XXXXXX)
chmod 755 "$data"
export JWT_SECRET
JWT_SECRET="bench-$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
ulimit -n "$(ulimit -Hn)"
env -u DATABASE_URL RUST_LOG="${RUST_LOG:-warn}" "$gw" --listen "127.0.0.1:$port" \
    --data-dir "$data" --max-connections 20000 >"$data/gateway.log" 2>&1 &
gw_pid=$!
cleanup() {
    kill -INT "$gw_pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$gw_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$gw_pid" 2>/dev/null || true
    rm -rf "$data"
}
trap cleanup EXIT
for _ in $(seq 1 600); do
    grep -q "database:" "$data/gateway.log" && break
    kill -0 "$gw_pid" 2>/dev/null || { cat "$data/gateway.log" >&2; exit 1; }
    sleep 0.1
done
DATABASE_URL=$(sed -n 's/^ *database: *//p' "$data/gateway.log" | head -n1)
export DATABASE_URL
for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
    sleep 0.1
done

run() {
    local name=$1
    shift
    timeout --signal=INT 300 "$lt" "$@" --clients "$clients" --rate "$rate" --duration "${secs}s" \
        --url "ws://127.0.0.1:$port/realtime/v1" --gateway-pid "$gw_pid" --quiet \
        --json "$out/$name.json" >/dev/null 2>"$out/$name.err" || true
    jq -r --arg name "$name" '
      def n: if . == null then "-" else tostring end;
      "\($name)\t\(.deliveries_per_s|n)\t\(.latency_ms.p99|n)\t\(.deliveries.lost|n)\t\(.detail.rls_check.ms_per_query|n)\t\(.detail.rls_check.us_per_row_check|n)"' \
      "$out/$name.json" 2>/dev/null || echo "$name	(no result, see $out/$name.err)"
}

printf 'run\tdeliveries/s\tp99 ms\tlost\tms/check query\tus/row check\n'
for r in $(seq 1 "$rounds"); do
    run "fanout-r$r" fanout
    for sets in 1 50 1000; do
        run "rls$sets-r$r" rls --claim-sets "$sets"
    done
done

echo
printf 'medians over %s rounds\n' "$rounds"
printf 'config\tdeliveries/s\tp99 ms\tms/check query\tus/row check\tdeliveries/s vs fanout\tp99 vs fanout\n'
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
field() { for f in "$out"/"$1"-r*.json; do jq -r "$2 // empty" "$f"; done | median; }
base_d=$(field fanout .deliveries_per_s)
base_p=$(field fanout .latency_ms.p99)
printf 'fanout\t%s\t%s\t-\t-\t1\t1\n' "$base_d" "$base_p"
for sets in 1 50 1000; do
    d=$(field "rls$sets" .deliveries_per_s)
    p=$(field "rls$sets" .latency_ms.p99)
    q=$(field "rls$sets" .detail.rls_check.ms_per_query)
    u=$(field "rls$sets" .detail.rls_check.us_per_row_check)
    printf 'rls %s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sets" "$d" "$p" "$q" "$u" \
        "$(awk -v a="$d" -v b="$base_d" 'BEGIN {printf "%.2f", a / b}')" \
        "$(awk -v a="$p" -v b="$base_p" 'BEGIN {printf "%.2f", a / b}')"
done
