//! Cookie-based session affinity: cookie value ⇄ server identity.
//!
//! A server's cookie value is derived from the pool name and the server's address alone, so every weir
//! instance started from the same config issues and understands the same values with no shared state,
//! and adding or removing a server never changes another server's value. The value is a hash, never
//! the address: with a `secret` it is an HMAC-SHA256 (aws-lc-rs, already linked for TLS), so a client
//! cannot compute the value of a server it was not sent to. Unknown values are treated as no cookie.

use crate::config::StickyConfig;
use crate::pool::Server;
use http::{HeaderMap, HeaderValue};
use std::collections::HashMap;

#[derive(Debug)]
pub struct Sticky {
    pub config: StickyConfig,
    /// Cookie value of each server, by server index.
    values: Vec<String>,
    by_value: HashMap<String, usize>,
}

/// The cookie value naming `address` in pool `pool`.
pub fn server_value(pool: &str, address: &str, secret: Option<&str>) -> String {
    let msg = format!("{pool}\0{address}");
    match secret {
        Some(secret) => {
            let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
            let tag = aws_lc_rs::hmac::sign(&key, msg.as_bytes());
            hex(&tag.as_ref()[..16])
        }
        None => format!("{:016x}", xxhash_rust::xxh3::xxh3_64(msg.as_bytes())),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sticky {
    pub fn new(config: &StickyConfig, pool: &str, servers: &[Server]) -> Sticky {
        let values: Vec<String> = servers
            .iter()
            .map(|s| server_value(pool, &s.address, config.secret.as_deref()))
            .collect();
        let by_value = values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.clone(), i))
            .collect();
        Sticky {
            config: config.clone(),
            values,
            by_value,
        }
    }

    /// The server a request's affinity cookie names, if it names one of ours.
    pub fn lookup(&self, headers: &HeaderMap) -> Option<usize> {
        let v = crate::router::matcher::cookie(headers, &self.config.cookie)?;
        self.by_value.get(v).copied()
    }

    pub fn value(&self, idx: usize) -> &str {
        &self.values[idx]
    }

    /// The `Set-Cookie` header that pins a client to server `idx`.
    pub fn set_cookie(&self, idx: usize, tls: bool) -> HeaderValue {
        let c = &self.config;
        let mut s = format!("{}={}; Path={}", c.cookie, self.values[idx], c.path);
        if let Some(d) = &c.domain {
            s.push_str("; Domain=");
            s.push_str(d);
        }
        if let Some(ttl) = c.ttl {
            s.push_str(&format!("; Max-Age={}", ttl.as_secs()));
        }
        if c.http_only {
            s.push_str("; HttpOnly");
        }
        if c.secure.unwrap_or(tls) {
            s.push_str("; Secure");
        }
        s.push_str("; SameSite=");
        s.push_str(&c.same_site);
        HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""))
    }

    /// Removes our cookie from the `Cookie` headers going to the server, keeping the others.
    pub fn strip(&self, headers: &mut HeaderMap) {
        if !self.config.strip || !headers.contains_key(http::header::COOKIE) {
            return;
        }
        let name = &self.config.cookie;
        let kept: Vec<String> = headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .map(str::trim)
            // The name is trimmed as `router::matcher::cookie` trims it: `sid =x` is our cookie too.
            .filter(|c| !c.is_empty() && c.split('=').next().map(str::trim) != Some(name.as_str()))
            .map(str::to_owned)
            .collect();
        headers.remove(http::header::COOKIE);
        if !kept.is_empty() {
            if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
                headers.insert(http::header::COOKIE, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sticky(cookie: &str) -> Sticky {
        let config = StickyConfig {
            cookie: cookie.into(),
            ttl: None,
            reject_unavailable: false,
            secret: None,
            path: "/".into(),
            domain: None,
            http_only: true,
            secure: None,
            same_site: "Lax".into(),
            strip: true,
            drain_timeout: std::time::Duration::from_secs(600),
        };
        Sticky::new(&config, "p", &[])
    }

    /// Found by the `sticky` fuzz target: `sid =x` (space before `=`) is read as our cookie by the
    /// matcher but was passed on to the server.
    #[test]
    fn strip_removes_the_cookie_whatever_the_spacing() {
        let s = sticky("sid");
        let mut h = HeaderMap::new();
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static(" sid =; a=1"),
        );
        h.append(
            http::header::COOKIE,
            HeaderValue::from_static("sid\t=x;b=2; sid=y"),
        );
        s.strip(&mut h);
        assert_eq!(crate::router::matcher::cookie(&h, "sid"), None);
        assert_eq!(h[http::header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn values_are_stable_opaque_and_keyed() {
        let a = server_value("api", "127.0.0.1:9001", None);
        assert_eq!(a, server_value("api", "127.0.0.1:9001", None));
        assert_ne!(a, server_value("api", "127.0.0.1:9002", None));
        assert!(!a.contains("9001") && !a.contains("127"));
        let s = server_value("api", "127.0.0.1:9001", Some("k1"));
        assert_eq!(s.len(), 32);
        assert_ne!(s, server_value("api", "127.0.0.1:9001", Some("k2")));
    }
}
