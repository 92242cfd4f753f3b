//! Admission control: beyond capacity a request is answered
//! RESOURCE_EXHAUSTED at once (with `google.rpc.RetryInfo` and
//! `retry-after-ms`) instead of queueing. Two signals, both about this
//! replica's own queues:
//!
//! * requests in flight above `max_in_flight` (a hard bound on the work and
//!   memory held at once);
//! * the runtime's scheduling lag above `max_runtime_lag`: a ready task
//!   already waits that long for a thread, so more admitted work only makes
//!   every admitted request slower. Lag is what a saturated CPU looks like
//!   from inside, whatever the request mix (hits cost microseconds, misses
//!   wait on the database and are bounded by their own queue).
//!
//! Health checks and reflection are never shed; Envoy's ext_authz checks
//! are admitted by their handler, which answers a shed check with an
//! explicit HTTP deny (a gRPC error would let `failure_mode_allow` pass it).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::Request;
use tonic::Status;

use super::around::{Answer, Around, Inner};

use crate::{
    error::{AuthzError, OVERLOAD_RETRY},
    support::{metrics::Metrics, saturation::Saturation},
};

/// Path prefixes never shed at the transport.
const EXEMPT: [&str; 3] = [
    "/grpc.health.",
    "/grpc.reflection.",
    "/envoy.service.auth.v3.Authorization/",
];

pub struct Admission {
    max_in_flight: usize,
    max_lag: Duration,
    in_flight: AtomicUsize,
    saturation: Arc<Saturation>,
    metrics: Arc<Metrics>,
}

/// An admitted request's place; dropping it frees the place.
pub struct Admitted {
    admission: Arc<Admission>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.admission.metrics.transport.in_flight.dec();
    }
}

impl Admission {
    pub fn new(
        max_in_flight: usize,
        max_lag: Duration,
        saturation: Arc<Saturation>,
        metrics: Arc<Metrics>,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            max_in_flight,
            max_lag,
            in_flight: AtomicUsize::new(0),
            saturation,
            metrics,
        })
    }

    /// Admits a request, or says why it is shed and when to retry.
    pub fn admit(self: &Arc<Self>) -> Result<Admitted, AuthzError> {
        let lag = self.saturation.lag();
        if lag > self.max_lag {
            self.metrics.transport.shed("runtime_lag");
            return Err(AuthzError::Overloaded {
                message: format!(
                    "this replica is beyond its capacity (its runtime lags {} ms); retry shortly \
                     or on another replica",
                    lag.as_millis()
                ),
                retry_after: (lag * 2).max(OVERLOAD_RETRY),
            });
        }
        let ahead = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if ahead >= self.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.metrics.transport.shed("in_flight");
            return Err(AuthzError::overloaded(format!(
                "this replica is beyond its capacity ({} requests in flight, setting \
                 max_in_flight); retry shortly or on another replica",
                self.max_in_flight
            )));
        }
        self.metrics.transport.in_flight.inc();
        Ok(Admitted {
            admission: self.clone(),
        })
    }
}

#[derive(Clone)]
pub struct Admit(pub Arc<Admission>);

impl Around for Admit {
    fn around<S: Inner<B>, B>(&self, request: Request<B>, inner: &mut S) -> Answer<S::Error> {
        let path = request.uri().path();
        if EXEMPT.iter().any(|prefix| path.starts_with(prefix)) {
            return Box::pin(inner.call(request));
        }
        match self.0.admit() {
            Ok(admitted) => {
                let response = inner.call(request);
                Box::pin(async move {
                    let response = response.await;
                    drop(admitted);
                    response
                })
            }
            Err(shed) => Box::pin(async move { Ok(Status::from(shed).into_http()) }),
        }
    }
}
