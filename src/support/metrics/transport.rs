//! Transport metrics: connections per port and why they closed, requests in
//! flight and shed, response bytes waiting for slow readers, runtime lag.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// A listening port: `grpc` or `ops`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    pub port: &'static str,
}

/// Why the server closed a connection (`handshake_timeout`, `idle`,
/// `stuck_response`, `evicted`, `refused`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub port: &'static str,
    pub reason: &'static str,
}

/// Why a request was shed (`in_flight`, `runtime_lag`, `connection_backlog`,
/// `database_queue`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    pub reason: &'static str,
}

/// A caller of the `[[callers]]` table (or `unknown`) and whether it was let
/// through.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallerLabels {
    pub caller: String,
    pub outcome: &'static str,
}

#[derive(Default)]
pub struct TransportMetrics {
    pub callers: Family<CallerLabels, Counter>,
    pub connections: Family<PortLabels, Gauge>,
    pub connections_closed: Family<CloseLabels, Counter>,
    pub accept_errors: Family<PortLabels, Counter>,
    pub in_flight: Gauge,
    pub shed: Family<ShedLabels, Counter>,
    pub early_retries_held: Counter,
    pub response_bytes_pending: Gauge,
    /// Microseconds, set at each scrape.
    pub runtime_lag_us: Gauge,
}

impl TransportMetrics {
    pub(super) fn register(&self, registry: &mut Registry) {
        registry.register(
            "caller_requests",
            "Requests by caller of the [[callers]] table (or unknown) and outcome (allowed, refused)",
            self.callers.clone(),
        );
        registry.register(
            "connections",
            "Open client connections by port",
            self.connections.clone(),
        );
        registry.register(
            "connections_closed_by_server",
            "Connections the server closed, by port and reason (handshake_timeout, idle, \
             stuck_response, evicted, refused, shutdown)",
            self.connections_closed.clone(),
        );
        registry.register(
            "accept_errors",
            "Failed accepts (e.g. out of file descriptors), by port; the listener backs off",
            self.accept_errors.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests admitted and not yet answered (gRPC port)",
            self.in_flight.clone(),
        );
        registry.register(
            "requests_shed",
            "Requests answered RESOURCE_EXHAUSTED at once because the replica was beyond \
             capacity, by signal",
            self.shed.clone(),
        );
        registry.register(
            "early_retries_held",
            "Refusals held until the retry time their connection was given, because the \
             client asked again before it (at most password_max_wait)",
            self.early_retries_held.clone(),
        );
        registry.register(
            "response_bytes_pending",
            "Response bytes produced and not yet taken by their clients",
            self.response_bytes_pending.clone(),
        );
        registry.register(
            "runtime_lag_microseconds",
            "How late the async runtime wakes a ready task (smoothed): its own queue",
            self.runtime_lag_us.clone(),
        );
    }

    pub fn caller(&self, caller: &str, outcome: &'static str) {
        self.callers
            .get_or_create(&CallerLabels {
                caller: caller.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Makes every series of a known label exist (at 0) from the start.
    pub fn known(&self) {
        for reason in [
            "in_flight",
            "runtime_lag",
            "connection_backlog",
            "database_queue",
        ] {
            let _ = self.shed.get_or_create(&ShedLabels { reason });
        }
        for port in ["grpc", "ops"] {
            let _ = self.connections.get_or_create(&PortLabels { port });
            for reason in [
                "handshake_timeout",
                "idle",
                "stuck_response",
                "evicted",
                "refused",
            ] {
                let _ = self
                    .connections_closed
                    .get_or_create(&CloseLabels { port, reason });
            }
        }
    }

    pub fn shed(&self, reason: &'static str) {
        self.shed.get_or_create(&ShedLabels { reason }).inc();
    }

    pub fn closed(&self, port: &'static str, reason: &'static str) {
        self.connections_closed
            .get_or_create(&CloseLabels { port, reason })
            .inc();
    }

    pub fn connections(&self, port: &'static str) -> Gauge {
        self.connections.get_or_create(&PortLabels { port }).clone()
    }
}
