//! The deadline guard, a tower layer around every gRPC route:
//!
//! * a server-side deadline (the client's `grpc-timeout` wins when shorter)
//!   answered with DEADLINE_EXCEEDED, where tonic alone would say CANCELLED;
//! * an oversize message answered with RESOURCE_EXHAUSTED and the limit, as
//!   gRPC specifies, where tonic alone would say OUT_OF_RANGE.

use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tonic::{Code, Status, body::Body};

use super::around::{Answer, Around, Inner};

/// Margin by which our deadline fires before the client's own deadline
/// timer (a tenth of it, within these bounds), so the caller sees our
/// DEADLINE_EXCEEDED rather than its own CANCELLED.
const DEADLINE_MARGIN: (Duration, Duration) =
    (Duration::from_micros(500), Duration::from_millis(10));

#[derive(Clone, Debug)]
pub struct Deadline {
    pub server_timeout: Duration,
    pub max_message_bytes: usize,
}

impl Around for Deadline {
    fn around<S: Inner<B>, B>(&self, request: Request<B>, inner: &mut S) -> Answer<S::Error> {
        let deadline = match client_timeout(request.headers().get("grpc-timeout")) {
            Some(client) if client < self.server_timeout => {
                client.saturating_sub((client / 10).clamp(DEADLINE_MARGIN.0, DEADLINE_MARGIN.1))
            }
            _ => self.server_timeout,
        };
        let limit = self.max_message_bytes;
        let response = inner.call(request);
        let until = tokio::time::Instant::now() + deadline;
        Box::pin(async move {
            // The handler sees the deadline too, and passes what is left of
            // it to the database and Redis.
            let response = crate::support::deadline::scope(until, response);
            match tokio::time::timeout_at(until, response).await {
                Ok(Ok(response)) => Ok(explain_oversize(response, limit)),
                Ok(Err(error)) => Err(error),
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "no answer within the request deadline of {} ms",
                    deadline.as_millis()
                ))
                .into_http()),
            }
        })
    }
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`).
fn client_timeout(header: Option<&HeaderValue>) -> Option<Duration> {
    let text = header?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Rewrites tonic's OUT_OF_RANGE for a too-large request into
/// RESOURCE_EXHAUSTED with a message that names the setting.
fn explain_oversize(response: Response<Body>, limit: usize) -> Response<Body> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.code() != Code::OutOfRange
        || !status
            .message()
            .contains("decoded message length too large")
    {
        return response;
    }
    Status::resource_exhausted(format!(
        "the request message is larger than the {limit}-byte limit (setting max_message_bytes): send less per call"
    ))
    .into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        let parse = |s: &'static str| client_timeout(Some(&HeaderValue::from_static(s)));
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("x"), None);
        assert_eq!(parse("10Q"), None);
    }
}
