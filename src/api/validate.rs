//! Turns wire requests into validated queries. Every rejection names the
//! field, what was wrong and what is expected.

use std::net::IpAddr;

use uuid::Uuid;

use crate::{
    error::AuthzError,
    model::{Action, Consistency, Query, RequestFacts, ResourceKind, ResourceRef},
    proto,
};

/// Longest id accepted before it is even parsed.
pub const MAX_ID_BYTES: usize = 256;
const MAX_USER_AGENT_BYTES: usize = 1024;
const MAX_ATTRIBUTES: usize = 64;
const MAX_ATTRIBUTE_BYTES: usize = 1024;

/// A short, printable echo of untrusted input.
fn echo(value: &str) -> String {
    let short: String = value.chars().take(40).collect();
    let more = if short.len() < value.len() { "…" } else { "" };
    format!("{short:?}{more}")
}

fn bounded<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, AuthzError> {
    if value.len() > max {
        return Err(AuthzError::invalid(format!(
            "{field} is {} bytes long; at most {max} are allowed",
            value.len()
        )));
    }
    Ok(value)
}

/// Text that will be stored or logged: within `max` bytes and free of NUL
/// and other control characters (PostgreSQL's text type refuses NUL
/// outright, and control characters forge log lines).
pub fn text<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, AuthzError> {
    let value = bounded(field, value, max)?;
    if let Some((at, c)) = value.char_indices().find(|(_, c)| c.is_control()) {
        return Err(AuthzError::invalid(format!(
            "{field} holds a control character (U+{:04X}) at byte {at}: send printable text only",
            c as u32
        )));
    }
    Ok(value)
}

pub fn uuid(field: &str, value: &str) -> Result<Uuid, AuthzError> {
    if value.is_empty() {
        return Err(AuthzError::invalid(format!(
            "{field} is required: a UUID such as 0192f0c1-7a4e-7cc3-9d0a-5b1f3e8a2c44"
        )));
    }
    let value = bounded(field, value, MAX_ID_BYTES)?;
    Uuid::try_parse(value)
        .map_err(|_| AuthzError::invalid(format!("{field} must be a UUID, got {}", echo(value))))
}

pub fn action(field: &str, value: &str) -> Result<Action, AuthzError> {
    Action::parse(value).ok_or_else(|| {
        AuthzError::invalid(format!(
            "{field} {} is not an action: use one of read, write, delete, share",
            echo(value)
        ))
    })
}

pub fn resource(field: &str, value: Option<&proto::Resource>) -> Result<ResourceRef, AuthzError> {
    let Some(resource) = value else {
        return Err(AuthzError::invalid(format!(
            "{field} is required: {{\"type\": \"project\", \"id\": \"<uuid>\"}}"
        )));
    };
    let kind = ResourceKind::parse(&resource.r#type).ok_or_else(|| {
        AuthzError::invalid(format!(
            "{field}.type {} is not a resource type: use one of project, generation, media",
            echo(&resource.r#type)
        ))
    })?;
    Ok(ResourceRef {
        kind,
        id: uuid(&format!("{field}.id"), &resource.id)?,
    })
}

pub fn consistency(value: i32, at_least_revision: i64) -> Result<Consistency, AuthzError> {
    match proto::Consistency::try_from(value) {
        Ok(proto::Consistency::MinimizeLatency) => Ok(Consistency::MinimizeLatency),
        Ok(proto::Consistency::FullyConsistent) => Ok(Consistency::FullyConsistent),
        Ok(proto::Consistency::AtLeastAsFresh) if at_least_revision > 0 => {
            Ok(Consistency::AtLeastAsFresh(at_least_revision))
        }
        Ok(proto::Consistency::AtLeastAsFresh) => Err(AuthzError::invalid(
            "CONSISTENCY_AT_LEAST_AS_FRESH needs at_least_revision: a revision from GetRevision",
        )),
        Err(_) => Err(AuthzError::invalid(format!(
            "consistency {value} is unknown: use CONSISTENCY_MINIMIZE_LATENCY, CONSISTENCY_FULLY_CONSISTENT or CONSISTENCY_AT_LEAST_AS_FRESH"
        ))),
    }
}

/// Longest signed media URL accepted.
const MAX_SIGNED_URL_BYTES: usize = 4096;

pub fn context(value: Option<&proto::RequestContext>) -> Result<RequestFacts, AuthzError> {
    let Some(ctx) = value else {
        return Ok(RequestFacts::default());
    };
    let ip = match ctx.ip.as_str() {
        "" => None,
        text => Some(text.parse::<IpAddr>().map_err(|_| {
            AuthzError::invalid(format!(
                "context.ip must be an IPv4 or IPv6 address, got {}",
                echo(text)
            ))
        })?),
    };
    if ctx.attributes.len() > MAX_ATTRIBUTES {
        return Err(AuthzError::invalid(format!(
            "context.attributes has {} entries; at most {MAX_ATTRIBUTES} are allowed",
            ctx.attributes.len()
        )));
    }
    for (key, value) in &ctx.attributes {
        text("a context.attributes key", key, MAX_ATTRIBUTE_BYTES)?;
        text(
            &format!("context.attributes[{}]", echo(key)),
            value,
            MAX_ATTRIBUTE_BYTES,
        )?;
    }
    Ok(RequestFacts {
        ip,
        user_agent: text("context.user_agent", &ctx.user_agent, MAX_USER_AGENT_BYTES)?.to_owned(),
        session_id: text("context.session_id", &ctx.session_id, MAX_ID_BYTES)?.to_owned(),
        request_id: text("context.request_id", &ctx.request_id, MAX_ID_BYTES)?.to_owned(),
        signed_url: text("context.signed_url", &ctx.signed_url, MAX_SIGNED_URL_BYTES)?.to_owned(),
    })
}

/// One check; `prefix` names where it sits in the request (`""` or `items[3].`).
pub fn query(
    prefix: &str,
    user_id: &str,
    act: &str,
    res: Option<&proto::Resource>,
) -> Result<Query, AuthzError> {
    Ok(Query {
        subject: uuid(&format!("{prefix}user_id"), user_id)?,
        action: action(&format!("{prefix}action"), act)?,
        resource: resource(&format!("{prefix}resource"), res)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_for_presence_length_and_shape() {
        assert!(uuid("user_id", "").is_err());
        assert!(uuid("user_id", &"a".repeat(300)).is_err());
        assert!(uuid("user_id", "' OR 1=1 --").is_err());
        assert!(uuid("user_id", "0192f0c1-7a4e-7cc3-9d0a-5b1f3e8a2c44").is_ok());
    }

    #[test]
    fn stored_text_has_no_control_characters() {
        assert!(text("context.request_id", "req-1 ok", 64).is_ok());
        for bad in [
            "a\0b",
            "line\nforged",
            "bell\u{7}",
            "esc\u{1b}[31m",
            "\u{85}next",
        ] {
            let e = text("context.request_id", bad, 64).unwrap_err().to_string();
            assert!(
                e.starts_with("context.request_id holds a control character"),
                "{e}"
            );
        }
        assert!(text("f", &"x".repeat(65), 64).is_err());
    }

    #[test]
    fn echo_is_short_and_quoted() {
        let long = "x".repeat(500);
        let shown = echo(&long);
        assert!(shown.len() < 60, "{shown}");
        assert!(shown.ends_with('…'));
    }
}
