//! Request messages from ghz data (protojson, as ghz reads it, through the
//! service's own descriptors) and the answer each one should get.

use std::path::Path;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;
use tonic_health::pb::HealthCheckRequest;
use uuid::Uuid;

use super::{LoadError, data, expect::Expected, ghz::Call, ghz::DataSource};
use crate::{
    model::workload,
    model::{Action, ResourceKind},
    proto::{self, AuthenticateRequest, AuthorizeRequest, BatchAuthorizeRequest},
};

/// One request ready to send.
#[derive(Clone, Debug)]
pub enum Message {
    HealthCheck(HealthCheckRequest),
    Authorize(AuthorizeRequest),
    BatchAuthorize(BatchAuthorizeRequest),
    Authenticate(AuthenticateRequest),
    ExtAuthzCheck(Box<CheckRequest>),
}

/// Messages and, where the data set is known, the decisions they should get
/// (one per check: one for Authorize, one per item for BatchAuthorize).
pub struct Workset {
    pub messages: Vec<Message>,
    pub expected: Vec<Option<Vec<bool>>>,
}

fn pool() -> Result<DescriptorPool, LoadError> {
    let mut pool = DescriptorPool::new();
    for set in [
        proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        proto::ENVOY_FILE_DESCRIPTOR_SET,
    ] {
        pool.decode_file_descriptor_set(set)
            .map_err(|e| LoadError(format!("descriptor set: {e}")))?;
    }
    Ok(pool)
}

fn full_name(call: Call) -> &'static str {
    match call {
        Call::HealthCheck => "grpc.health.v1.HealthCheckRequest",
        Call::Authorize => "velro.authz.v1.AuthorizeRequest",
        Call::BatchAuthorize => "velro.authz.v1.BatchAuthorizeRequest",
        Call::Authenticate => "velro.authz.v1.AuthenticateRequest",
        Call::ExtAuthzCheck => "envoy.service.auth.v3.CheckRequest",
    }
}

/// Parses one protojson object into the call's request type.
fn decode(pool: &DescriptorPool, call: Call, value: &Value) -> Result<Message, LoadError> {
    let name = full_name(call);
    let descriptor = pool
        .get_message_by_name(name)
        .ok_or_else(|| LoadError(format!("{name} is missing from the descriptors")))?;
    let dynamic = DynamicMessage::deserialize(descriptor, value)
        .map_err(|e| LoadError(format!("data is not a valid {name}: {e}")))?;
    let transcode = |e: prost::DecodeError| LoadError(format!("{name}: {e}"));
    Ok(match call {
        Call::HealthCheck => Message::HealthCheck(dynamic.transcode_to().map_err(transcode)?),
        Call::Authorize => Message::Authorize(dynamic.transcode_to().map_err(transcode)?),
        Call::BatchAuthorize => Message::BatchAuthorize(dynamic.transcode_to().map_err(transcode)?),
        Call::Authenticate => Message::Authenticate(dynamic.transcode_to().map_err(transcode)?),
        Call::ExtAuthzCheck => {
            Message::ExtAuthzCheck(Box::new(dynamic.transcode_to().map_err(transcode)?))
        }
    })
}

fn expect_one(
    expected: &Expected,
    user: &str,
    action: &str,
    resource: Option<&proto::Resource>,
) -> Option<bool> {
    let resource = resource?;
    Some(expected.allows(
        Uuid::parse_str(user).ok()?,
        Action::parse(action)?,
        ResourceKind::parse(&resource.r#type)?,
        Uuid::parse_str(&resource.id).ok()?,
    ))
}

/// The decisions a message should get, when each check in it is valid.
fn expected_for(expected: &Expected, message: &Message) -> Option<Vec<bool>> {
    match message {
        Message::HealthCheck(_) | Message::Authenticate(_) | Message::ExtAuthzCheck(_) => None,
        Message::Authorize(r) => {
            expect_one(expected, &r.user_id, &r.action, r.resource.as_ref()).map(|d| vec![d])
        }
        Message::BatchAuthorize(b) => b
            .items
            .iter()
            .map(|i| expect_one(expected, &i.user_id, &i.action, i.resource.as_ref()))
            .collect(),
    }
}

/// Loads a plan's data. With `check`, the data directory's `workload.json`
/// names the data set the expected decisions come from.
pub fn load(call: Call, source: &DataSource, check: bool) -> Result<Workset, LoadError> {
    let (value, dir) = match source {
        DataSource::Inline(value) => (value.clone(), None),
        DataSource::File(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| LoadError(format!("data-file {}: {e}", path.display())))?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| LoadError(format!("data-file {}: {e}", path.display())))?;
            (value, path.parent().map(Path::to_path_buf))
        }
    };
    let items = match value {
        Value::Array(items) if !items.is_empty() => items,
        Value::Array(_) => return Err(LoadError("data array must not be empty".into())),
        object @ Value::Object(_) => vec![object],
        _ => {
            return Err(LoadError(
                "data must be an object or an array of objects".into(),
            ));
        }
    };
    let pool = pool()?;
    let messages = items
        .iter()
        .enumerate()
        .map(|(i, v)| decode(&pool, call, v).map_err(|e| LoadError(format!("data[{i}]: {}", e.0))))
        .collect::<Result<Vec<_>, _>>()?;

    // Authenticate answers carry no decision: their check is "no error".
    let needs_check = check
        && matches!(
            call,
            Call::Authorize | Call::BatchAuthorize | Call::ExtAuthzCheck
        );
    let expected = match (needs_check, dir) {
        (false, _) => vec![None; messages.len()],
        (true, None) => {
            return Err(LoadError(
                "answers can only be checked against a data-file drawn by `velro-loadgen data` \
                 (its directory holds workload.json); pass --no-check to load without checking"
                    .into(),
            ));
        }
        (true, Some(_)) if call == Call::ExtAuthzCheck => {
            let DataSource::File(path) = source else {
                return Err(LoadError("ext_authz data must come from a file".into()));
            };
            let sidecar = path.with_extension("expect.json");
            let text = std::fs::read_to_string(&sidecar).map_err(|e| {
                LoadError(format!(
                    "{}: {e}; ext_authz answers are checked against this file (written with the data by the report), or pass --no-check",
                    sidecar.display()
                ))
            })?;
            let allow: Vec<bool> = serde_json::from_str(&text)
                .map_err(|e| LoadError(format!("{}: {e}", sidecar.display())))?;
            if allow.len() != messages.len() {
                return Err(LoadError(format!(
                    "{} does not match its data file",
                    sidecar.display()
                )));
            }
            allow.into_iter().map(|a| Some(vec![a])).collect()
        }
        (true, Some(dir)) => {
            let id = data::read_workload_id(&dir)?;
            let expected = Expected::new(&workload::generate(id.scale, id.seed));
            messages
                .iter()
                .map(|m| expected_for(&expected, m))
                .collect()
        }
    };
    Ok(Workset { messages, expected })
}
