//! Transport concerns, one stack built in one place. Around every gRPC
//! route, outermost first:
//!
//! 0. `trace`: the RPC's span (when traces are exported);
//! 1. `accounting`: each request counted on its connection, its response
//!    held as bytes within the connection's bound;
//! 2. `callers`: who may call which RPC (certificate identity or key);
//! 3. `admission`: beyond capacity, RESOURCE_EXHAUSTED at once;
//! 4. `deadline`: the server's deadline (DEADLINE_EXCEEDED) and oversize
//!    messages (RESOURCE_EXHAUSTED).
//!
//! Below the stack, `connections` bounds every connection of both ports:
//! how many, how long they may say nothing, stay idle or stay stuck.

pub mod accounting;
pub mod admission;
pub mod callers;
pub mod connections;
pub mod deadline;
pub mod tls;
pub mod trace;

use std::sync::Arc;

use tower::layer::util::{Identity, Stack};

use accounting::AccountingLayer;
use admission::{Admission, AdmissionLayer};
use callers::{Callers, CallersLayer};
use connections::Connections;
use deadline::GuardLayer;
use trace::TraceLayer;

/// The gRPC port's transport stack.
pub type TransportStack = Stack<
    GuardLayer,
    Stack<AdmissionLayer, Stack<CallersLayer, Stack<AccountingLayer, Stack<TraceLayer, Identity>>>>,
>;

pub fn stack(
    connections: Arc<Connections>,
    callers: Arc<Callers>,
    admission: Arc<Admission>,
    deadline: GuardLayer,
) -> TransportStack {
    tower::ServiceBuilder::new()
        .layer(TraceLayer)
        .layer(AccountingLayer(connections))
        .layer(CallersLayer(callers))
        .layer(AdmissionLayer(admission))
        .layer(deadline)
        .into_inner()
}
