//! Configuration in three stages: [`source`] reads YAML into [`raw`] serde structs (keeping positions),
//! [`validate`] checks every rule and builds the typed [`Config`] below, and `runtime` compiles that into
//! the immutable table the proxy serves from. Nothing here touches a socket.

pub mod describe;
pub mod diagnostic;
pub mod raw;
pub mod source;
pub mod validate;

pub use diagnostic::{ConfigError, Diagnostic, Diagnostics, Pos};

use http::{HeaderName, HeaderValue, Method};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A validated configuration: every value typed, every name resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<ListenerConfig>,
    pub pools: Vec<PoolConfig>,
    pub routes: Vec<RouteConfig>,
    pub shutdown_timeout: Duration,
    /// After SIGTERM, how long `/healthz` answers 503 while the listeners still accept.
    pub shutdown_delay: Duration,
    pub admin: Option<AdminConfig>,
    /// Files the config was read from, for the summary and for reload logs.
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub redirect_https: Option<u16>,
    pub tls: Option<TlsConfig>,
    pub limits: ListenerLimits,
}

/// Per-listener protection against slow or greedy clients; defaults in `validate`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_size: usize,
    pub max_headers: usize,
    pub max_uri_length: usize,
    pub body_timeout: Duration,
    /// Longest a client may take none of the response bytes weir has ready for it.
    pub send_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_frame_size: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub certificates: Vec<CertPaths>,
    pub min_version: TlsVersion,
    pub alpn: Vec<String>,
    pub hsts: Option<String>,
    pub client_auth: Option<ClientAuth>,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientAuth {
    pub ca: PathBuf,
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceKind {
    RoundRobin,
    LeastRequest,
    PowerOfTwo,
    Random,
    IpHash,
    HeaderHash,
    CookieHash,
}

impl BalanceKind {
    /// The name the configuration spells it with (`balance:`), for `/status` and `check`.
    pub fn as_str(self) -> &'static str {
        match self {
            BalanceKind::RoundRobin => "round_robin",
            BalanceKind::LeastRequest => "least_request",
            BalanceKind::PowerOfTwo => "power_of_two",
            BalanceKind::Random => "random",
            BalanceKind::IpHash => "ip_hash",
            BalanceKind::HeaderHash => "header_hash",
            BalanceKind::CookieHash => "cookie_hash",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    Http2,
    Auto,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub balance: BalanceKind,
    /// Header (for `header_hash`) or cookie (for `cookie_hash`) whose value is hashed.
    pub hash_key: Option<String>,
    pub servers: Vec<ServerConfig>,
    pub health: Option<HealthConfig>,
    pub passive: PassiveConfig,
    pub sticky: Option<StickyConfig>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_server: usize,
    pub tls: Option<UpstreamTls>,
    pub protocol: UpstreamProtocol,
    /// When every server is down, send to all of them rather than answer 503.
    pub panic: bool,
    /// A server that comes back ramps from 10% to its full share over this window.
    pub slow_start: Option<Duration>,
    /// Requests in flight per server; `None` = unlimited.
    pub max_connections: Option<u32>,
    pub queue_size: u32,
    pub queue_timeout: Duration,
    pub retry_budget: RetryBudgetConfig,
}

/// Retries of requests that reached a server: `percent`% of requests, plus `min_per_second`
/// regardless of traffic, so a quiet pool can still retry (Linkerd's `minRetriesPerSecond`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudgetConfig {
    pub percent: u32,
    pub min_per_second: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub sni: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `host:port` as written; a DNS name is resolved when connecting.
    pub address: String,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub unhealthy_interval: Duration,
    pub timeout: Duration,
    pub expect_status: Vec<(u16, u16)>,
    pub expect_body: Option<String>,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
    pub initial_healthy: bool,
    pub method: Method,
    pub host: Option<String>,
    pub tcp: bool,
    /// `grpc: true`: probe with grpc.health.v1.Health/Check for this service name ("" = the server).
    pub grpc: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PassiveConfig {
    /// Consecutive connect failures or 5xx answers that eject a server; 0 turns ejection off.
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejected_percent: u32,
}

#[derive(Debug, Clone)]
pub struct StickyConfig {
    pub cookie: String,
    pub ttl: Option<Duration>,
    pub reject_unavailable: bool,
    /// How long a draining server (admin drain, or removed from the config) keeps serving the
    /// clients pinned to it; past it they are rebalanced like clients of a down server.
    pub drain_timeout: Duration,
    pub secret: Option<String>,
    pub path: String,
    pub domain: Option<String>,
    pub http_only: bool,
    /// `None`: Secure on TLS listeners only.
    pub secure: Option<bool>,
    pub same_site: String,
    pub strip: bool,
}

#[derive(Debug, Clone)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: one label only.
    Wildcard(String),
    Any,
}

#[derive(Debug, Clone)]
pub enum PathPattern {
    Any,
    Prefix(String),
    Exact(String),
    Regex(regex::Regex),
}

#[derive(Debug, Clone)]
pub enum ValuePattern {
    Exact(String),
    Regex(regex::Regex),
    Present(bool),
}

#[derive(Debug, Clone, Default)]
pub struct MatchConfig {
    pub hosts: Vec<HostPattern>,
    pub snis: Vec<HostPattern>,
    pub path: Option<PathPattern>,
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, ValuePattern)>,
    pub cookies: Vec<(String, ValuePattern)>,
    pub query: Vec<(String, ValuePattern)>,
}

#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: MatchConfig,
    /// Index into [`Config::pools`].
    pub pool: usize,
    pub timeout: Duration,
    /// Upgraded connections and streaming responses close after this long with no byte either way.
    pub stream_idle_timeout: Duration,
    pub retries: u32,
    pub strip_prefix: Option<String>,
    pub max_body_size: Option<u64>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    pub bind: SocketAddr,
}

/// Loads, validates and types a configuration file or directory.
///
/// On success the warnings (an expiring certificate, say) come back beside the config.
pub fn load(path: &Path) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
    let mut diags = Diagnostics::default();
    let raw = source::load(path, &mut diags);
    finish(raw, diags)
}

/// Validates one configuration text as if read from a file called `name`, with no file system
/// involved: the entry point of the `config` fuzz target (and handy in tests).
pub fn parse(name: &str, text: &str) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
    let mut diags = Diagnostics::default();
    let mut raw = source::RawConfig::default();
    let name: std::sync::Arc<str> = name.into();
    raw.files.push(name.clone());
    source::load_text(name, text, &mut raw, &mut diags);
    finish(raw, diags)
}

fn finish(
    raw: source::RawConfig,
    mut diags: Diagnostics,
) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
    let config = validate::validate(raw, &mut diags);
    diags.items.sort_by(|a, b| {
        (&a.pos.file, a.pos.line, a.pos.col).cmp(&(&b.pos.file, b.pos.line, b.pos.col))
    });
    if diags.has_errors() {
        return Err(ConfigError(diags.errors().cloned().collect()));
    }
    let warnings = diags.warnings().cloned().collect();
    Ok((config, warnings))
}

impl Config {
    /// The one-paragraph summary `weir check` prints.
    pub fn summary(&self) -> String {
        let servers: usize = self.pools.iter().map(|p| p.servers.len()).sum();
        let tls = self.listeners.iter().filter(|l| l.tls.is_some()).count();
        format!(
            "configuration OK: {} listener{} ({} with TLS), {} pool{}, {} server{}, {} route{}{}.",
            self.listeners.len(),
            plural(self.listeners.len()),
            tls,
            self.pools.len(),
            plural(self.pools.len()),
            servers,
            plural(servers),
            self.routes.len(),
            plural(self.routes.len()),
            match &self.admin {
                Some(a) => format!(", admin on {}", a.bind),
                None => String::new(),
            }
        )
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
