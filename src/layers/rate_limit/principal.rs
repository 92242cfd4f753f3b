//! Who a quota belongs to.

use std::net::IpAddr;

use uuid::Uuid;

/// Who a quota belongs to: the user, or the client IP of an anonymous
/// request. Small and `Copy`, so keying a limiter allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    User(Uuid),
    Ip(IpAddr),
    Anonymous,
}

impl Principal {
    pub fn of(subject: Uuid, ip: Option<IpAddr>) -> Principal {
        match (subject.is_nil(), ip) {
            (false, _) => Principal::User(subject),
            (true, Some(ip)) => Principal::Ip(ip),
            (true, None) => Principal::Anonymous,
        }
    }
}

/// As written in messages, audit events and Redis keys.
impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::User(id) => write!(f, "{id}"),
            Principal::Ip(ip) => write!(f, "ip:{ip}"),
            Principal::Anonymous => f.write_str("anonymous"),
        }
    }
}
