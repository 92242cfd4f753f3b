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
//! Below the stack, every connection of both ports is bounded: `listener`
//! accepts within `connections`' limits (how many, how long they may say
//! nothing, stay idle or stay stuck), and `guarded_io` closes a socket that
//! passes one.

pub mod accounting;
pub mod admission;
pub mod around;
pub mod callers;
pub mod connections;
pub mod deadline;
pub mod guarded_io;
pub mod listener;
pub mod pushback;
pub mod tls;
pub mod trace;

use std::sync::Arc;

use tower::layer::util::{Identity, Stack};

use accounting::Accounting;
use admission::{Admission, Admit};
use around::AroundLayer;
use callers::{Callers, CheckCallers};
use connections::Connections;
use deadline::Deadline;
use trace::Trace;

/// The gRPC port's transport stack.
pub type TransportStack = Stack<
    AroundLayer<Deadline>,
    Stack<
        AroundLayer<Admit>,
        Stack<
            AroundLayer<CheckCallers>,
            Stack<AroundLayer<Accounting>, Stack<AroundLayer<Trace>, Identity>>,
        >,
    >,
>;

pub fn stack(
    connections: Arc<Connections>,
    callers: Arc<Callers>,
    admission: Arc<Admission>,
    deadline: Deadline,
) -> TransportStack {
    tower::ServiceBuilder::new()
        .layer(AroundLayer(Trace))
        .layer(AroundLayer(Accounting(connections)))
        .layer(AroundLayer(CheckCallers(callers)))
        .layer(AroundLayer(Admit(admission)))
        .layer(AroundLayer(deadline))
        .into_inner()
}
