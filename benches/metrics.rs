//! What the metrics cost one hot Authorize: the calls the request path makes
//! (in-flight gauge up and down, RPC counter and latency histogram, decision
//! counter, cache lookup counter), on the labels of a cache hit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{hint::black_box, time::Duration};

use criterion::{Criterion, criterion_group, criterion_main};
use velro_authz::support::metrics::Metrics;

fn per_authorize(c: &mut Criterion) {
    let metrics = Metrics::new();
    let mut group = c.benchmark_group("metrics");
    group.bench_function("per_hot_authorize", |b| {
        b.iter(|| {
            metrics.transport.in_flight.inc();
            metrics.record_cache_lookup(black_box("in_process"), true);
            metrics.record_decision(true, black_box("team"), black_box("TEAM_ROLE"));
            metrics.record_rpc(
                black_box("Authorize"),
                black_box("ok"),
                black_box(Duration::from_micros(180)),
            );
            metrics.transport.in_flight.dec();
        })
    });
    group.finish();
}

criterion_group!(benches, per_authorize);
criterion_main!(benches);
