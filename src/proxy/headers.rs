//! Header hygiene between client and server: hop-by-hop removal, forwarding facts, configured edits.

use crate::config::HeaderOps;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

/// Hop-by-hop headers of RFC 9110 §7.6.1, plus the legacy `Proxy-Connection` and `Keep-Alive`, and
/// `HTTP2-Settings`, which only means something beside an `Upgrade: h2c` weir never forwards.
/// `Trailer` is end to end (RFC 9110 §6.6.2) and must stay: hyper's HTTP/1.1 encoder sends only the
/// trailer fields it announces, so removing it would drop a chunked response's trailers.
const HOP_BY_HOP: [HeaderName; 8] = [
    HeaderName::from_static("http2-settings"),
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Set only by weir from a verified client certificate; any copy a client sends is removed.
pub const X_CLIENT_CERT_SUBJECT: HeaderName = HeaderName::from_static("x-client-cert-subject");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Removes hop-by-hop headers and any header that `Connection` names. `Upgrade` is removed too; the
/// caller puts it back for a WebSocket upgrade it has decided to forward.
pub fn remove_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none of these: one pass over the names (cheap comparisons for standard
    // headers) instead of ten hashed lookups.
    let hop = |n: &HeaderName| n == header::UPGRADE || HOP_BY_HOP.contains(n);
    if !h.keys().any(hop) {
        return;
    }
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    h.remove(header::UPGRADE);
}

/// Whether `TE: trailers` was asked for (gRPC needs it end to end; it is the one TE value allowed in h2).
pub fn wants_trailers(h: &HeaderMap) -> bool {
    h.get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
}

/// `x-forwarded-for` (appended), `-proto`, `-host`.
pub fn add_forwarded(
    h: &mut HeaderMap,
    client: IpAddr,
    proto: &'static str,
    host: Option<&HeaderValue>,
) {
    let ip = client.to_canonical().to_string();
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(host) => {
            h.insert(X_FORWARDED_HOST, host.clone());
        }
        None => {
            h.remove(X_FORWARDED_HOST);
        }
    }
}

/// Keeps a sane client-sent request id, or makes a new random one.
pub fn request_id(h: &mut HeaderMap) -> HeaderValue {
    if let Some(v) = h.get(&X_REQUEST_ID) {
        if !v.is_empty() && v.len() <= 200 {
            return v.clone();
        }
    }
    let v = HeaderValue::from_bytes(&hex_id(fastrand::u128(..))).expect("hex is a valid header");
    h.insert(X_REQUEST_ID, v.clone());
    v
}

/// 32 lowercase hex digits, written without the formatting machinery (this runs per request).
fn hex_id(n: u128) -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    out
}

pub fn apply(ops: &HeaderOps, h: &mut HeaderMap) {
    for n in &ops.remove {
        h.remove(n);
    }
    for (n, v) in &ops.set {
        h.insert(n.clone(), v.clone());
    }
    for (n, v) in &ops.add {
        h.append(n.clone(), v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn request_ids_are_32_hex_digits_like_format() {
        for n in [
            0u128,
            1,
            u128::MAX,
            0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        ] {
            assert_eq!(hex_id(n), format!("{n:032x}").as_bytes());
        }
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        add_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "http", None);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
}
