#!/usr/bin/env python3
"""The capacity model of docs/scaling.md, recomputed from a report's JSON.

Reads the `replicas` section that `velro-loadgen report --replicas N` writes
(CPU per 1,000 decisions, Redis commands per decision, misses and queries,
idle cost, audit bytes) and prints, for each target rate, how many replicas,
Redis Cluster shards, PostgreSQL read replicas and how much JetStream
throughput it takes, and which part saturates first.

    python3 ghz_bench/capacity.py ghz_bench/results/report-XXXX.json
    python3 ghz_bench/capacity.py REPORT --targets 100000,1000000 --cores-per-replica 4

The per-server capacities of Redis, PostgreSQL and JetStream are options
(defaults: what redis-benchmark, pgbench -S and the audit_writer bench
measured on this 2-core machine, see docs/scaling.md); the model scales
linearly from there, which is the model's main assumption.
"""

import argparse
import json
import math
import sys


def scenario_cost(replicas, scenario):
    """The one-replica row of a scenario (the cost without contention)."""
    rows = [c for c in replicas["cost"] if c["scenario"] == scenario]
    if not rows:
        sys.exit(f"the report has no {scenario} run")
    return min(rows, key=lambda c: c["replicas"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("report")
    p.add_argument("--targets", default="100000,1000000", help="decisions/s, comma-separated")
    p.add_argument("--cores-per-replica", type=float, default=2.0)
    p.add_argument("--utilization", type=float, default=0.6, help="planned CPU share at the target (headroom)")
    p.add_argument("--miss-rate", type=float, default=None,
                   help="share of decisions that miss every cache (default: the report's uniform run at "
                        "its measured share weighted 5%%, hot 95%%)")
    p.add_argument("--batch-share", type=float, default=0.0, help="share of decisions that arrive in batches of 50")
    p.add_argument("--redis-ops-per-shard", type=float, default=135_000.0)
    p.add_argument("--pg-queries-per-replica", type=float, default=34_000.0)
    p.add_argument("--jetstream-events-per-server", type=float, default=100_000.0)
    p.add_argument("--jetstream-event-bytes", type=float, default=550.0)
    p.add_argument("--pg-audit-rows-per-second", type=float, default=56_000.0,
                   help="what one writer puts into the primary's audit_log (cargo bench audit_writer)")
    args = p.parse_args()

    with open(args.report) as f:
        report = json.load(f)
    replicas = report.get("replicas")
    if not replicas:
        sys.exit("no `replicas` section: run `velro-loadgen report --replicas N` first")

    hot = scenario_cost(replicas, "authorize_hot")
    uniform = scenario_cost(replicas, "authorize_uniform")
    batch = scenario_cost(replicas, "batch_authorize_50")
    per_core = {name: 1e6 / c["cpu_ms_per_1000_decisions"] for name, c in
                (("hot", hot), ("uniform", uniform), ("batch", batch))}
    idle = next((v for k, v in replicas["inputs"].items() if k.startswith("idle replica")), 0.0)
    audit_bytes = next((v for k, v in replicas["inputs"].items() if k.startswith("audit bytes")), None)

    # A mix: 95 % of single decisions hit (hot), 5 % miss (uniform), unless told.
    miss = args.miss_rate if args.miss_rate is not None else 0.05
    single = 1.0 - args.batch_share
    cpu_ms_per_decision = (
        single * ((1 - miss) * hot["cpu_ms_per_1000_decisions"] + miss * uniform["cpu_ms_per_1000_decisions"])
        + args.batch_share * batch["cpu_ms_per_1000_decisions"]
    ) / 1000.0
    # A hit in process costs Redis nothing; a miss costs what the uniform
    # run measured (a GET, and a SET when the set was computed).
    redis_per_decision = miss * (uniform["redis_commands_per_decision"] or 0.0)
    queries_per_miss = uniform["db_queries_per_miss"] or 0.0

    print("measured inputs (one replica):")
    for name, rate in per_core.items():
        print(f"  decisions/s per core, {name}: {rate:,.0f}")
    print(f"  Redis commands per decision: hot {hot['redis_commands_per_decision']}, "
          f"uniform {uniform['redis_commands_per_decision']}")
    print(f"  misses per decision, uniform: {uniform['misses_per_decision']:.3f}; "
          f"queries per miss: {queries_per_miss:.2f}")
    print(f"  idle replica: {idle:.1f} CPU ms per second")
    if audit_bytes:
        print(f"  audit bytes per decision on disk (PostgreSQL): {audit_bytes:.0f}")
    print(f"model: {miss:.0%} misses, {args.batch_share:.0%} in batches, {args.cores_per_replica:g} cores "
          f"per replica at {args.utilization:.0%}")

    # Where one unit of each shared part runs out (decisions/s), at the
    # planned utilization: the smallest is the first to need scaling.
    per_unit = {
        "one Redis shard": args.redis_ops_per_shard * args.utilization / max(redis_per_decision, 1e-9),
        "one PostgreSQL read replica": args.pg_queries_per_replica * args.utilization
        / max(miss * single * queries_per_miss, 1e-9),
        "one JetStream server (the audit stream)": args.jetstream_events_per_server * args.utilization,
        "the PostgreSQL primary as the audit sink": args.pg_audit_rows_per_second * args.utilization,
    }
    print("\none unit of each shared part carries (decisions/s):")
    for name, rate in sorted(per_unit.items(), key=lambda kv: kv[1]):
        print(f"  {name}: {rate:,.0f}")
    first = min(per_unit, key=per_unit.get)
    print(f"the first to saturate as load grows: {first}")

    for target in (float(t) for t in args.targets.split(",")):
        cores = target * cpu_ms_per_decision / 1000.0 / args.utilization
        replicas_needed = math.ceil(cores / args.cores_per_replica)
        redis_ops = target * redis_per_decision
        shards = max(1, math.ceil(redis_ops / (args.redis_ops_per_shard * args.utilization)))
        pg_queries = target * miss * single * queries_per_miss + replicas_needed * 4
        pg_replicas = max(1, math.ceil(pg_queries / (args.pg_queries_per_replica * args.utilization)))
        js_servers = max(1, math.ceil(target / (args.jetstream_events_per_server * args.utilization)))
        js_mb = target * args.jetstream_event_bytes / 1e6
        db_audit_mb = target * (audit_bytes or 0.0) / 1e6
        print(f"\n{target:,.0f} decisions/s:")
        print(f"  service: {cores:,.0f} cores -> {replicas_needed} replicas of {args.cores_per_replica:g} cores")
        print(f"  Redis: {redis_ops:,.0f} commands/s -> {shards} cluster shard(s)")
        print(f"  PostgreSQL: {pg_queries:,.0f} queries/s -> {pg_replicas} read replica(s)")
        print(f"  audit on JetStream: {target:,.0f} events/s, {js_mb:,.0f} MB/s -> {js_servers} JetStream server(s)"
              f" (a stream lives on one server: split the subjects over several streams)")
        if audit_bytes:
            print(f"  audit in PostgreSQL instead: {db_audit_mb:,.0f} MB/s of table growth, "
                  f"{target:,.0f} rows/s on the primary")


if __name__ == "__main__":
    main()
