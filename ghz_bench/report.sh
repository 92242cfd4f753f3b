#!/usr/bin/env bash
# The standard benchmark report in one command: build in release, seed the
# reference workload into a fresh database, start the server, run every
# scenario (health-check ceiling first), write ghz_bench/results/, stop.
#   bash ghz_bench/report.sh                       # SQLite, scale 1
#   bash ghz_bench/report.sh --postgres-url postgres://postgres@127.0.0.1:5432/test
#   bash ghz_bench/report.sh --only authorize_hot --duration-factor 0.5
#   bash ghz_bench/report.sh --replicas 3 --postgres-url … --redis-url …   # docs/scaling.md
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bins
exec target/release/velro-loadgen report "$@"
