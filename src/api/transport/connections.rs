//! Every connection has a bounded cost. The listener counts connections and
//! keeps at most `max_connections` per port (a full port makes room by
//! closing its least useful connection: one that never spoke, else the
//! longest idle); accept errors (out of file descriptors) back off instead of
//! spinning. Each connection's socket is wrapped so that it closes itself
//! when it says nothing within `handshake_timeout`, when it stays idle for
//! `idle_timeout`, or when it has requests open and completes none for
//! `stuck_timeout` (a client that stopped reading): closing drops every
//! buffer the connection held.

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::task::AtomicWaker;
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::Sleep,
};

use super::tls::{TlsServer, peer_identity};
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
enum Close {
    Handshake,
    Idle,
    Stuck,
    Evicted,
    Shutdown,
}

impl Close {
    fn label(self) -> &'static str {
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
    epoch: Instant,
    accepted_us: u64,
    /// Whether the request layer reports requests (gRPC) or activity is
    /// bytes on the wire (HTTP/1 ops port).
    tracks_requests: bool,
    spoke: AtomicBool,
    in_flight: AtomicUsize,
    /// When the connection last became idle or completed a request (or, for
    /// the ops port, moved a byte).
    last_progress_us: AtomicU64,
    pending_bytes: AtomicUsize,
    killed: Mutex<Option<Close>>,
    waker: AtomicWaker,
}

impl ConnState {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn at(&self, us: u64) -> Instant {
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

    fn kill(&self, why: Close) {
        if let Ok(mut killed) = self.killed.lock() {
            killed.get_or_insert(why);
        }
        self.waker.wake();
    }

    fn killed(&self) -> Option<Close> {
        self.killed.lock().ok().and_then(|k| *k)
    }

    /// Closes the connection if a bound is passed; else when to look again.
    fn check(&self, limits: &ConnectionLimits) -> Result<Instant, Close> {
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
    fn eviction_rank(&self) -> Option<(u8, u64)> {
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

fn micros(d: Duration) -> u64 {
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
    port: &'static str,
    limits: ConnectionLimits,
    epoch: Instant,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<ConnState>>>,
    metrics: Arc<Metrics>,
    open: Gauge,
    pending_total: Gauge,
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

    fn count(&self) -> usize {
        self.live.lock().map_or(0, |live| live.len())
    }

    /// Makes room for one more connection, if the port is full.
    fn make_room(&self) -> bool {
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

    fn register(self: &Arc<Self>, stream: TcpStream, tracks_requests: bool) -> GuardedIo {
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

    fn closed(&self, id: u64, why: Option<Close>) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&id);
        }
        self.open.dec();
        if let Some(why) = why {
            self.metrics.transport.closed(self.port, why.label());
        }
    }
}

/// Accepts connections for one port within its bounds.
pub struct BoundedListener {
    listener: TcpListener,
    connections: Arc<Connections>,
    tracks_requests: bool,
    /// When an accept error was last logged, and how many since.
    last_logged: Option<Instant>,
    unlogged: u64,
}

/// Connections handed over (handshakes done) but not yet taken by the server.
const HANDSHAKES: usize = 1024;

/// Accept errors are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);
const BACKOFF: (Duration, Duration) = (Duration::from_millis(5), Duration::from_secs(1));

impl BoundedListener {
    /// `tracks_requests`: the request layer reports requests on these
    /// connections (gRPC); otherwise bytes on the wire are the activity.
    pub fn new(
        listener: TcpListener,
        connections: Arc<Connections>,
        tracks_requests: bool,
    ) -> Self {
        BoundedListener {
            listener,
            connections,
            tracks_requests,
            last_logged: None,
            unlogged: 0,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection within the bounds; never fails, never spins.
    pub async fn next(&mut self) -> GuardedIo {
        let mut backoff = BACKOFF.0;
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    if self.connections.make_room() {
                        return self.connections.register(stream, self.tracks_requests);
                    }
                    // Every connection is busy: this one is refused.
                    drop(stream);
                    let port = self.connections.port;
                    self.connections.metrics.transport.closed(port, "refused");
                }
                Err(error) => {
                    let port = self.connections.port;
                    self.connections
                        .metrics
                        .transport
                        .accept_errors
                        .get_or_create(&crate::support::metrics::transport::PortLabels { port })
                        .inc();
                    self.log_accept_error(&error);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF.1);
                }
            }
        }
    }

    fn log_accept_error(&mut self, error: &io::Error) {
        self.unlogged += 1;
        let due = self.last_logged.is_none_or(|at| at.elapsed() >= LOG_EVERY);
        if due {
            tracing::warn!(
                port = self.connections.port,
                open = self.connections.count(),
                failures = self.unlogged,
                "cannot accept connections: {error}; backing off"
            );
            self.last_logged = Some(Instant::now());
            self.unlogged = 0;
        }
    }

    /// The listener as the stream tonic serves from: plaintext, or TLS
    /// (handshakes run concurrently, each within the handshake timeout that
    /// bounds any silent connection).
    pub fn into_stream(
        mut self,
        tls: Option<Arc<TlsServer>>,
    ) -> impl futures::Stream<Item = io::Result<ServerIo>> {
        let (ready, incoming) = tokio::sync::mpsc::channel::<ServerIo>(HANDSHAKES);
        tokio::spawn(async move {
            loop {
                let io = tokio::select! {
                    io = self.next() => io,
                    () = ready.closed() => return,
                };
                let Some(tls) = &tls else {
                    if ready.send(ServerIo::Plain(io)).await.is_err() {
                        return;
                    }
                    continue;
                };
                let (acceptor, ready) = (tls.acceptor(), ready.clone());
                tokio::spawn(async move {
                    match acceptor.accept(io).await {
                        Ok(stream) => {
                            let _ = ready.send(ServerIo::tls(stream)).await;
                        }
                        Err(e) => tracing::debug!("TLS handshake failed: {e}"),
                    }
                });
            }
        });
        futures::stream::unfold(incoming, |mut incoming| async move {
            incoming.recv().await.map(|io| (Ok(io), incoming))
        })
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = GuardedIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (GuardedIo, SocketAddr) {
        let io = self.next().await;
        let remote = io
            .info
            .remote
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        (io, remote)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A client socket that closes itself when its connection passes a bound.
pub struct GuardedIo {
    stream: TcpStream,
    info: ConnInfo,
    timer: Pin<Box<Sleep>>,
    connections: Arc<Connections>,
    id: u64,
}

impl GuardedIo {
    /// Registers interest in the connection's bounds; an error closes it.
    fn poll_bounds(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.info.state.waker.register(cx.waker());
        let mut fired = false;
        loop {
            let next = match self.info.state.check(&self.connections.limits) {
                Ok(next) => tokio::time::Instant::from_std(next),
                Err(why) => {
                    self.info.state.kill(why);
                    return Err(closed(why));
                }
            };
            // The timer only moves earlier, or after it fired: a bound that
            // moved later (progress) is looked at again when it fires.
            if fired || next < self.timer.deadline() {
                self.timer.as_mut().reset(next);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            fired = true;
        }
    }

    fn activity(&self) {
        let state = &self.info.state;
        state.spoke.store(true, Ordering::Release);
        if !state.tracks_requests {
            state
                .last_progress_us
                .store(state.now_us(), Ordering::Release);
        }
    }
}

fn closed(why: Close) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("connection closed by the server: {}", why.label()),
    )
}

impl Drop for GuardedIo {
    fn drop(&mut self) {
        self.connections.closed(self.id, self.info.state.killed());
    }
}

impl AsyncRead for GuardedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.activity();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.poll_bounds(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }
}

impl AsyncWrite for GuardedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(why) = self.info.state.killed() {
            return Poll::Ready(Err(closed(why)));
        }
        match Pin::new(&mut self.stream).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if !self.info.state.tracks_requests && n > 0 {
                    self.activity();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.poll_bounds(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(why) = self.info.state.killed() {
            return Poll::Ready(Err(closed(why)));
        }
        match Pin::new(&mut self.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if !self.info.state.tracks_requests && n > 0 {
                    self.activity();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.poll_bounds(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for GuardedIo {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// A served connection: plaintext, or TLS over the same bounded socket.
pub enum ServerIo {
    Plain(GuardedIo),
    Tls(Box<tokio_rustls::server::TlsStream<GuardedIo>>, ConnInfo),
}

impl ServerIo {
    fn tls(stream: tokio_rustls::server::TlsStream<GuardedIo>) -> ServerIo {
        let (io, session) = stream.get_ref();
        let peer = session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(peer_identity)
            .map(Arc::from);
        let info = ConnInfo {
            peer,
            ..io.info.clone()
        };
        ServerIo::Tls(Box::new(stream), info)
    }
}

impl AsyncRead for ServerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(io) => Pin::new(io).poll_read(cx, buf),
            ServerIo::Tls(io, _) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(io) => Pin::new(io).poll_write(cx, data),
            ServerIo::Tls(io, _) => Pin::new(io.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerIo::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            ServerIo::Tls(io, _) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ServerIo::Plain(io) => io.is_write_vectored(),
            ServerIo::Tls(io, _) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(io) => Pin::new(io).poll_flush(cx),
            ServerIo::Tls(io, _) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerIo::Plain(io) => Pin::new(io).poll_shutdown(cx),
            ServerIo::Tls(io, _) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for ServerIo {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            ServerIo::Plain(io) => io.info.clone(),
            ServerIo::Tls(_, info) => info.clone(),
        }
    }
}
