#!/usr/bin/env bash
# Pools by kind of work, measured: hot and uniform Authorize on PostgreSQL,
# alone; while another client holds the audit table locked (the audit
# writer's connections wait, events queue and spill); and with a login
# storm on top (the auth pool full, and Argon2 hashing on this machine's
# cores: that part moves latency by CPU, not by pools).
#   bash ghz_bench/pool_isolation.sh [postgres://postgres@127.0.0.1:5432/test]
set -euo pipefail
cd "$(dirname "$0")/.."
admin=${1:-postgres://postgres@127.0.0.1:5432/test}
base=${admin%/*}
db="velro_pools_$$"
url="$base/$db"
out=ghz_bench/results/pool_isolation
mkdir -p "$out"
cargo build --release --locked --bins
psql -q "$admin" -c "CREATE DATABASE $db"
work=$(mktemp -d)
cleanup() {
    [ -n "${server:-}" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
    [ -n "${locker:-}" ] && kill "$locker" 2>/dev/null || true
    psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
    rm -rf "$work"
}
trap cleanup EXIT
target/release/velro-authz migrate --database-url "$url" >/dev/null 2>&1
target/release/velro-authz seed --database-url "$url" >/dev/null
target/release/velro-loadgen data --out "$work/data" >/dev/null
printf '[audit]\nspill_path = "%s/audit.spill"\n' "$work" > "$work/velro.toml"
keys="$work/signing.pem"
target/release/velro-authz keys generate --out "$keys" >/dev/null
VELRO_DATABASE_URL=$url VELRO_LISTEN=127.0.0.1:50151 VELRO_OPS_LISTEN=127.0.0.1:9191 \
    VELRO_SIGNING_KEYS=$keys VELRO_DEMO_DATA=false VELRO_LOG=warn \
    target/release/velro-authz serve --config "$work/velro.toml" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:9191/ready >/dev/null && break; sleep 0.1; done
run() {
    target/release/velro-loadgen run --host 127.0.0.1:50151 --data-dir "$work/data" \
        --out "$out/$1" ghz_bench/authorize_hot.json ghz_bench/authorize_uniform.json |
        grep -E "^(authorize_|scenario)" | sed "s/^/[$1] /"
}
pools() { curl -s http://127.0.0.1:9191/metrics | grep '^velro_authz_db_pool_connections{' | tr '\n' ' '; echo; }
run warm-up >/dev/null
run alone
# The audit table locked for the next two runs.
psql -q "$url" -c "BEGIN; LOCK TABLE audit_log IN EXCLUSIVE MODE; SELECT pg_sleep(90); COMMIT;" >/dev/null &
locker=$!
sleep 1
run audit-stuck
echo "pools, audit stuck: $(pools)"
target/release/velro-loadgen run --host 127.0.0.1:50151 --data-dir "$work/data" --no-check \
    --out "$out/storm" ghz_bench/login_storm.json >/dev/null 2>&1 &
storm=$!
sleep 2
echo "pools, audit stuck and logins: $(pools)"
run audit-stuck+logins
wait "$storm" || true
kill "$locker" 2>/dev/null || true
