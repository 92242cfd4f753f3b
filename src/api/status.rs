//! The one table from an error to what the wire says: the gRPC code, the
//! HTTP status Envoy's ext_authz answers with, and when to retry. Both
//! faces read it; nothing else maps errors.

use std::time::Duration;

use http::StatusCode;
use tonic::{Code, Status};

use crate::error::AuthzError;

/// When a client may retry after an error that names no time of its own.
pub const RETRY_SOON: Duration = Duration::from_secs(1);

/// What one error looks like on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireStatus {
    pub grpc: Code,
    pub http: StatusCode,
    /// The machine-readable reason of an HTTP deny body.
    pub http_reason: &'static str,
    /// Set when waiting and retrying can succeed.
    pub retry_after: Option<Duration>,
    /// Whether the error's own message is shown to an HTTP client; a
    /// dependency's failure is logged, and the client learns only that it
    /// may retry.
    pub detail_shown: bool,
}

const fn row(
    grpc: Code,
    http: StatusCode,
    http_reason: &'static str,
    retry_after: Option<Duration>,
    detail_shown: bool,
) -> WireStatus {
    WireStatus {
        grpc,
        http,
        http_reason,
        retry_after,
        detail_shown,
    }
}

/// The table.
pub fn wire_status(error: &AuthzError) -> WireStatus {
    use AuthzError as E;
    match error {
        E::InvalidArgument(_) => row(
            Code::InvalidArgument,
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            None,
            true,
        ),
        E::Unauthenticated(_) => row(
            Code::Unauthenticated,
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            None,
            true,
        ),
        E::PermissionDenied(_) => row(
            Code::PermissionDenied,
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            None,
            true,
        ),
        E::ResourceExhausted(_) => row(
            Code::ResourceExhausted,
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            Some(RETRY_SOON),
            true,
        ),
        E::RateLimited { retry_after, .. } => row(
            Code::ResourceExhausted,
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            Some(*retry_after),
            true,
        ),
        E::Overloaded { retry_after, .. } => row(
            Code::ResourceExhausted,
            StatusCode::SERVICE_UNAVAILABLE,
            "OVERLOADED",
            Some(*retry_after),
            true,
        ),
        E::Unavailable(_) => row(
            Code::Unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            Some(RETRY_SOON),
            false,
        ),
        E::DeadlineExceeded(_) => row(
            Code::DeadlineExceeded,
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            Some(RETRY_SOON),
            false,
        ),
        E::Internal(_) => row(
            Code::Internal,
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            Some(RETRY_SOON),
            false,
        ),
    }
}

/// An HTTP `retry-after` value: whole seconds, rounded up (RFC 9110).
pub fn retry_after_seconds(after: Duration) -> String {
    after.as_millis().div_ceil(1000).max(1).to_string()
}

/// The gRPC `retry-after-ms` metadata value.
pub fn retry_after_millis(after: Duration) -> String {
    after.as_millis().max(1).to_string()
}

impl From<AuthzError> for Status {
    fn from(error: AuthzError) -> Status {
        let wire = wire_status(&error);
        let message = error.to_string();
        let Some(retry_after) = wire.retry_after else {
            return Status::new(wire.grpc, message);
        };
        // The standard way to say when to retry: google.rpc.RetryInfo in the
        // status details, and the same in `retry-after-ms` metadata for
        // clients that do not decode details.
        use tonic_types::{ErrorDetails, StatusExt};
        let mut status = Status::with_error_details(
            wire.grpc,
            message,
            ErrorDetails::with_retry_info(Some(retry_after)),
        );
        if let Ok(value) = retry_after_millis(retry_after).parse() {
            status.metadata_mut().insert("retry-after-ms", value);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::StatusExt;

    fn every_variant() -> Vec<AuthzError> {
        vec![
            AuthzError::invalid("bad field"),
            AuthzError::unauthenticated("no token"),
            AuthzError::PermissionDenied("not yours".into()),
            AuthzError::ResourceExhausted("queue full".into()),
            AuthzError::RateLimited {
                message: "slow down".into(),
                retry_after: Duration::from_millis(1_500),
            },
            AuthzError::Overloaded {
                message: "busy".into(),
                retry_after: Duration::from_millis(250),
            },
            AuthzError::Unavailable("db down".into()),
            AuthzError::DeadlineExceeded("too slow".into()),
            AuthzError::Internal("bug".into()),
        ]
    }

    #[test]
    fn every_variant_has_its_row_on_both_faces() {
        let expected = [
            (Code::InvalidArgument, 400, None),
            (Code::Unauthenticated, 401, None),
            (Code::PermissionDenied, 403, None),
            (Code::ResourceExhausted, 429, Some(RETRY_SOON)),
            (
                Code::ResourceExhausted,
                429,
                Some(Duration::from_millis(1_500)),
            ),
            (
                Code::ResourceExhausted,
                503,
                Some(Duration::from_millis(250)),
            ),
            (Code::Unavailable, 503, Some(RETRY_SOON)),
            (Code::DeadlineExceeded, 503, Some(RETRY_SOON)),
            (Code::Internal, 503, Some(RETRY_SOON)),
        ];
        for (error, (grpc, http, retry)) in every_variant().into_iter().zip(expected) {
            let wire = wire_status(&error);
            assert_eq!(
                (wire.grpc, wire.http.as_u16(), wire.retry_after),
                (grpc, http, retry),
                "{error:?}"
            );
            let status = Status::from(error.clone());
            assert_eq!(status.code(), grpc, "{error:?}");
            assert_eq!(status.message(), error.to_string());
            let retry_info = status.get_details_retry_info();
            assert_eq!(
                retry_info.and_then(|r| r.retry_delay),
                retry,
                "{error:?}: RetryInfo"
            );
            assert_eq!(
                status
                    .metadata()
                    .get("retry-after-ms")
                    .and_then(|v| v.to_str().ok()),
                retry.map(retry_after_millis).as_deref(),
                "{error:?}: retry-after-ms"
            );
        }
    }

    #[test]
    fn dependency_failures_hide_their_detail_from_http_clients() {
        for error in every_variant() {
            let hidden = matches!(
                error,
                AuthzError::Unavailable(_)
                    | AuthzError::DeadlineExceeded(_)
                    | AuthzError::Internal(_)
            );
            assert_eq!(wire_status(&error).detail_shown, !hidden, "{error:?}");
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), "1");
        assert_eq!(retry_after_seconds(Duration::from_millis(1_001)), "2");
        assert_eq!(retry_after_seconds(Duration::from_secs(3)), "3");
        assert_eq!(retry_after_millis(Duration::ZERO), "1");
    }
}
