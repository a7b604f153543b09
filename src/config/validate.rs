//! Every semantic rule of the configuration, each failure reported at its position.
//!
//! Validation never stops at the first problem: it records a diagnostic, substitutes a harmless
//! placeholder and goes on, so `weir check` lists everything wrong with a file in one run.

use super::diagnostic::Diagnostics;
use super::raw::*;
use super::source::{Item, Origin, RawConfig};
use super::*;
use std::collections::HashMap;
use std::net::ToSocketAddrs;

/// Validation context: the diagnostics sink plus small typed readers for common value kinds.
struct Ctx<'a> {
    d: &'a mut Diagnostics,
}

impl Ctx<'_> {
    fn err(&mut self, o: &Origin, field: &str, msg: impl Into<String>) {
        self.d.error(o.field(field), msg);
    }

    fn duration(
        &mut self,
        o: &Origin,
        field: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Duration {
        let Some(s) = v else { return default };
        match parse_duration(s) {
            Ok(d) => d,
            Err(e) => {
                // A top-level setting is its own item: name it by its path.
                let name = if field.is_empty() { &o.path } else { field };
                self.err(o, field, format!("{name}: {e}"));
                default
            }
        }
    }

    /// A duration that must not be zero: a zero deadline would fail every request at once.
    fn positive_duration(
        &mut self,
        o: &Origin,
        field: &str,
        v: &Option<String>,
        default: Duration,
    ) -> Duration {
        let d = self.duration(o, field, v, default);
        // The defaults are not zero, so a zero here is what the file says.
        if d.is_zero() {
            self.err(o, field, format!("{field}: must be more than 0"));
            return default;
        }
        d
    }

    fn size(&mut self, o: &Origin, field: &str, v: &Scalar) -> Option<u64> {
        match parse_size(&v.0) {
            Ok(n) => Some(n),
            Err(e) => {
                self.err(o, field, format!("{field}: {e}"));
                None
            }
        }
    }

    fn regex(&mut self, o: &Origin, field: &str, s: &str) -> regex::Regex {
        regex::Regex::new(s).unwrap_or_else(|e| {
            let first = e
                .to_string()
                .lines()
                .last()
                .unwrap_or("")
                .trim()
                .to_string();
            self.err(o, field, format!("{field}: invalid regex {s:?}: {first}"));
            regex::Regex::new("$^").expect("placeholder regex")
        })
    }
}

/// Parses `250ms`, `2s`, `5m`, `1h` (a unit is required).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "invalid duration {s:?}: a unit is required, e.g. \"{t}s\" or \"{t}ms\""
        ));
    }
    humantime::parse_duration(t).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Parses `512B`, `64KiB`, `16MiB`, `1GiB` (or a bare byte count).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 512B, 64KiB, 16MiB, 1GiB"))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        u => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {u:?} (use B, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

/// Checks a `host:port` server address; a DNS name is allowed and resolved when connecting.
pub fn check_address(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("invalid address {s:?}: expected host:port (IPv6 as [::1]:9000)");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().map_err(|_| bad())?;
    let ok_host = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if ok_host {
        Ok(())
    } else {
        Err(bad())
    }
}

fn parse_bind(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    check_address(s)?;
    s.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

pub fn validate(raw: RawConfig, d: &mut Diagnostics) -> Config {
    let mut cx = Ctx { d };
    let listeners = listeners(&mut cx, &raw.listeners);
    let (pools, pool_index) = pools(&mut cx, &raw.pools);
    let routes = routes(&mut cx, &raw.routes, &pool_index, &raw.broken_pools);
    let shutdown_timeout = match &raw.shutdown_timeout {
        Some(i) => cx.duration(
            &i.origin,
            "",
            &Some(i.value.clone()),
            Duration::from_secs(30),
        ),
        None => Duration::from_secs(30),
    };
    let shutdown_delay = match &raw.shutdown_delay {
        Some(i) => cx.duration(&i.origin, "", &Some(i.value.clone()), Duration::ZERO),
        None => Duration::ZERO,
    };
    let admin = raw.admin.as_ref().and_then(|i| admin(&mut cx, i));
    if let (Some(a), Some(it)) = (&admin, &raw.admin) {
        // Both would bind (listeners set SO_REUSEPORT) and the kernel would share connections
        // between them: the admin API on the public port, requests on the admin one.
        if let Some(l) = listeners
            .iter()
            .find(|l| l.bind == a.bind && a.bind.port() != 0)
        {
            let msg = format!(
                "admin.bind: {} is already used by listener {:?}",
                a.bind, l.name
            );
            cx.err(&it.origin, "bind", msg);
        }
    }
    Config {
        shutdown_delay,
        listeners,
        pools,
        routes,
        shutdown_timeout,
        admin,
        files: raw.files.iter().map(|f| f.to_string()).collect(),
    }
}

fn check_unique(
    cx: &mut Ctx,
    seen: &mut HashMap<String, Pos>,
    kind: &str,
    name: &str,
    o: &Origin,
    field: &str,
) {
    let pos = if field.is_empty() {
        o.key("")
    } else {
        o.field(field)
    };
    if name.is_empty() {
        cx.d.error(pos, format!("{kind} name must not be empty"));
        return;
    }
    if let Some(first) = seen.get(name) {
        let msg = format!(
            "duplicate {kind} name {name:?} (first defined at {}:{}:{})",
            first.file, first.line, first.col
        );
        cx.d.error(pos, msg);
    } else {
        seen.insert(name.to_string(), pos);
    }
}

fn listeners(cx: &mut Ctx, items: &[Item<RawListener>]) -> Vec<ListenerConfig> {
    let mut seen = HashMap::new();
    let mut binds: HashMap<SocketAddr, String> = HashMap::new();
    let mut out = Vec::new();
    if items.is_empty() {
        // A config with no listener serves nothing; say so once, at the first file.
    }
    for it in items {
        let (l, o) = (&it.value, &it.origin);
        check_unique(cx, &mut seen, "listener", &l.name, o, "name");
        let bind = match parse_bind(&l.bind) {
            Ok(a) => a,
            Err(e) => {
                cx.err(o, "bind", format!("bind: {e}"));
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        };
        if bind.port() != 0 {
            if let Some(other) = binds.insert(bind, l.name.clone()) {
                cx.err(
                    o,
                    "bind",
                    format!("bind: {bind} is already used by listener {other:?}"),
                );
            }
        }
        let tls = l.tls.as_ref().map(|t| tls(cx, o, t));
        if l.redirect_https == Some(0) {
            cx.err(o, "redirect_https", "redirect_https: port 0 is not a port");
        }
        if tls.is_some() && l.redirect_https.is_some() {
            cx.err(
                o,
                "redirect_https",
                "redirect_https is for plain-HTTP listeners, not TLS ones",
            );
        }
        let limits = listener_limits(cx, o, l);
        out.push(ListenerConfig {
            name: l.name.clone(),
            bind,
            redirect_https: l.redirect_https,
            tls,
            limits,
        });
    }
    out
}

fn listener_limits(cx: &mut Ctx, o: &Origin, l: &RawListener) -> ListenerLimits {
    let max_header_size = l
        .max_header_size
        .as_ref()
        .and_then(|s| cx.size(o, "max_header_size", s))
        .unwrap_or(64 * 1024) as usize;
    if max_header_size < 8192 {
        cx.err(
            o,
            "max_header_size",
            "max_header_size must be at least 8KiB",
        );
    }
    let max_uri_length = l
        .max_uri_length
        .as_ref()
        .and_then(|s| cx.size(o, "max_uri_length", s))
        .unwrap_or(8 * 1024) as usize;
    if max_uri_length < 256 {
        cx.err(o, "max_uri_length", "max_uri_length must be at least 256B");
    }
    let http2_max_frame_size = l
        .http2_max_frame_size
        .as_ref()
        .and_then(|s| cx.size(o, "http2_max_frame_size", s))
        .unwrap_or(16 * 1024);
    if !(16_384..=16_777_215).contains(&http2_max_frame_size) {
        cx.err(
            o,
            "http2_max_frame_size",
            "http2_max_frame_size must be between 16KiB and 16MiB - 1 (RFC 9113)",
        );
    }
    let send_timeout = cx.duration(o, "send_timeout", &l.send_timeout, Duration::from_secs(60));
    if send_timeout.is_zero() {
        // Zero would cut every client the moment its socket is momentarily full.
        cx.err(o, "send_timeout", "send_timeout must be longer than 0s");
    }
    ListenerLimits {
        max_uri_length,
        body_timeout: cx.duration(o, "body_timeout", &l.body_timeout, Duration::from_secs(60)),
        send_timeout,
        http2_max_frame_size: http2_max_frame_size.clamp(16_384, 16_777_215) as u32,
        max_connections: l.max_connections.unwrap_or(50_000),
        max_connections_per_ip: l.max_connections_per_ip.unwrap_or(0),
        header_read_timeout: cx.duration(
            o,
            "header_read_timeout",
            &l.header_read_timeout,
            Duration::from_secs(10),
        ),
        idle_timeout: cx.duration(o, "idle_timeout", &l.idle_timeout, Duration::from_secs(60)),
        max_header_size: max_header_size.max(8192),
        max_headers: l.max_headers.unwrap_or(100),
        http2_max_concurrent_streams: l.http2_max_concurrent_streams.unwrap_or(256),
    }
}

fn tls(cx: &mut Ctx, o: &Origin, t: &RawListenerTls) -> TlsConfig {
    if t.certificates.is_empty() {
        cx.err(
            o,
            "tls.certificates",
            "tls.certificates: at least one certificate is required",
        );
    }
    let mut certificates = Vec::new();
    for (i, c) in t.certificates.iter().enumerate() {
        let field = format!("tls.certificates[{i}]");
        let paths = CertPaths {
            cert: PathBuf::from(&c.cert),
            key: PathBuf::from(&c.key),
        };
        match crate::tls::check_pair(&paths) {
            Ok(warnings) => {
                for w in warnings {
                    cx.d.warning(o.field(&format!("{field}.cert")), w);
                }
            }
            Err(e) => {
                let at = if e.key_problem { "key" } else { "cert" };
                cx.err(o, &format!("{field}.{at}"), e.message);
            }
        }
        certificates.push(paths);
    }
    let min_version = match t.min_version.as_ref().map(|s| s.0.as_str()) {
        None | Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(v) => {
            cx.err(
                o,
                "tls.min_version",
                format!("tls.min_version: {v:?} is not \"1.2\" or \"1.3\""),
            );
            TlsVersion::V1_2
        }
    };
    let alpn = t
        .alpn
        .clone()
        .unwrap_or_else(|| vec!["h2".into(), "http/1.1".into()]);
    for (i, p) in alpn.iter().enumerate() {
        if p != "h2" && p != "http/1.1" {
            cx.err(
                o,
                &format!("tls.alpn[{i}]"),
                format!("tls.alpn: unsupported protocol {p:?} (h2 or http/1.1)"),
            );
        }
    }
    let client_auth = t.client_auth.as_ref().map(|c| {
        let ca = PathBuf::from(&c.ca);
        if let Err(e) = crate::tls::load_roots(&ca) {
            cx.err(o, "tls.client_auth.ca", e);
        }
        ClientAuth {
            ca,
            required: c.required,
        }
    });
    if let Some(h) = &t.hsts {
        if HeaderValue::from_str(h).is_err() {
            cx.err(o, "tls.hsts", "tls.hsts: not a valid header value");
        }
    }
    TlsConfig {
        certificates,
        min_version,
        alpn,
        hsts: t.hsts.clone(),
        client_auth,
        handshake_timeout: cx.duration(
            o,
            "tls.handshake_timeout",
            &t.handshake_timeout,
            Duration::from_secs(10),
        ),
    }
}

fn pools(
    cx: &mut Ctx,
    items: &[(String, Item<RawPool>)],
) -> (Vec<PoolConfig>, HashMap<String, usize>) {
    let mut seen = HashMap::new();
    let mut index = HashMap::new();
    let mut out = Vec::new();
    for (name, it) in items {
        check_unique(cx, &mut seen, "pool", name, &it.origin, "");
        index.entry(name.clone()).or_insert(out.len());
        out.push(pool(cx, name, &it.value, &it.origin));
    }
    (out, index)
}

fn balance(cx: &mut Ctx, o: &Origin, p: &RawPool) -> (BalanceKind, Option<String>) {
    let kind = match p.balance.as_deref().unwrap_or("round_robin") {
        "round_robin" => BalanceKind::RoundRobin,
        "least_request" => BalanceKind::LeastRequest,
        "power_of_two" => BalanceKind::PowerOfTwo,
        "random" => BalanceKind::Random,
        "ip_hash" => BalanceKind::IpHash,
        "header_hash" => BalanceKind::HeaderHash,
        "cookie_hash" => BalanceKind::CookieHash,
        other => {
            cx.err(o, "balance", format!(
                "balance: unknown algorithm {other:?} (round_robin, least_request, power_of_two, random, ip_hash, header_hash, cookie_hash)"
            ));
            BalanceKind::RoundRobin
        }
    };
    let key = match kind {
        BalanceKind::HeaderHash => match &p.hash_header {
            Some(h) if HeaderName::from_bytes(h.as_bytes()).is_ok() => Some(h.to_ascii_lowercase()),
            Some(h) => {
                cx.err(
                    o,
                    "hash_header",
                    format!("hash_header: {h:?} is not a valid header name"),
                );
                None
            }
            None => {
                cx.err(o, "balance", "balance: header_hash needs hash_header: NAME");
                None
            }
        },
        BalanceKind::CookieHash => match &p.hash_cookie {
            Some(c) => Some(c.clone()),
            None => {
                cx.err(o, "balance", "balance: cookie_hash needs hash_cookie: NAME");
                None
            }
        },
        _ => None,
    };
    if p.hash_header.is_some() && kind != BalanceKind::HeaderHash {
        cx.err(
            o,
            "hash_header",
            "hash_header only applies to balance: header_hash",
        );
    }
    if p.hash_cookie.is_some() && kind != BalanceKind::CookieHash {
        cx.err(
            o,
            "hash_cookie",
            "hash_cookie only applies to balance: cookie_hash",
        );
    }
    (kind, key)
}

fn pool(cx: &mut Ctx, name: &str, p: &RawPool, o: &Origin) -> PoolConfig {
    let (balance, hash_key) = balance(cx, o, p);
    if p.servers.is_empty() {
        cx.err(o, "servers", format!("pool {name:?} has no servers"));
    }
    let mut servers: Vec<ServerConfig> = Vec::new();
    for (i, s) in p.servers.iter().enumerate() {
        if let Err(e) = check_address(&s.address) {
            cx.err(o, &format!("servers[{i}].address"), e);
        }
        if servers.iter().any(|x| x.address == s.address) {
            cx.err(
                o,
                &format!("servers[{i}].address"),
                format!("server {:?} is listed twice in pool {name:?}", s.address),
            );
        }
        let weight = s.weight.unwrap_or(1);
        if weight == 0 || weight > 1000 {
            cx.err(
                o,
                &format!("servers[{i}].weight"),
                "weight must be between 1 and 1000",
            );
        }
        servers.push(ServerConfig {
            address: s.address.clone(),
            weight: weight.clamp(1, 1000),
        });
    }
    let tls = match p.tls.unwrap_or(false) {
        true => {
            let ca = p.ca.as_ref().map(PathBuf::from);
            if let Some(ca) = &ca {
                if let Err(e) = crate::tls::load_roots(ca) {
                    cx.err(o, "ca", e);
                }
            }
            Some(UpstreamTls {
                ca,
                sni: p.sni.clone(),
            })
        }
        false => {
            if p.ca.is_some() || p.sni.is_some() {
                cx.err(
                    o,
                    if p.ca.is_some() { "ca" } else { "sni" },
                    "ca and sni need tls: true",
                );
            }
            None
        }
    };
    let protocol = match p.protocol.as_deref().unwrap_or("auto") {
        "http1" => UpstreamProtocol::Http1,
        "http2" => UpstreamProtocol::Http2,
        "auto" => UpstreamProtocol::Auto,
        other => {
            cx.err(
                o,
                "protocol",
                format!("protocol: {other:?} is not http1, http2 or auto"),
            );
            UpstreamProtocol::Auto
        }
    };
    PoolConfig {
        name: name.to_string(),
        balance,
        hash_key,
        servers,
        health: p.health.as_ref().map(|h| health(cx, o, h)),
        passive: passive(cx, o, p.passive.as_ref()),
        sticky: p.sticky.as_ref().map(|s| sticky(cx, o, s)),
        connect_timeout: cx.positive_duration(
            o,
            "connect_timeout",
            &p.connect_timeout,
            Duration::from_secs(5),
        ),
        idle_timeout: cx.duration(o, "idle_timeout", &p.idle_timeout, Duration::from_secs(4)),
        max_idle_per_server: p.max_idle_per_server.unwrap_or(1024),
        tls,
        protocol,
        panic: p.panic.unwrap_or(false),
        slow_start: p
            .slow_start
            .as_ref()
            .map(|_| cx.duration(o, "slow_start", &p.slow_start, Duration::ZERO))
            .filter(|d| !d.is_zero()),
        max_connections: match p.max_connections {
            Some(0) => {
                cx.err(o, "max_connections", "max_connections must be at least 1");
                None
            }
            m => m,
        },
        queue_size: p.queue_size.unwrap_or(100),
        queue_timeout: cx.duration(o, "queue_timeout", &p.queue_timeout, Duration::from_secs(1)),
        retry_budget: retry_budget(cx, o, p.retry_budget.as_ref()),
    }
}

fn retry_budget(cx: &mut Ctx, o: &Origin, b: Option<&RawRetryBudget>) -> RetryBudgetConfig {
    let percent = b.and_then(|b| b.percent).unwrap_or(20);
    if percent > 100 {
        cx.err(
            o,
            "retry_budget",
            "retry_budget: the percentage must be 0 to 100",
        );
    }
    RetryBudgetConfig {
        percent: percent.min(100),
        min_per_second: b.and_then(|b| b.min_per_second).unwrap_or(10),
    }
}

/// Parses `"200-399"`, `"200"`, `"200, 301-308"` or a YAML number into inclusive ranges.
pub fn parse_status_ranges(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: u16 = a
            .trim()
            .parse()
            .map_err(|_| format!("invalid status {part:?}"))?;
        let b: u16 = b
            .trim()
            .parse()
            .map_err(|_| format!("invalid status {part:?}"))?;
        if !(100..=599).contains(&a) || !(100..=599).contains(&b) || a > b {
            return Err(format!("invalid status range {part:?}"));
        }
        out.push((a, b));
    }
    if out.is_empty() {
        return Err("expect_status is empty".into());
    }
    Ok(out)
}

fn health(cx: &mut Ctx, o: &Origin, h: &RawHealth) -> HealthConfig {
    let interval = cx.duration(o, "health.interval", &h.interval, Duration::from_secs(2));
    let timeout = cx.duration(
        o,
        "health.timeout",
        &h.timeout,
        Duration::from_secs(1).min(interval / 2),
    );
    if timeout >= interval {
        cx.err(
            o,
            "health.timeout",
            "health.timeout must be shorter than health.interval",
        );
    }
    if interval.is_zero() {
        cx.err(o, "health.interval", "health.interval must be more than 0");
    }
    let expect_status = match &h.expect_status {
        None => vec![(200, 399)],
        Some(s) => parse_status_ranges(&s.0).unwrap_or_else(|e| {
            cx.err(
                o,
                "health.expect_status",
                format!("health.expect_status: {e}"),
            );
            vec![(200, 399)]
        }),
    };
    let path = h.path.clone().unwrap_or_else(|| "/".into());
    if !path.starts_with('/') {
        cx.err(o, "health.path", "health.path must start with /");
    }
    let initial_healthy = match h.initial.as_deref().unwrap_or("healthy") {
        "healthy" => true,
        "unhealthy" => false,
        v => {
            cx.err(
                o,
                "health.initial",
                format!("health.initial: {v:?} is not healthy or unhealthy"),
            );
            true
        }
    };
    let method = h.method.as_deref().unwrap_or("GET");
    let method = Method::from_bytes(method.as_bytes()).unwrap_or_else(|_| {
        cx.err(
            o,
            "health.method",
            format!("health.method: {method:?} is not a method"),
        );
        Method::GET
    });
    let unhealthy_interval = cx.duration(
        o,
        "health.unhealthy_interval",
        &h.unhealthy_interval,
        interval,
    );
    if h.unhealthy_interval.is_some() && timeout >= unhealthy_interval {
        cx.err(
            o,
            "health.unhealthy_interval",
            "health.timeout must be shorter than health.unhealthy_interval",
        );
    }
    for (f, v) in [
        ("healthy_after", h.healthy_after),
        ("unhealthy_after", h.unhealthy_after),
    ] {
        if v == Some(0) {
            cx.err(
                o,
                &format!("health.{f}"),
                format!("health.{f} must be at least 1"),
            );
        }
    }
    HealthConfig {
        path,
        interval,
        unhealthy_interval,
        timeout,
        expect_status,
        expect_body: h.expect_body.clone(),
        healthy_after: h.healthy_after.unwrap_or(2).max(1),
        unhealthy_after: h.unhealthy_after.unwrap_or(3).max(1),
        initial_healthy,
        method,
        host: h.host.clone(),
        tcp: h.tcp.unwrap_or(false),
        grpc: grpc_probe(cx, o, h),
    }
}

fn grpc_probe(cx: &mut Ctx, o: &Origin, h: &RawHealth) -> Option<String> {
    let on = h.grpc.unwrap_or(false);
    if !on && h.grpc_service.is_some() {
        cx.err(
            o,
            "health.grpc_service",
            "health.grpc_service needs health.grpc: true",
        );
    }
    if on && h.tcp.unwrap_or(false) {
        cx.err(
            o,
            "health.grpc",
            "health.grpc and health.tcp cannot both be true",
        );
    }
    on.then(|| h.grpc_service.clone().unwrap_or_default())
}

fn passive(cx: &mut Ctx, o: &Origin, p: Option<&RawPassive>) -> PassiveConfig {
    let none = RawPassive {
        consecutive_failures: None,
        ejection_time: None,
        max_ejection_time: None,
        max_ejected_percent: None,
    };
    let p = p.unwrap_or(&none);
    let pct = p.max_ejected_percent.unwrap_or(50);
    if pct > 100 {
        cx.err(
            o,
            "passive.max_ejected_percent",
            "passive.max_ejected_percent must be 0 to 100",
        );
    }
    PassiveConfig {
        consecutive_failures: p.consecutive_failures.unwrap_or(5),
        ejection_time: cx.duration(
            o,
            "passive.ejection_time",
            &p.ejection_time,
            Duration::from_secs(10),
        ),
        max_ejection_time: cx.duration(
            o,
            "passive.max_ejection_time",
            &p.max_ejection_time,
            Duration::from_secs(300),
        ),
        max_ejected_percent: pct.min(100),
    }
}

/// HAProxy keeps a drained server's persistent clients until they leave; weir bounds it so a
/// server removed from the config is eventually forgotten.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);

fn sticky(cx: &mut Ctx, o: &Origin, s: &RawSticky) -> StickyConfig {
    let token_ok = !s.cookie.is_empty()
        && s.cookie
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token_ok {
        cx.err(
            o,
            "sticky.cookie",
            format!("sticky.cookie: {:?} is not a valid cookie name", s.cookie),
        );
    }
    let reject_unavailable = match s.on_unavailable.as_deref().unwrap_or("rebalance") {
        "rebalance" => false,
        "reject" => true,
        v => {
            cx.err(
                o,
                "sticky.on_unavailable",
                format!("sticky.on_unavailable: {v:?} is not rebalance or reject"),
            );
            false
        }
    };
    let same_site = match s.same_site.as_deref().unwrap_or("Lax") {
        v @ ("Lax" | "Strict" | "None") => v.to_string(),
        v => {
            cx.err(
                o,
                "sticky.same_site",
                format!("sticky.same_site: {v:?} is not Lax, Strict or None"),
            );
            "Lax".into()
        }
    };
    let ttl = s
        .ttl
        .as_ref()
        .map(|_| cx.duration(o, "sticky.ttl", &s.ttl, Duration::ZERO));
    let drain_timeout = cx.duration(
        o,
        "sticky.drain_timeout",
        &s.drain_timeout,
        DEFAULT_DRAIN_TIMEOUT,
    );
    StickyConfig {
        cookie: s.cookie.clone(),
        ttl,
        reject_unavailable,
        drain_timeout,
        secret: s.secret.clone(),
        path: s.path.clone().unwrap_or_else(|| "/".into()),
        domain: s.domain.clone(),
        http_only: s.http_only.unwrap_or(true),
        secure: s.secure,
        same_site,
        strip: s.strip.unwrap_or(true),
    }
}

fn routes(
    cx: &mut Ctx,
    items: &[Item<RawRoute>],
    pools: &HashMap<String, usize>,
    broken_pools: &[String],
) -> Vec<RouteConfig> {
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for it in items {
        let (r, o) = (&it.value, &it.origin);
        check_unique(cx, &mut seen, "route", &r.name, o, "name");
        let pool = match pools.get(&r.pool) {
            Some(&i) => i,
            None if broken_pools.contains(&r.pool) => 0,
            None => {
                cx.err(
                    o,
                    "pool",
                    format!("route {:?} names unknown pool {:?}", r.name, r.pool),
                );
                0
            }
        };
        let matcher = match &r.matcher {
            Some(m) => matcher(cx, o, m),
            None => MatchConfig::default(),
        };
        let strip_prefix = r.strip_prefix.clone();
        if let Some(p) = &strip_prefix {
            if !p.starts_with('/') {
                cx.err(o, "strip_prefix", "strip_prefix must start with /");
            }
        }
        let retries = r.retries.unwrap_or(0);
        if retries > 10 {
            cx.err(o, "retries", "retries must be at most 10");
        }
        out.push(RouteConfig {
            name: r.name.clone(),
            matcher,
            pool,
            timeout: cx.positive_duration(o, "timeout", &r.timeout, Duration::from_secs(60)),
            stream_idle_timeout: cx.duration(
                o,
                "stream_idle_timeout",
                &r.stream_idle_timeout,
                Duration::from_secs(3600),
            ),
            retries: retries.min(10),
            strip_prefix,
            max_body_size: r
                .max_body_size
                .as_ref()
                .and_then(|s| cx.size(o, "max_body_size", s)),
            request_headers: header_ops(cx, o, "request_headers", r.request_headers.as_ref()),
            response_headers: header_ops(cx, o, "response_headers", r.response_headers.as_ref()),
        });
    }
    out
}

fn hosts(cx: &mut Ctx, o: &Origin, field: &str, v: &Option<OneOrMany>) -> Vec<HostPattern> {
    let Some(v) = v else { return Vec::new() };
    let list = v.clone().into_vec();
    if list.is_empty() {
        // No condition at all would be the opposite of what an empty list says.
        cx.err(o, field, format!("{field}: an empty list matches no host"));
    }
    let mut out = Vec::new();
    for (i, h) in list.iter().enumerate() {
        let h = h.trim().to_ascii_lowercase();
        // Requests are matched on their host without its port, and an IPv6 literal without its
        // brackets: a pattern written otherwise could never match.
        let h = match h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            Some(v6) => v6.to_string(),
            None => h,
        };
        let f = if matches!(v, OneOrMany::One(_)) {
            field.to_string()
        } else {
            format!("{field}[{i}]")
        };
        let label_ok = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._:[]".contains(c))
        };
        if h == "*" {
            out.push(HostPattern::Any);
        } else if let Some(rest) = h.strip_prefix("*.") {
            if !label_ok(rest) || rest.contains([':', '[', ']']) {
                cx.err(o, &f, format!("{field}: invalid host pattern {h:?}"));
            }
            out.push(HostPattern::Wildcard(format!(".{rest}")));
        } else {
            let v6 = h.parse::<std::net::Ipv6Addr>().is_ok();
            if !v6 && h.contains(':') {
                cx.err(
                    o,
                    &f,
                    format!("{field}: {h:?} names a port; hosts are matched without theirs"),
                );
            } else if !label_ok(&h) || h.contains('*') {
                cx.err(
                    o,
                    &f,
                    format!("{field}: invalid host {h:?} (exact name or *.suffix)"),
                );
            }
            out.push(HostPattern::Exact(h));
        }
    }
    out
}

fn value_patterns(
    cx: &mut Ctx,
    o: &Origin,
    field: &str,
    m: &Option<std::collections::BTreeMap<String, RawValueMatch>>,
) -> Vec<(String, ValuePattern)> {
    let Some(m) = m else { return Vec::new() };
    m.iter()
        .map(|(k, v)| {
            let f = format!("{field}.{k}");
            let p = match v {
                RawValueMatch::Exact(s) => ValuePattern::Exact(s.clone()),
                RawValueMatch::Regex(r) => ValuePattern::Regex(cx.regex(o, &f, r)),
                RawValueMatch::Present(b) => ValuePattern::Present(*b),
            };
            (k.clone(), p)
        })
        .collect()
}

fn matcher(cx: &mut Ctx, o: &Origin, m: &RawMatch) -> MatchConfig {
    let hosts_v = hosts(cx, o, "match.host", &m.host);
    let snis = hosts(cx, o, "match.sni", &m.sni);
    let paths = [&m.path_prefix, &m.path_exact, &m.path_regex]
        .iter()
        .filter(|p| p.is_some())
        .count();
    if paths > 1 {
        cx.err(
            o,
            "match",
            "match: use only one of path_prefix, path_exact and path_regex",
        );
    }
    let path = if let Some(p) = &m.path_prefix {
        if !p.starts_with('/') {
            cx.err(
                o,
                "match.path_prefix",
                "match.path_prefix must start with /",
            );
        }
        Some(if p == "/" {
            PathPattern::Any
        } else {
            PathPattern::Prefix(p.clone())
        })
    } else if let Some(p) = &m.path_exact {
        if !p.starts_with('/') {
            cx.err(o, "match.path_exact", "match.path_exact must start with /");
        }
        Some(PathPattern::Exact(p.clone()))
    } else {
        m.path_regex
            .as_ref()
            .map(|r| PathPattern::Regex(cx.regex(o, "match.path_regex", r)))
    };
    let mut methods = Vec::new();
    for (i, s) in m.methods.iter().flatten().enumerate() {
        match Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
            Ok(me) => methods.push(me),
            Err(_) => cx.err(
                o,
                &format!("match.methods[{i}]"),
                format!("match.methods: {s:?} is not a method"),
            ),
        }
    }
    let mut headers = Vec::new();
    for (k, v) in value_patterns(cx, o, "match.headers", &m.headers) {
        match HeaderName::from_bytes(k.as_bytes()) {
            Ok(n) => headers.push((n, v)),
            Err(_) => cx.err(
                o,
                &format!("match.headers.{k}"),
                format!("match.headers: {k:?} is not a header name"),
            ),
        }
    }
    MatchConfig {
        hosts: hosts_v,
        snis,
        path,
        methods,
        headers,
        cookies: value_patterns(cx, o, "match.cookies", &m.cookies),
        query: value_patterns(cx, o, "match.query", &m.query),
    }
}

fn header_ops(cx: &mut Ctx, o: &Origin, field: &str, ops: Option<&RawHeaderOps>) -> HeaderOps {
    let Some(ops) = ops else {
        return HeaderOps::default();
    };
    let pairs =
        |cx: &mut Ctx, sub: &str, m: &Option<std::collections::BTreeMap<String, Scalar>>| {
            let mut out = Vec::new();
            for (k, v) in m.iter().flatten() {
                let f = format!("{field}.{sub}.{k}");
                match (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(&v.0),
                ) {
                    (Ok(n), Ok(val)) => out.push((n, val)),
                    (Err(_), _) => cx.err(o, &f, format!("{field}: {k:?} is not a header name")),
                    (_, Err(_)) => cx.err(
                        o,
                        &f,
                        format!("{field}: the value of {k:?} is not a valid header value"),
                    ),
                }
            }
            out
        };
    let set = pairs(cx, "set", &ops.set);
    let add = pairs(cx, "add", &ops.add);
    let mut remove = Vec::new();
    for (i, k) in ops.remove.iter().flatten().enumerate() {
        match HeaderName::from_bytes(k.as_bytes()) {
            Ok(n) => remove.push(n),
            Err(_) => cx.err(
                o,
                &format!("{field}.remove[{i}]"),
                format!("{field}: {k:?} is not a header name"),
            ),
        }
    }
    HeaderOps { set, add, remove }
}

fn admin(cx: &mut Ctx, it: &Item<RawAdmin>) -> Option<AdminConfig> {
    let o = &it.origin;
    match parse_bind(&it.value.bind) {
        Ok(bind) => {
            if !bind.ip().is_loopback() && !it.value.allow_public {
                cx.err(o, "bind", "admin.bind: the admin endpoint must be on loopback (set allow_public: true to override)");
            }
            Some(AdminConfig { bind })
        }
        Err(e) => {
            cx.err(o, "bind", format!("admin.bind: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("1KiB").unwrap(), 1024);
        assert_eq!(parse_size("10").unwrap(), 10);
        assert!(parse_size("10MB").is_err());
    }

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_ranges("200-399").unwrap(), vec![(200, 399)]);
        assert_eq!(
            parse_status_ranges("200, 204").unwrap(),
            vec![(200, 200), (204, 204)]
        );
        assert!(parse_status_ranges("99").is_err());
        assert!(parse_status_ranges("300-200").is_err());
    }

    #[test]
    fn addresses() {
        assert!(check_address("127.0.0.1:80").is_ok());
        assert!(check_address("[::1]:9000").is_ok());
        assert!(check_address("backend.internal:8080").is_ok());
        assert!(check_address("nope").is_err());
        assert!(check_address("host:99999").is_err());
    }
}
