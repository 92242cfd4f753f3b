//! The socket of one accepted connection, wrapped so that it closes itself
//! when it passes a bound (silent, idle or stuck too long): closing drops
//! every buffer the connection held. `ServerIo` is the plain or TLS form the
//! servers take.

use std::{
    io,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::Sleep,
};

use super::{
    connections::{Close, ConnInfo, Connections},
    tls::peer_identity,
};

/// A client socket that closes itself when its connection passes a bound.
pub struct GuardedIo {
    pub(super) stream: TcpStream,
    pub(super) info: ConnInfo,
    pub(super) timer: Pin<Box<Sleep>>,
    pub(super) connections: Arc<Connections>,
    pub(super) id: u64,
}

impl GuardedIo {
    /// Registers interest in the connection's bounds; an error closes it.
    pub(super) fn poll_bounds(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
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

    /// After a write: bytes out are activity on a connection whose requests
    /// are not counted; a write that must wait watches the bounds.
    fn written(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
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

    pub(super) fn activity(&self) {
        let state = &self.info.state;
        state.spoke.store(true, Ordering::Release);
        if !state.tracks_requests {
            state
                .last_progress_us
                .store(state.now_us(), Ordering::Release);
        }
    }
}

pub(super) fn closed(why: Close) -> io::Error {
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
        let polled = Pin::new(&mut self.stream).poll_write(cx, data);
        self.written(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(why) = self.info.state.killed() {
            return Poll::Ready(Err(closed(why)));
        }
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.written(cx, polled)
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
    pub(super) fn tls(stream: tokio_rustls::server::TlsStream<GuardedIo>) -> ServerIo {
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
