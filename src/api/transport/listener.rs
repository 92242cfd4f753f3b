//! The accept loop of one port: at most `max_connections` (a full port makes
//! room by closing its least useful connection), TLS handshakes off the
//! accept path and bounded, accept errors (out of file descriptors) backed
//! off and logged once per interval instead of spinning.

use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::net::TcpListener;

use super::{
    connections::Connections,
    guarded_io::{GuardedIo, ServerIo},
    tls::TlsServer,
};

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
