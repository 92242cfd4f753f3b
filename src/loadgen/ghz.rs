//! ghz's JSON config format, the subset this load generator runs. A field
//! outside the subset is an error, never ignored: a run that silently drops
//! part of its config would measure something else than was asked.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::LoadError;

/// The ghz fields this load generator understands.
pub const SUPPORTED: &[&str] = &[
    "name",
    "proto",
    "call",
    "host",
    "insecure",
    "concurrency",
    "connections",
    "rps",
    "total",
    "duration",
    "timeout",
    "connect-timeout",
    "data",
    "data-file",
    "load-schedule",
    "load-start",
    "load-step",
    "load-end",
    "load-step-duration",
    "load-max-duration",
];

/// Most steps a load schedule may expand to.
const MAX_STEPS: usize = 1_000;

/// A Go duration such as `10s`, `1m30s` or `250ms`, as ghz writes them.
pub fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 10s, 1m30s or 250ms");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0.0_f64;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(split);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

fn go_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = Option::<String>::deserialize(d)?;
    text.map(|t| parse_go_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
}

/// A ghz config file as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct GhzConfig {
    pub name: Option<String>,
    pub proto: Option<String>,
    pub call: String,
    pub host: String,
    #[serde(default)]
    pub insecure: bool,
    pub concurrency: Option<usize>,
    pub connections: Option<usize>,
    pub rps: Option<f64>,
    pub total: Option<u64>,
    #[serde(default, deserialize_with = "go_duration")]
    pub duration: Option<Duration>,
    #[serde(default, deserialize_with = "go_duration")]
    pub timeout: Option<Duration>,
    #[serde(default, deserialize_with = "go_duration")]
    pub connect_timeout: Option<Duration>,
    pub data: Option<Value>,
    pub data_file: Option<String>,
    pub load_schedule: Option<String>,
    pub load_start: Option<f64>,
    pub load_step: Option<f64>,
    pub load_end: Option<f64>,
    #[serde(default, deserialize_with = "go_duration")]
    pub load_step_duration: Option<Duration>,
    #[serde(default, deserialize_with = "go_duration")]
    pub load_max_duration: Option<Duration>,
}

impl GhzConfig {
    /// Parses a config, naming any field outside the supported subset.
    pub fn parse(text: &str) -> Result<GhzConfig, LoadError> {
        let object: Map<String, Value> = serde_json::from_str(text)
            .map_err(|e| LoadError(format!("not a ghz JSON config object: {e}")))?;
        let unsupported: Vec<&str> = object
            .keys()
            .map(String::as_str)
            .filter(|k| !SUPPORTED.contains(k))
            .collect();
        if !unsupported.is_empty() {
            return Err(LoadError(format!(
                "unsupported ghz option(s) {unsupported:?}; velro-loadgen runs only {SUPPORTED:?} \
                 (use ghz itself for the others)"
            )));
        }
        serde_json::from_value(Value::Object(object)).map_err(|e| LoadError(e.to_string()))
    }

    pub fn read(path: &Path) -> Result<GhzConfig, LoadError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LoadError(format!("{}: {e}", path.display())))?;
        GhzConfig::parse(&text).map_err(|e| LoadError(format!("{}: {}", path.display(), e.0)))
    }
}

/// The RPC a plan calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Call {
    HealthCheck,
    Authorize,
    BatchAuthorize,
    Authenticate,
    /// Envoy ext_authz `envoy.service.auth.v3.Authorization/Check`.
    ExtAuthzCheck,
}

impl Call {
    fn parse(text: &str) -> Result<Call, LoadError> {
        let normal = text.trim_start_matches('/').replace('/', ".");
        match normal.as_str() {
            "grpc.health.v1.Health.Check" => Ok(Call::HealthCheck),
            "velro.authz.v1.AuthorizationService.Authorize" => Ok(Call::Authorize),
            "velro.authz.v1.AuthorizationService.BatchAuthorize" => Ok(Call::BatchAuthorize),
            "velro.authz.v1.AuthorizationService.Authenticate" => Ok(Call::Authenticate),
            "envoy.service.auth.v3.Authorization.Check" => Ok(Call::ExtAuthzCheck),
            _ => Err(LoadError(format!(
                "call {text:?} is not one velro-loadgen can make; use grpc.health.v1.Health.Check, \
                 velro.authz.v1.AuthorizationService.Authorize, …BatchAuthorize or …Authenticate"
            ))),
        }
    }
}

/// One rate of an open-loop schedule; `duration: None` runs until the plan stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateStep {
    pub rps: f64,
    pub duration: Option<Duration>,
}

/// Closed loop (each worker sends as soon as its last answer came) or open
/// loop (sends follow a rate schedule whatever the server does).
#[derive(Clone, Debug, PartialEq)]
pub enum Load {
    Closed,
    Open(Vec<RateStep>),
}

/// Where the request messages come from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    Inline(Value),
    File(PathBuf),
}

/// A runnable plan: a config with defaults applied and rules checked.
#[derive(Clone, Debug)]
pub struct Plan {
    pub name: String,
    pub call: Call,
    pub host: String,
    pub concurrency: usize,
    pub connections: usize,
    pub load: Load,
    /// Stop after this many requests (ignored when `duration` is set, as in ghz).
    pub total: Option<u64>,
    pub duration: Option<Duration>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub data: DataSource,
}

fn positive(name: &str, value: Option<f64>) -> Result<f64, LoadError> {
    match value {
        Some(v) if v.is_finite() && v > 0.0 => Ok(v),
        Some(v) => Err(LoadError(format!(
            "{name} must be a positive number, not {v}"
        ))),
        None => Err(LoadError(format!(
            "{name} is required by this load-schedule"
        ))),
    }
}

/// Expands ghz's step / line schedules into rate steps.
fn schedule(c: &GhzConfig) -> Result<Load, LoadError> {
    let kind = c.load_schedule.as_deref().unwrap_or("const");
    let step_duration = match kind {
        "const" => {
            return Ok(match c.rps {
                Some(rps) if rps > 0.0 => Load::Open(vec![RateStep {
                    rps,
                    duration: None,
                }]),
                Some(rps) => return Err(LoadError(format!("rps must be positive, not {rps}"))),
                None => Load::Closed,
            });
        }
        "step" => c
            .load_step_duration
            .ok_or_else(|| LoadError("load-schedule \"step\" needs load-step-duration".into()))?,
        "line" => Duration::from_secs(1),
        other => {
            return Err(LoadError(format!(
                "load-schedule {other:?} is unknown; use const, step or line"
            )));
        }
    };
    if step_duration.is_zero() {
        return Err(LoadError("load-step-duration must be above zero".into()));
    }
    let start = positive("load-start", c.load_start)?;
    let step = c
        .load_step
        .ok_or_else(|| LoadError("load-step is required by this load-schedule".into()))?;
    let limit = c.load_max_duration.or(c.duration);
    if c.load_end.is_none() && limit.is_none() {
        return Err(LoadError(
            "a step or line schedule without load-end needs load-max-duration or duration".into(),
        ));
    }
    let mut steps = Vec::new();
    let mut rps = start;
    let mut elapsed = Duration::ZERO;
    loop {
        let past_end = match c.load_end {
            Some(end) if step >= 0.0 => rps > end,
            Some(end) => rps < end,
            None => false,
        };
        let past_limit = limit.is_some_and(|l| elapsed >= l);
        if past_end || past_limit || rps <= 0.0 || step == 0.0 {
            break;
        }
        if steps.len() >= MAX_STEPS {
            return Err(LoadError(format!(
                "the load schedule expands to more than {MAX_STEPS} steps"
            )));
        }
        steps.push(RateStep {
            rps,
            duration: Some(step_duration),
        });
        elapsed += step_duration;
        rps += step;
    }
    // After the last step ghz holds the final rate until the run stops.
    let last = steps.last().map_or(start, |s| s.rps);
    if step == 0.0 {
        steps.push(RateStep {
            rps: start,
            duration: None,
        });
    } else if let Some(end) = c.load_end {
        steps.push(RateStep {
            rps: end,
            duration: None,
        });
    } else {
        steps.push(RateStep {
            rps: last,
            duration: None,
        });
    }
    Ok(Load::Open(steps))
}

impl Plan {
    /// Applies ghz's defaults (total 200, concurrency 50, one connection,
    /// timeout 20 s) and checks the rules a run depends on.
    pub fn from_config(c: &GhzConfig, config_path: Option<&Path>) -> Result<Plan, LoadError> {
        if !c.insecure {
            return Err(LoadError(
                "TLS is not supported by velro-loadgen; set \"insecure\": true".into(),
            ));
        }
        let call = Call::parse(&c.call)?;
        let concurrency = c.concurrency.unwrap_or(50);
        let connections = c.connections.unwrap_or(1);
        if concurrency == 0 || connections == 0 {
            return Err(LoadError(
                "concurrency and connections must be at least 1".into(),
            ));
        }
        if connections > concurrency {
            return Err(LoadError(format!(
                "connections ({connections}) cannot exceed concurrency ({concurrency})"
            )));
        }
        if c.rps.is_some() && c.load_schedule.as_deref().is_some_and(|s| s != "const") {
            return Err(LoadError(
                "give either rps or a step/line load-schedule, not both".into(),
            ));
        }
        let data = match (&c.data, &c.data_file) {
            (Some(_), Some(_)) => {
                return Err(LoadError("give either data or data-file, not both".into()));
            }
            (Some(value), None) => DataSource::Inline(value.clone()),
            (None, Some(file)) => DataSource::File(resolve(file, config_path)),
            (None, None) => DataSource::Inline(Value::Object(Map::new())),
        };
        let name = c.name.clone().unwrap_or_else(|| {
            config_path
                .and_then(|p| p.file_stem())
                .map_or_else(|| c.call.clone(), |s| s.to_string_lossy().into_owned())
        });
        Ok(Plan {
            name,
            call,
            host: c.host.clone(),
            concurrency,
            connections,
            load: schedule(c)?,
            total: match c.duration {
                Some(_) => None,
                None => Some(c.total.unwrap_or(200)),
            },
            duration: c.duration,
            timeout: c.timeout.unwrap_or(Duration::from_secs(20)),
            connect_timeout: c.connect_timeout.unwrap_or(Duration::from_secs(10)),
            data,
        })
    }

    pub fn read(path: &Path) -> Result<Plan, LoadError> {
        Plan::from_config(&GhzConfig::read(path)?, Some(path))
            .map_err(|e| LoadError(format!("{}: {}", path.display(), e.0)))
    }
}

/// A data file path as ghz reads it (from the working directory), falling
/// back to the config file's directory so configs run from anywhere.
fn resolve(file: &str, config_path: Option<&Path>) -> PathBuf {
    let direct = PathBuf::from(file);
    if direct.is_absolute() || direct.exists() {
        return direct;
    }
    config_path
        .and_then(Path::parent)
        .map(|dir| dir.join(file))
        .filter(|p| p.exists())
        .unwrap_or(direct)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(json: &str) -> Result<Plan, LoadError> {
        Plan::from_config(&GhzConfig::parse(json)?, None)
    }

    const BASE: &str = r#""call": "velro.authz.v1.AuthorizationService.Authorize", "host": "127.0.0.1:1", "insecure": true"#;

    #[test]
    fn every_supported_field_is_read() {
        let p = plan(&format!(
            r#"{{{BASE}, "name": "n", "proto": "p.proto", "concurrency": 9, "connections": 3,
                "total": 77, "timeout": "1.5s", "connect-timeout": "2s", "data": [{{"user_id": "x"}}]}}"#
        ))
        .unwrap();
        assert_eq!(p.name, "n");
        assert_eq!(p.call, Call::Authorize);
        assert_eq!(p.host, "127.0.0.1:1");
        assert_eq!((p.concurrency, p.connections), (9, 3));
        assert_eq!((p.total, p.duration), (Some(77), None));
        assert_eq!(p.timeout, Duration::from_millis(1500));
        assert_eq!(p.connect_timeout, Duration::from_secs(2));
        assert_eq!(p.load, Load::Closed);
        assert!(matches!(p.data, DataSource::Inline(Value::Array(_))));

        // duration wins over total, as in ghz; rps makes the loop open.
        let p = plan(&format!(
            r#"{{{BASE}, "rps": 250, "total": 5, "duration": "1m30s", "data-file": "d.json"}}"#
        ))
        .unwrap();
        assert_eq!((p.total, p.duration), (None, Some(Duration::from_secs(90))));
        assert_eq!(
            p.load,
            Load::Open(vec![RateStep {
                rps: 250.0,
                duration: None
            }])
        );
        assert_eq!(p.data, DataSource::File(PathBuf::from("d.json")));
        // ghz defaults.
        let p = plan(&format!("{{{BASE}}}")).unwrap();
        assert_eq!((p.total, p.concurrency, p.connections), (Some(200), 50, 1));
        assert_eq!(p.timeout, Duration::from_secs(20));
    }

    #[test]
    fn step_and_line_schedules_expand_into_rate_steps() {
        let p = plan(&format!(
            r#"{{{BASE}, "load-schedule": "step", "load-start": 100, "load-step": 200,
                "load-end": 500, "load-step-duration": "5s", "duration": "1m"}}"#
        ))
        .unwrap();
        let Load::Open(steps) = p.load else {
            panic!("open loop expected")
        };
        let rates: Vec<f64> = steps.iter().map(|s| s.rps).collect();
        assert_eq!(rates, [100.0, 300.0, 500.0, 500.0]);
        assert_eq!(steps[0].duration, Some(Duration::from_secs(5)));
        assert_eq!(steps[3].duration, None);

        let p = plan(&format!(
            r#"{{{BASE}, "load-schedule": "line", "load-start": 10, "load-step": 10,
                "load-max-duration": "3s", "total": 100}}"#
        ))
        .unwrap();
        let Load::Open(steps) = p.load else {
            panic!("open loop expected")
        };
        let rates: Vec<f64> = steps.iter().map(|s| s.rps).collect();
        assert_eq!(rates, [10.0, 20.0, 30.0, 30.0]);
        assert_eq!(steps[0].duration, Some(Duration::from_secs(1)));
    }

    #[test]
    fn unsupported_or_inconsistent_configs_are_errors() {
        let unsupported = plan(&format!(r#"{{{BASE}, "cacert": "ca.pem"}}"#)).unwrap_err();
        assert!(unsupported.0.contains("cacert"), "{unsupported}");
        assert!(unsupported.0.contains("unsupported"), "{unsupported}");
        let cases = [
            (
                r#""call": "x.Y.Z", "host": "h:1", "insecure": true"#,
                "not one",
            ),
            (
                r#""call": "grpc.health.v1.Health.Check", "host": "h:1""#,
                "TLS",
            ),
            (
                &format!(r#"{BASE}, "connections": 5, "concurrency": 2"#),
                "exceed",
            ),
            (&format!(r#"{BASE}, "duration": "soon""#), "duration"),
            (&format!(r#"{BASE}, "load-schedule": "wave""#), "unknown"),
            (
                &format!(r#"{BASE}, "load-schedule": "step", "load-start": 1, "load-step": 1"#),
                "load-step-duration",
            ),
            (
                &format!(r#"{BASE}, "rps": 5, "load-schedule": "line""#),
                "either rps",
            ),
            (
                &format!(r#"{BASE}, "data": {{}}, "data-file": "f""#),
                "either data",
            ),
            (&format!(r#"{BASE}, "concurrency": "many""#), "invalid type"),
        ];
        for (body, expected) in cases {
            let e = plan(&format!("{{{body}}}")).unwrap_err();
            assert!(e.0.contains(expected), "{body}: {e}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("1h2m3s"), Ok(Duration::from_secs(3723)));
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("").is_err());
    }
}
