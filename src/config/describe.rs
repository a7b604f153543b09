//! `weir check --verbose`: the compiled table as an operator reads it — listeners with their limits,
//! routes in match order with every condition and policy, pools with balancing, health, ejection,
//! stickiness and servers. Values are printed after defaults are applied, so this shows what weir
//! understood, not what the file said.

use super::*;
use std::fmt::Write;

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn host(h: &HostPattern) -> String {
    match h {
        HostPattern::Exact(s) => s.clone(),
        HostPattern::Wildcard(s) => format!("*{s}"),
        HostPattern::Any => "*".into(),
    }
}

fn value(v: &ValuePattern) -> String {
    match v {
        ValuePattern::Exact(s) => format!("= {s:?}"),
        ValuePattern::Regex(r) => format!("~ /{}/", r.as_str()),
        ValuePattern::Present(true) => "present".into(),
        ValuePattern::Present(false) => "absent".into(),
    }
}

/// The conditions of a route, one per element: `host in [a, b]`, `path prefix "/api"`...
fn conditions(m: &MatchConfig) -> Vec<String> {
    let mut c = Vec::new();
    let list = |v: &[HostPattern]| v.iter().map(host).collect::<Vec<_>>().join(", ");
    if !m.hosts.is_empty() {
        c.push(format!("host in [{}]", list(&m.hosts)));
    }
    if !m.snis.is_empty() {
        c.push(format!("sni in [{}]", list(&m.snis)));
    }
    match &m.path {
        Some(PathPattern::Prefix(p)) => c.push(format!("path prefix {p:?}")),
        Some(PathPattern::Exact(p)) => c.push(format!("path = {p:?}")),
        Some(PathPattern::Regex(r)) => c.push(format!("path ~ /{}/", r.as_str())),
        Some(PathPattern::Any) | None => {}
    }
    if !m.methods.is_empty() {
        let ms: Vec<&str> = m.methods.iter().map(|m| m.as_str()).collect();
        c.push(format!("method in [{}]", ms.join(", ")));
    }
    for (k, v) in &m.headers {
        c.push(format!("header {k} {}", value(v)));
    }
    for (k, v) in &m.cookies {
        c.push(format!("cookie {k} {}", value(v)));
    }
    for (k, v) in &m.query {
        c.push(format!("query {k} {}", value(v)));
    }
    if c.is_empty() {
        c.push("every request".into());
    }
    c
}

fn header_ops(ops: &HeaderOps) -> String {
    let mut parts = Vec::new();
    for (k, v) in &ops.set {
        parts.push(format!(
            "set {k}: {}",
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    for (k, v) in &ops.add {
        parts.push(format!(
            "add {k}: {}",
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    for k in &ops.remove {
        parts.push(format!("remove {k}"));
    }
    parts.join("; ")
}

fn listener(s: &mut String, l: &ListenerConfig) {
    let kind = match (&l.tls, l.redirect_https) {
        (Some(t), _) => format!(
            "https (TLS {}+, alpn {}, {} certificate{}{})",
            match t.min_version {
                TlsVersion::V1_2 => "1.2",
                TlsVersion::V1_3 => "1.3",
            },
            t.alpn.join(","),
            t.certificates.len(),
            if t.certificates.len() == 1 { "" } else { "s" },
            match &t.client_auth {
                Some(c) if c.required => ", client certificate required",
                Some(_) => ", client certificate optional",
                None => "",
            }
        ),
        (None, Some(p)) => format!("http, every request redirected (308) to https port {p}"),
        (None, None) => "http (HTTP/1.1 and h2c)".into(),
    };
    let _ = writeln!(s, "  {} on {}: {kind}", l.name, l.bind);
    let m = &l.limits;
    let _ = writeln!(
        s,
        "      limits: {} connections ({}), header read timeout {}, idle {}, send timeout {}, headers {} bytes / {} max, {} h2 streams",
        m.max_connections,
        match m.max_connections_per_ip {
            0 => "no per-IP cap".to_string(),
            n => format!("{n} per client IP"),
        },
        dur(m.header_read_timeout),
        dur(m.idle_timeout),
        dur(m.send_timeout),
        m.max_header_size,
        m.max_headers,
        m.http2_max_concurrent_streams
    );
}

fn route(s: &mut String, cfg: &Config, i: usize, r: &RouteConfig) {
    let _ = writeln!(
        s,
        "  {}. {} -> pool {}",
        i + 1,
        r.name,
        cfg.pools[r.pool].name
    );
    let _ = writeln!(s, "      when {}", conditions(&r.matcher).join(" and "));
    let mut policy = vec![
        format!("timeout {}", dur(r.timeout)),
        format!("retries {}", r.retries),
    ];
    if let Some(p) = &r.strip_prefix {
        policy.push(format!("strip prefix {p:?}"));
    }
    policy.push(match r.max_body_size {
        Some(n) => format!("max body {n} bytes"),
        None => "no body limit".into(),
    });
    let _ = writeln!(s, "      policy: {}", policy.join(", "));
    if !r.request_headers.is_empty() {
        let _ = writeln!(
            s,
            "      request headers: {}",
            header_ops(&r.request_headers)
        );
    }
    if !r.response_headers.is_empty() {
        let _ = writeln!(
            s,
            "      response headers: {}",
            header_ops(&r.response_headers)
        );
    }
}

fn pool(s: &mut String, p: &PoolConfig) {
    let balance = match (p.balance, &p.hash_key) {
        (BalanceKind::HeaderHash | BalanceKind::CookieHash, k) => {
            format!("{} on {}", p.balance.as_str(), k.as_deref().unwrap_or("?"))
        }
        (b, _) => b.as_str().to_string(),
    };
    let _ = writeln!(s, "  {}: {balance}", p.name);
    let mut conn = vec![
        format!("connect timeout {}", dur(p.connect_timeout)),
        format!("idle {}", dur(p.idle_timeout)),
        format!("{} idle per server and worker", p.max_idle_per_server),
        // `auto` offers h2 by ALPN, which only a TLS pool has.
        match (p.protocol, p.tls.is_some()) {
            (UpstreamProtocol::Http1, _) | (UpstreamProtocol::Auto, false) => "HTTP/1.1".into(),
            (UpstreamProtocol::Http2, _) => "HTTP/2".into(),
            (UpstreamProtocol::Auto, true) => "HTTP/1.1 or h2 by ALPN".into(),
        },
    ];
    if let Some(t) = &p.tls {
        conn.push(format!(
            "TLS to servers (CA {}{})",
            t.ca.as_ref()
                .map_or("system roots".to_string(), |c| c.display().to_string()),
            t.sni
                .as_ref()
                .map_or(String::new(), |n| format!(", SNI {n}"))
        ));
    }
    if let Some(m) = p.max_connections {
        conn.push(format!(
            "max {m} in flight per server, queue {} for {}",
            p.queue_size,
            dur(p.queue_timeout)
        ));
    }
    conn.push(format!(
        "retry budget {}% + {}/s",
        p.retry_budget.percent, p.retry_budget.min_per_second
    ));
    if let Some(w) = p.slow_start {
        conn.push(format!("slow start {}", dur(w)));
    }
    if p.panic {
        conn.push("panic mode (all servers when none is up)".into());
    }
    let _ = writeln!(s, "      upstream: {}", conn.join(", "));
    match &p.health {
        Some(h) => {
            let expect: Vec<String> = h
                .expect_status
                .iter()
                .map(|(a, b)| {
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect();
            let probe = if h.tcp {
                "TCP connect".to_string()
            } else {
                format!(
                    "{} {} expecting {}{}",
                    h.method,
                    h.path,
                    expect.join(","),
                    h.expect_body
                        .as_ref()
                        .map_or(String::new(), |b| format!(" and body containing {b:?}"))
                )
            };
            let _ = writeln!(
                s,
                "      health: {probe}, every {} ({} while down), timeout {}, up after {}, down after {}, starts {}",
                dur(h.interval),
                dur(h.unhealthy_interval),
                dur(h.timeout),
                h.healthy_after,
                h.unhealthy_after,
                if h.initial_healthy { "healthy" } else { "unhealthy" }
            );
        }
        None => {
            let _ = writeln!(s, "      health: no active probes");
        }
    }
    let e = &p.passive;
    if e.consecutive_failures == 0 {
        let _ = writeln!(s, "      ejection: off");
    } else {
        let _ = writeln!(
            s,
            "      ejection: after {} consecutive failures, for {} (up to {}), at most {}% of servers",
            e.consecutive_failures,
            dur(e.ejection_time),
            dur(e.max_ejection_time),
            e.max_ejected_percent
        );
    }
    if let Some(st) = &p.sticky {
        let _ = writeln!(
            s,
            "      sticky: cookie {} ({}), when the server is down: {}",
            st.cookie,
            st.ttl
                .map_or("session".to_string(), |t| format!("ttl {}", dur(t))),
            if st.reject_unavailable {
                "503"
            } else {
                "rebalance"
            }
        );
    }
    for sv in &p.servers {
        let _ = writeln!(s, "      - {} weight {}", sv.address, sv.weight);
    }
}

/// The whole compiled table.
pub fn describe(cfg: &Config) -> String {
    let mut s = String::from("\nlisteners:\n");
    for l in &cfg.listeners {
        listener(&mut s, l);
    }
    s.push_str("routes (tried in this order; the first whose every condition matches wins):\n");
    for (i, r) in cfg.routes.iter().enumerate() {
        route(&mut s, cfg, i, r);
    }
    s.push_str("pools:\n");
    for p in &cfg.pools {
        pool(&mut s, p);
    }
    let _ = writeln!(
        s,
        "shutdown: timeout {}, delay {}",
        dur(cfg.shutdown_timeout),
        dur(cfg.shutdown_delay)
    );
    match &cfg.admin {
        Some(a) => {
            let _ = writeln!(s, "admin: {}", a.bind);
        }
        None => s.push_str("admin: off\n"),
    }
    s
}
