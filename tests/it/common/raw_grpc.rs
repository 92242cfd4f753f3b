//! A bare HTTP/2 gRPC call: the `grpc-timeout` header is sent and no timer
//! of the client's own runs (tonic's client enforces it locally and would
//! answer CANCELLED first on a busy machine), so what comes back is the
//! server's own answer.

use std::net::SocketAddr;

use prost::Message;

/// Calls `path` with `message`; returns (grpc-status, grpc-message).
pub async fn call(
    addr: SocketAddr,
    path: &str,
    message: &impl Message,
    grpc_timeout: &str,
) -> (i32, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    let payload = message.encode_to_vec();
    let mut frame = Vec::with_capacity(payload.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    stream.send_data(bytes::Bytes::from(frame), true).unwrap();
    let response = response.await.unwrap();
    let (head, mut body) = response.into_parts();
    // A trailers-only answer carries the status in the headers.
    let mut trailers = head.headers.clone();
    if !trailers.contains_key("grpc-status") {
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        trailers = body.trailers().await.unwrap().unwrap_or_default();
    }
    let text = |name: &str| {
        trailers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    (text("grpc-status").parse().unwrap(), text("grpc-message"))
}
