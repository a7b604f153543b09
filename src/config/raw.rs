//! Serde structs that mirror the YAML one to one: no logic, no defaults beyond `Option`.
//!
//! Every struct denies unknown keys, because a typo in an edge proxy's config must be an error and never
//! a silently ignored setting. Meaning (durations, addresses, regexes) is given in `validate`.

use serde::{de::Error as _, Deserialize, Deserializer};
use std::collections::BTreeMap;

/// A YAML scalar taken as text, so `x-api-version: 2` and `"2"` mean the same.
#[derive(Debug, Clone)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(s) => Ok(Scalar(s)),
            serde_yaml::Value::Number(n) => Ok(Scalar(n.to_string())),
            serde_yaml::Value::Bool(b) => Ok(Scalar(b.to_string())),
            _ => Err(D::Error::custom("expected a string or a number")),
        }
    }
}

/// A scalar or a YAML list of scalars, joined with `, ` (`expect_status: [200, "301-308"]` reads like
/// `expect_status: "200, 301-308"`).
#[derive(Debug, Clone)]
pub struct ScalarList(pub String);

impl<'de> Deserialize<'de> for ScalarList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let one = |v: serde_yaml::Value| match v {
            serde_yaml::Value::String(s) => Ok(s),
            serde_yaml::Value::Number(n) => Ok(n.to_string()),
            _ => Err(D::Error::custom(
                "expected a string, a number or a list of them",
            )),
        };
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::Sequence(items) => Ok(ScalarList(
                items
                    .into_iter()
                    .map(one)
                    .collect::<Result<Vec<_>, _>>()?
                    .join(", "),
            )),
            v => one(v).map(ScalarList),
        }
    }
}

/// One value or a list of them (`host: a.com` or `host: [a.com, b.com]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `"v"` (exact), `{regex: "..."}` or `{present: true|false}`.
#[derive(Debug, Clone)]
pub enum RawValueMatch {
    Exact(String),
    Regex(String),
    Present(bool),
}

impl<'de> Deserialize<'de> for RawValueMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde_yaml::Value;
        let expected = "expected a string, {regex: \"...\"} or {present: true}";
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Self::Exact(s)),
            Value::Number(n) => Ok(Self::Exact(n.to_string())),
            Value::Bool(b) => Ok(Self::Exact(b.to_string())),
            Value::Mapping(m) if m.len() == 1 => {
                let (k, v) = m.into_iter().next().expect("one entry");
                match (k.as_str(), v) {
                    (Some("regex"), Value::String(r)) => Ok(Self::Regex(r)),
                    (Some("present"), Value::Bool(p)) => Ok(Self::Present(p)),
                    _ => Err(D::Error::custom(expected)),
                }
            }
            _ => Err(D::Error::custom(expected)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: String,
    pub bind: String,
    pub redirect_https: Option<u16>,
    pub tls: Option<RawListenerTls>,
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_header_size: Option<Scalar>,
    pub max_headers: Option<usize>,
    pub max_uri_length: Option<Scalar>,
    pub body_timeout: Option<String>,
    pub send_timeout: Option<String>,
    pub http2_max_concurrent_streams: Option<u32>,
    pub http2_max_frame_size: Option<Scalar>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    pub certificates: Vec<RawCert>,
    pub min_version: Option<Scalar>,
    pub alpn: Option<Vec<String>>,
    pub hsts: Option<String>,
    pub client_auth: Option<RawClientAuth>,
    pub handshake_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    pub ca: String,
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub balance: Option<String>,
    pub hash_header: Option<String>,
    pub hash_cookie: Option<String>,
    pub servers: Vec<RawServer>,
    pub health: Option<RawHealth>,
    pub passive: Option<RawPassive>,
    pub sticky: Option<RawSticky>,
    pub connect_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_idle_per_server: Option<usize>,
    pub tls: Option<bool>,
    pub ca: Option<String>,
    pub sni: Option<String>,
    pub protocol: Option<String>,
    pub panic: Option<bool>,
    pub slow_start: Option<String>,
    pub max_connections: Option<u32>,
    pub queue_size: Option<u32>,
    pub queue_timeout: Option<String>,
    #[serde(default, deserialize_with = "RawRetryBudget::deserialize_either")]
    pub retry_budget: Option<RawRetryBudget>,
}

/// `retry_budget: 20` (a percentage, the original form) or `{percent: 20, min_per_second: 10}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetryBudget {
    pub percent: Option<u32>,
    pub min_per_second: Option<u32>,
}

impl RawRetryBudget {
    pub fn deserialize_either<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<RawRetryBudget>, D::Error> {
        let expected = "expected a percentage (0 to 100) or {percent: N, min_per_second: N}";
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .map(|p| {
                    Some(RawRetryBudget {
                        percent: Some(p),
                        min_per_second: None,
                    })
                })
                .ok_or_else(|| D::Error::custom(expected)),
            v @ serde_yaml::Value::Mapping(_) => serde_yaml::from_value(v)
                .map(Some)
                .map_err(D::Error::custom),
            serde_yaml::Value::Null => Ok(None),
            _ => Err(D::Error::custom(expected)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub address: String,
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub unhealthy_interval: Option<String>,
    pub timeout: Option<String>,
    pub expect_status: Option<ScalarList>,
    pub expect_body: Option<String>,
    pub healthy_after: Option<u32>,
    pub unhealthy_after: Option<u32>,
    pub initial: Option<String>,
    pub method: Option<String>,
    pub host: Option<String>,
    pub tcp: Option<bool>,
    pub grpc: Option<bool>,
    pub grpc_service: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub consecutive_failures: Option<u32>,
    pub ejection_time: Option<String>,
    pub max_ejection_time: Option<String>,
    pub max_ejected_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub cookie: String,
    pub ttl: Option<String>,
    pub on_unavailable: Option<String>,
    pub drain_timeout: Option<String>,
    pub secret: Option<String>,
    pub path: Option<String>,
    pub domain: Option<String>,
    pub http_only: Option<bool>,
    pub secure: Option<bool>,
    pub same_site: Option<String>,
    pub strip: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
    pub pool: String,
    pub timeout: Option<String>,
    pub stream_idle_timeout: Option<String>,
    pub retries: Option<u32>,
    pub strip_prefix: Option<String>,
    pub max_body_size: Option<Scalar>,
    pub request_headers: Option<RawHeaderOps>,
    pub response_headers: Option<RawHeaderOps>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<OneOrMany>,
    pub sni: Option<OneOrMany>,
    pub path_prefix: Option<String>,
    pub path_exact: Option<String>,
    pub path_regex: Option<String>,
    pub methods: Option<Vec<String>>,
    pub headers: Option<BTreeMap<String, RawValueMatch>>,
    pub cookies: Option<BTreeMap<String, RawValueMatch>>,
    pub query: Option<BTreeMap<String, RawValueMatch>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    pub set: Option<BTreeMap<String, Scalar>>,
    pub add: Option<BTreeMap<String, Scalar>>,
    pub remove: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: String,
    #[serde(default)]
    pub allow_public: bool,
}
