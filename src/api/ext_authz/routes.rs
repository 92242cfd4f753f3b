//! HTTP requests to authorization queries: path normalisation (so
//! `/v1/generations/../projects/x` cannot dodge a rule) and the route table.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    model::{Action, ResourceKind, ResourceRef},
    support::percent::percent_decode,
};

/// One route: `GET /v1/generations/{id}` -> `read` on `generation:{id}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// HTTP methods (upper case) or `["*"]`.
    pub methods: Vec<String>,
    /// A host to match (case-insensitive, port ignored); any host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Path template; `{id}` is the resource id (one segment, a UUID).
    pub path: String,
    /// The action; by default from the method (GET/HEAD read, DELETE delete, others write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `project`, `generation` or `media`.
    pub resource: String,
}

/// Why a path could not be normalised.
#[derive(Debug, PartialEq, Eq)]
pub struct BadPath(pub &'static str);

/// Percent-decodes one segment; an encoded `/`, `\` or NUL is refused, since
/// it would let a segment pose as several.
fn decode_segment(segment: &str) -> Result<String, BadPath> {
    percent_decode(segment, b"/\\\0").map_err(|e| BadPath(e.0))
}

/// The path's segments after dropping the query and fragment, decoding,
/// collapsing empty segments and resolving `.` and `..`.
pub fn normalise(path: &str) -> Result<Vec<String>, BadPath> {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if !path.starts_with('/') {
        return Err(BadPath("a path that does not start with /"));
    }
    if path.contains('\\') {
        return Err(BadPath("a backslash in the path"));
    }
    let mut segments: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let segment = decode_segment(raw)?;
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(BadPath("a path that climbs above the root"));
                }
            }
            _ => segments.push(segment),
        }
    }
    Ok(segments)
}

/// What a matched route asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub action: Action,
    pub resource: ResourceRef,
}

/// The outcome of matching a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Match {
    Found(Target),
    /// A route matched but its `{id}` is not a UUID.
    BadId,
    NoRoute,
}

fn default_action(method: &str) -> Action {
    match method {
        "GET" | "HEAD" | "OPTIONS" => Action::Read,
        "DELETE" => Action::Delete,
        _ => Action::Write,
    }
}

/// Routes checked once at start-up.
#[derive(Clone, Debug)]
pub struct RouteTable {
    routes: Vec<(Route, Vec<String>, Option<Action>, ResourceKind)>,
}

impl RouteTable {
    pub fn new(routes: &[Route]) -> Result<RouteTable, String> {
        let compiled = routes
            .iter()
            .map(|r| {
                let template =
                    normalise(&r.path).map_err(|e| format!("route {:?}: {}", r.path, e.0))?;
                if template.iter().filter(|s| *s == "{id}").count() != 1 {
                    return Err(format!("route {:?} needs exactly one {{id}}", r.path));
                }
                let action = r
                    .action
                    .as_deref()
                    .map(|a| {
                        Action::parse(a)
                            .ok_or_else(|| format!("route {:?}: unknown action {a:?}", r.path))
                    })
                    .transpose()?;
                let kind = ResourceKind::parse(&r.resource).ok_or_else(|| {
                    format!("route {:?}: unknown resource {:?}", r.path, r.resource)
                })?;
                Ok((r.clone(), template, action, kind))
            })
            .collect::<Result<_, String>>()?;
        Ok(RouteTable { routes: compiled })
    }

    pub fn find(&self, method: &str, host: &str, segments: &[String]) -> Match {
        let method = method.to_ascii_uppercase();
        let host = host.split(':').next().unwrap_or_default();
        for (route, template, action, kind) in &self.routes {
            let method_ok = route
                .methods
                .iter()
                .any(|m| m == "*" || m.eq_ignore_ascii_case(&method));
            let host_ok = route
                .host
                .as_deref()
                .is_none_or(|h| h.eq_ignore_ascii_case(host));
            if !method_ok || !host_ok || template.len() != segments.len() {
                continue;
            }
            let mut id = None;
            let fits = template
                .iter()
                .zip(segments)
                .all(|(t, s)| match t.as_str() {
                    "{id}" => {
                        id = Some(s.as_str());
                        true
                    }
                    literal => literal == s,
                });
            if !fits {
                continue;
            }
            return match id.and_then(|i| Uuid::parse_str(i).ok()) {
                Some(id) => Match::Found(Target {
                    action: action.unwrap_or_else(|| default_action(&method)),
                    resource: ResourceRef { kind: *kind, id },
                }),
                None => Match::BadId,
            };
        }
        Match::NoRoute
    }
}

/// Velro's public API routes, the default table.
pub fn default_routes() -> Vec<Route> {
    let mut routes = Vec::new();
    for (collection, resource) in [
        ("projects", "project"),
        ("generations", "generation"),
        ("media", "media"),
    ] {
        routes.push(Route {
            methods: vec!["POST".into()],
            host: None,
            path: format!("/v1/{collection}/{{id}}/share"),
            action: Some("share".into()),
            resource: resource.into(),
        });
        routes.push(Route {
            methods: ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"]
                .map(String::from)
                .to_vec(),
            host: None,
            path: format!("/v1/{collection}/{{id}}"),
            action: None,
            resource: resource.into(),
        });
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_resolves_and_refuses() {
        let ok = |p: &str| normalise(p).unwrap().join("/");
        assert_eq!(ok("/v1//generations/./x?y=1"), "v1/generations/x");
        assert_eq!(ok("/v1/generations/../projects/x"), "v1/projects/x");
        assert_eq!(ok("/v1/%2e%2e/v1/projects/x"), "v1/projects/x");
        assert_eq!(ok("/v1/pro%6Aects/x"), "v1/projects/x");
        for bad in [
            "/v1/a%2Fb",
            "/v1/a%5Cb",
            "/../etc",
            "/v1/%zz",
            "v1/x",
            "/v1/a\\b",
            "/v1/%00",
        ] {
            assert!(normalise(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_match_method_host_and_id() {
        let table = RouteTable::new(&default_routes()).unwrap();
        let id = Uuid::new_v4();
        let seg = |p: String| normalise(&p).unwrap();
        let found = table.find(
            "get",
            "api.velro.test:443",
            &seg(format!("/v1/generations/{id}")),
        );
        assert_eq!(
            found,
            Match::Found(Target {
                action: Action::Read,
                resource: ResourceRef {
                    kind: ResourceKind::Generation,
                    id
                }
            })
        );
        let share = table.find("POST", "", &seg(format!("/v1/projects/{id}/share")));
        assert!(matches!(
            share,
            Match::Found(Target {
                action: Action::Share,
                ..
            })
        ));
        assert_eq!(
            table.find("GET", "", &seg("/v1/projects/not-a-uuid".into())),
            Match::BadId
        );
        assert_eq!(
            table.find("GET", "", &seg("/v2/projects".into())),
            Match::NoRoute
        );
        assert!(
            RouteTable::new(&[Route {
                methods: vec!["GET".into()],
                host: None,
                path: "/v1/x".into(),
                action: None,
                resource: "project".into()
            }])
            .is_err()
        );
    }
}
