//! What each connection holds for its client. Every gRPC request is counted
//! on its connection (so the connection knows when it is idle or stuck),
//! and its response is taken from the handler at once and held as bytes
//! until the client has taken them: a connection may hold at most
//! `max_pending_bytes` (beyond it new requests on it are refused
//! RESOURCE_EXHAUSTED, an answer small enough to need no flow-control
//! window), and the sum is the `response_bytes_pending` gauge.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame};
use prometheus_client::metrics::gauge::Gauge;
use tonic::{Status, body::Body};

use super::{
    around::{Answer, Around, Inner},
    connections::{ConnInfo, Connections},
};
use crate::error::AuthzError;

/// Ends the request on its connection if no response body took it over.
struct Open(Option<ConnInfo>);

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.state.end_request();
        }
    }
}

fn backlog(conn: &ConnInfo, limit: usize) -> Response<Body> {
    Status::from(AuthzError::overloaded(format!(
        "this connection holds {} bytes of responses its client has not read (limit {limit}, \
         setting max_pending_response_bytes): read them before sending more",
        conn.state.pending_bytes()
    )))
    .into_http()
}

#[derive(Clone)]
pub struct Accounting(pub Arc<Connections>);

impl Around for Accounting {
    fn around<S: Inner<B>, B>(&self, request: Request<B>, inner: &mut S) -> Answer<S::Error> {
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let limit = self.0.limits().max_pending_bytes;
        if let Some(conn) = &conn
            && conn.state.pending_bytes() > limit
        {
            self.0.metrics().transport.shed("connection_backlog");
            return Box::pin(std::future::ready(Ok(backlog(conn, limit))));
        }
        if let Some(conn) = &conn {
            conn.state.begin_request();
        }
        let mut open = Open(conn);
        let response = inner.call(request);
        let connections = self.0.clone();
        Box::pin(async move {
            let response = response.await?;
            let (parts, body) = response.into_parts();
            let Ok(held) = Held::take(body).await else {
                // The handler's body failed: tonic reports its own status.
                return Ok(Status::internal("the response could not be encoded").into_http());
            };
            if let Some(conn) = &open.0
                && !conn.state.reserve_pending(held.bytes, limit)
            {
                connections.metrics().transport.shed("connection_backlog");
                return Ok(backlog(conn, limit));
            }
            let body = held.into_body(open.0.take(), connections.pending_total().clone());
            Ok(Response::from_parts(parts, Body::new(body)))
        })
    }
}

/// A response's frames, taken from the handler's body.
struct Held {
    frames: VecDeque<Frame<Bytes>>,
    bytes: usize,
}

impl Held {
    async fn take(mut body: Body) -> Result<Held, tonic::Status> {
        let mut frames = VecDeque::new();
        let mut bytes = 0;
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        {
            let frame = frame?;
            if let Some(data) = frame.data_ref() {
                bytes += data.len();
            }
            frames.push_back(frame);
        }
        Ok(Held { frames, bytes })
    }

    /// The body that holds these frames; the connection's share was
    /// reserved already.
    fn into_body(self, conn: Option<ConnInfo>, total: Gauge) -> HeldBody {
        total.inc_by(self.bytes as i64);
        HeldBody {
            frames: self.frames,
            bytes: self.bytes,
            conn,
            total,
        }
    }
}

/// Hands the held frames to hyper; when hyper drops it (everything sent, or
/// the stream or connection gone) the bytes and the request are released.
struct HeldBody {
    frames: VecDeque<Frame<Bytes>>,
    bytes: usize,
    conn: Option<ConnInfo>,
    total: Gauge,
}

impl HttpBody for HeldBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }
}

impl Drop for HeldBody {
    fn drop(&mut self) {
        self.total.dec_by(self.bytes as i64);
        if let Some(conn) = self.conn.take() {
            conn.state.sub_pending(self.bytes);
            conn.state.end_request();
        }
    }
}
