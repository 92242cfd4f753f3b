#!/usr/bin/env bash
# The spill file's fsync policies, measured: hot Authorize on PostgreSQL
# while the audit table is locked by another client, so every event goes
# through the spill file (the database outage case), for fsync = batch,
# interval and off; and once with the database writable, for reference.
#   bash ghz_bench/audit_fsync.sh [postgres://postgres@127.0.0.1:5432/test]
set -euo pipefail
cd "$(dirname "$0")/.."
admin=${1:-postgres://postgres@127.0.0.1:5432/test}
base=${admin%/*}
db="velro_fsync_$$"
url="$base/$db"
cargo build --release --locked --bins
psql -q "$admin" -c "CREATE DATABASE $db"
work=$(mktemp -d)
cleanup() {
    [ -n "${server:-}" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true
    psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
    rm -rf "$work"
}
trap cleanup EXIT
target/release/velro-authz migrate --database-url "$url" >/dev/null 2>&1
target/release/velro-authz seed --database-url "$url" >/dev/null
target/release/velro-loadgen data --out "$work/data" >/dev/null
metric() { curl -s http://127.0.0.1:9193/metrics | awk -v m="$1" '$1 == m {print $2}'; }
measure() {
    local label=$1 fsync=$2 lock=$3
    printf '[audit]\nspill_path = "%s/%s.spill"\nfsync = "%s"\n' "$work" "$label" "$fsync" > "$work/$label.toml"
    VELRO_DATABASE_URL=$url VELRO_LISTEN=127.0.0.1:50153 VELRO_OPS_LISTEN=127.0.0.1:9193 \
        VELRO_DEMO_DATA=false VELRO_LOG=warn \
        target/release/velro-authz serve --config "$work/$label.toml" >"$work/$label.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:9193/ready >/dev/null && break; sleep 0.1; done
    target/release/velro-loadgen run --host 127.0.0.1:50153 --data-dir "$work/data" --no-check \
        --out "$work/warm" ghz_bench/authorize_hot.json >/dev/null
    local locker=
    if [ "$lock" = yes ]; then
        psql -q "$url" -c "BEGIN; LOCK TABLE audit_log IN EXCLUSIVE MODE; SELECT pg_sleep(30); COMMIT;" >/dev/null &
        locker=$!
        sleep 0.5
    fi
    local spilled_before line
    spilled_before=$(metric velro_authz_audit_events_spilled_total)
    line=$(target/release/velro-loadgen run --host 127.0.0.1:50153 --data-dir "$work/data" --no-check \
        --out "$work/$label" ghz_bench/authorize_hot.json | grep '^authorize_hot')
    local spilled
    spilled=$(awk -v a="$(metric velro_authz_audit_events_spilled_total)" -v b="$spilled_before" 'BEGIN{print a-b}')
    echo "$line" | awk -v l="$label" -v s="$spilled" '{printf "%-26s %9s decisions/s  p50 %s ms  p95 %s ms  spilled %s\n", l, $3, $4, $5, s}'
    kill "$server"; wait "$server" 2>/dev/null || true; server=
    [ -n "$locker" ] && { kill "$locker" 2>/dev/null || true; wait "$locker" 2>/dev/null || true; }
    psql -q "$url" -c "SELECT 1" >/dev/null
}
measure database-writable interval no
for policy in batch interval off; do
    measure "spilling-fsync-$policy" "$policy" yes
done
