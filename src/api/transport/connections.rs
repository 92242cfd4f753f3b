//! Every connection has a bounded cost. This is the registry of one port's
//! connections: their bounds, each one's state (spoke yet, last activity,
//! requests open, response bytes held), which to close when the port is full
//! (one that never spoke, else the longest idle), and why one closed. A
//! connection is closed when it says nothing within `handshake_timeout`,
//! stays idle for `idle_timeout`, or has requests open and completes none
//! for `stuck_timeout` (a client that stopped reading). The accept loop is
//! `listener`, the self-closing socket `guarded_io`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::task::AtomicWaker;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;

use super::{guarded_io::GuardedIo, pushback::GivenRetry};
use crate::support::metrics::Metrics;

/// The bounds of one listening port.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// A connection that sends nothing this long after it was accepted.
    pub handshake_timeout: Duration,
    /// A connection without open requests (HTTP/2 pings do not count) for
    /// this long.
    pub idle_timeout: Duration,
    /// A connection with open requests that completes none for this long.
    pub stuck_timeout: Duration,
    /// Response bytes a connection may hold waiting for its client; beyond
    /// it new requests on that connection are refused at once.
    pub max_pending_bytes: usize,
}

/// Why the server closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Close {
    Handshake,
    Idle,
    Stuck,
    Evicted,
    Shutdown,
}

impl Close {
    pub(super) fn label(self) -> &'static str {
        match self {
            Close::Handshake => "handshake_timeout",
            Close::Idle => "idle",
            Close::Stuck => "stuck_response",
            Close::Evicted => "evicted",
            Close::Shutdown => "shutdown",
        }
    }
}

/// The shared state of one connection: what the socket wrapper and the
/// request accounting both see.
pub struct ConnState {
    pub(super) epoch: Instant,
    pub(super) accepted_us: u64,
    /// Whether the request layer reports requests (gRPC) or activity is
    /// bytes on the wire (HTTP/1 ops port).
    pub(super) tracks_requests: bool,
    pub(super) spoke: AtomicBool,
    pub(super) in_flight: AtomicUsize,
    /// When the connection last became idle or completed a request (or, for
    /// the ops port, moved a byte).
    pub(super) last_progress_us: AtomicU64,
    pub(super) pending_bytes: AtomicUsize,
    pub(super) killed: Mutex<Option<Close>>,
    pub(super) waker: AtomicWaker,
    /// The retry time last given to this connection's client.
    pub retry: GivenRetry,
}

impl ConnState {
    pub(super) fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    pub(super) fn at(&self, us: u64) -> Instant {
        self.epoch + Duration::from_micros(us)
    }

    /// A request arrived on this connection.
    pub fn begin_request(&self) {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            self.last_progress_us
                .store(self.now_us(), Ordering::Release);
        }
    }

    /// A request's response was fully handed over (or abandoned).
    pub fn end_request(&self) {
        self.last_progress_us
            .store(self.now_us(), Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes.load(Ordering::Acquire)
    }

    /// Takes `bytes` of the connection's budget: always for its first held
    /// response, otherwise only within `limit`.
    pub fn reserve_pending(&self, bytes: usize, limit: usize) -> bool {
        self.pending_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held == 0 || held + bytes <= limit).then_some(held + bytes)
            })
            .is_ok()
    }

    pub fn sub_pending(&self, bytes: usize) {
        self.pending_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub(super) fn kill(&self, why: Close) {
        if let Ok(mut killed) = self.killed.lock() {
            killed.get_or_insert(why);
        }
        self.waker.wake();
    }

    pub(super) fn killed(&self) -> Option<Close> {
        self.killed.lock().ok().and_then(|k| *k)
    }

    /// Closes the connection if a bound is passed; else when to look again.
    pub(super) fn check(&self, limits: &ConnectionLimits) -> Result<Instant, Close> {
        if let Some(why) = self.killed() {
            return Err(why);
        }
        let now = self.now_us();
        let (deadline_us, why) = if !self.spoke.load(Ordering::Acquire) {
            (
                self.accepted_us + micros(limits.handshake_timeout),
                Close::Handshake,
            )
        } else if self.tracks_requests && self.in_flight.load(Ordering::Acquire) > 0 {
            let progress = self.last_progress_us.load(Ordering::Acquire);
            (progress + micros(limits.stuck_timeout), Close::Stuck)
        } else {
            let progress = self.last_progress_us.load(Ordering::Acquire);
            (progress + micros(limits.idle_timeout), Close::Idle)
        };
        if now >= deadline_us {
            return Err(why);
        }
        Ok(self.at(deadline_us))
    }

    /// How willing the port is to give this connection up: never spoke
    /// first, then idle the longest; busy ones are not evicted.
    pub(super) fn eviction_rank(&self) -> Option<(u8, u64)> {
        if self.killed().is_some() {
            return None;
        }
        if !self.spoke.load(Ordering::Acquire) {
            return Some((0, self.accepted_us));
        }
        if self.in_flight.load(Ordering::Acquire) == 0 {
            return Some((1, self.last_progress_us.load(Ordering::Acquire)));
        }
        None
    }
}

pub(super) fn micros(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// What a request learns of its connection (tonic puts it in the request's
/// extensions).
#[derive(Clone)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub state: Arc<ConnState>,
    /// The identity of the client's certificate (mutual TLS).
    pub peer: Option<Arc<str>>,
}

/// One port's connections.
pub struct Connections {
    pub(super) port: &'static str,
    pub(super) limits: ConnectionLimits,
    pub(super) epoch: Instant,
    pub(super) next_id: AtomicU64,
    pub(super) live: Mutex<HashMap<u64, Arc<ConnState>>>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) open: Gauge,
    pub(super) pending_total: Gauge,
}

impl Connections {
    pub fn new(port: &'static str, limits: ConnectionLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Connections {
            port,
            open: metrics.transport.connections(port),
            pending_total: metrics.transport.response_bytes_pending.clone(),
            limits,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// The gauge of response bytes held across all connections.
    pub fn pending_total(&self) -> &Gauge {
        &self.pending_total
    }

    pub(super) fn count(&self) -> usize {
        self.live.lock().map_or(0, |live| live.len())
    }

    /// Makes room for one more connection, if the port is full.
    pub(super) fn make_room(&self) -> bool {
        let Ok(live) = self.live.lock() else {
            return false;
        };
        if live.len() < self.limits.max_connections {
            return true;
        }
        let victim = live
            .values()
            .filter_map(|c| c.eviction_rank().map(|rank| (rank, c.clone())))
            .min_by_key(|(rank, _)| *rank);
        drop(live);
        match victim {
            Some((_, victim)) => {
                victim.kill(Close::Evicted);
                true
            }
            None => false,
        }
    }

    pub(super) fn register(
        self: &Arc<Self>,
        stream: TcpStream,
        tracks_requests: bool,
    ) -> GuardedIo {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = self.epoch.elapsed().as_micros() as u64;
        let state = Arc::new(ConnState {
            epoch: self.epoch,
            accepted_us: now,
            tracks_requests,
            spoke: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            last_progress_us: AtomicU64::new(now),
            pending_bytes: AtomicUsize::new(0),
            killed: Mutex::new(None),
            waker: AtomicWaker::new(),
            retry: GivenRetry::default(),
        });
        if let Ok(mut live) = self.live.lock() {
            live.insert(id, state.clone());
        }
        self.open.inc();
        let remote = stream.peer_addr().ok();
        let _ = stream.set_nodelay(true);
        GuardedIo {
            stream,
            info: ConnInfo {
                remote,
                state,
                peer: None,
            },
            timer: Box::pin(tokio::time::sleep(self.limits.handshake_timeout)),
            connections: self.clone(),
            id,
        }
    }

    /// Closes every connection still open (the end of a drain: what has
    /// not finished by then is cut off).
    pub fn close_all(&self) {
        let open: Vec<Arc<ConnState>> = self
            .live
            .lock()
            .map(|live| live.values().cloned().collect())
            .unwrap_or_default();
        for conn in open {
            conn.kill(Close::Shutdown);
        }
    }

    pub(super) fn closed(&self, id: u64, why: Option<Close>) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&id);
        }
        self.open.dec();
        if let Some(why) = why {
            self.metrics.transport.closed(self.port, why.label());
        }
    }
}
