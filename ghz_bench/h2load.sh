#!/usr/bin/env bash
# Hot Authorize measured with a neutral client (h2load, from Debian's
# nghttp2-client) over plaintext and over TLS (steady state on long-lived
# connections, and the handshake on new ones), on the embedded SQLite
# default with the reference workload; first against the gRPC floor, a
# no-op tonic server (examples/noop_server.rs), for the ratio.
#   bash ghz_bench/h2load.sh [requests]
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-200000}
command -v h2load >/dev/null || { echo "h2load is missing: apt-get install nghttp2-client" >&2; exit 1; }
cargo build --release --locked --bins --example noop_server
work=$(mktemp -d)
cleanup() { [ -n "${server:-}" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
db="sqlite://$work/bench.db"
target/release/velro-authz migrate --database-url "$db" >/dev/null 2>&1
target/release/velro-authz seed --database-url "$db" >/dev/null
target/release/velro-loadgen data --out "$work/data" >/dev/null
# Two hot requests: the first of the data file, and the fourth (with seed
# 42 one is denied, the other allowed; the audit log says which below).
python3 ghz_bench/grpc_body.py "$work/data/authorize_hot.json" 0 "$work/body.bin"
python3 ghz_bench/grpc_body.py "$work/data/authorize_hot.json" 3 "$work/body-2.bin"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
printf '[audit]\nspill_path = "%s/audit.spill"\n' "$work" > "$work/velro.toml"

serve() {
    VELRO_DATABASE_URL=$db VELRO_LISTEN=127.0.0.1:50152 VELRO_OPS_LISTEN=127.0.0.1:9192 \
        VELRO_DEMO_DATA=false VELRO_LOG=warn "$@" \
        target/release/velro-authz serve --config "$work/velro.toml" >>"$work/server.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:9192/ready >/dev/null && break; sleep 0.1; done
}
stop() { kill "$server"; wait "$server" 2>/dev/null || true; server=; }
load() {
    local label=$1 scheme=$2 clients=$3 streams=$4 count=$5 body=${6:-body.bin}
    h2load -n "$count" -c "$clients" -m "$streams" -t 1 -d "$work/$body" \
        -H 'content-type: application/grpc' -H 'te: trailers' \
        "$scheme://127.0.0.1:50152/velro.authz.v1.AuthorizationService/Authorize" >"$work/$label.txt"
    local connect status
    rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' "$work/$label.txt")
    connect=$(awk '/time for connect/{print $6" "$7}' "$work/$label.txt")
    status=$(sed -n 's/^status codes: //p' "$work/$label.txt")
    printf '%-24s %10s req/s   connect mean/sd %-16s %s\n' "$label" "$rps" "$connect" "$status"
}
echo "h2load: $requests hot Authorize requests, 8 connections x 8 streams (steady state);"
echo "then 1,000 connections of one request each (the handshake's cost: req/s = connections/s)."
target/release/examples/noop_server 127.0.0.1:50152 &
server=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/50152) 2>/dev/null && break; sleep 0.1; done
load warm-up-floor http 8 8 20000 >/dev/null
load "no-op tonic (floor)" http 8 8 "$requests"
floor=$rps
stop
serve
load warm-up http 8 8 20000 >/dev/null
load plaintext http 8 8 "$requests"
awk -v a="$rps" -v f="$floor" 'BEGIN { printf "velro-authz / floor: %.2f\n", a / f }'
load warm-up-2 http 8 8 20000 body-2.bin >/dev/null
load "plaintext, request 2" http 8 8 "$requests" body-2.bin
awk -v a="$rps" -v f="$floor" 'BEGIN { printf "velro-authz / floor: %.2f\n", a / f }'
for index in 0 3; do
    user=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[int(sys.argv[2])]['user_id'])" \
        "$work/data/authorize_hot.json" "$index")
    decision=$(target/release/velro-authz audit --database-url "$db" --subject "$user" 2>/dev/null |
        head -1 | python3 -c "import json,sys; e=json.loads(sys.stdin.read()); print(e['decision'], e['reason'])")
    echo "request $index of authorize_hot.json: $decision"
done
load plaintext-1-per-conn http 1000 1 1000
stop
serve env VELRO_TLS_CERT="$work/cert.pem" VELRO_TLS_KEY="$work/key.pem"
load warm-up-tls https 8 8 20000 >/dev/null
load tls https 8 8 "$requests"
load tls-1-per-conn https 1000 1 1000
stop
# Tracing's cost: spans for every request (sampled 1.0) and 1 in 100, with
# an OTLP endpoint that refuses (spans are built, batched and dropped).
for sampling in 1.0 0.01; do
    serve env VELRO_OTLP_ENDPOINT=http://127.0.0.1:9 VELRO_TRACE_SAMPLING=$sampling
    load warm-up-traces http 8 8 20000 >/dev/null
    load "traces-$sampling" http 8 8 "$requests"
    stop
done
