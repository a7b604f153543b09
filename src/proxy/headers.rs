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
    // One pass over the names notes which are present (cheap comparisons for standard headers), so
    // only those are removed: each removal is a hashed lookup, and most responses carry
    // `Connection: keep-alive` and nothing else of the list.
    let mut present = 0u16;
    for n in h.keys() {
        if let Some(i) = hop_index(n) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if present & (1 << CONNECTION_INDEX) != 0 {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            // The two tokens nearly every message carries, both removed anyway, skip the parse.
            .filter(|t| !t.eq_ignore_ascii_case("close") && !t.eq_ignore_ascii_case("keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|n| hop_index(n).is_none())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for (i, n) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            h.remove(n);
        }
    }
    if present & (1 << HOP_BY_HOP.len()) != 0 {
        h.remove(header::UPGRADE);
    }
}

/// Where `Connection` sits in [`HOP_BY_HOP`] (a unit test holds the two together).
const CONNECTION_INDEX: usize = 1;

/// Where `n` sits in [`HOP_BY_HOP`], or one past its end for `Upgrade`.
fn hop_index(n: &HeaderName) -> Option<usize> {
    if n == header::UPGRADE {
        return Some(HOP_BY_HOP.len());
    }
    HOP_BY_HOP.iter().position(|h| h == n)
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
    let mut ip = IpText::default();
    ip.write(client.to_canonical());
    // Several `x-forwarded-for` lines are one list (RFC 9110 §5.3): every hop in them is kept.
    let mut prev = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|p| !p.trim().is_empty());
    let v = match prev.next() {
        None => HeaderValue::from_str(ip.as_str()),
        Some(first) => {
            let mut all = first.to_string();
            for hop in prev.chain([ip.as_str()]) {
                all.push_str(", ");
                all.push_str(hop);
            }
            HeaderValue::from_str(&all)
        }
    };
    if let Ok(v) = v {
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

/// An address as text on the stack: an IPv4 address (nearly every client) written without the
/// formatting machinery, which this runs through once per request otherwise.
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl Default for IpText {
    fn default() -> Self {
        IpText {
            buf: [0; 48],
            len: 0,
        }
    }
}

impl IpText {
    fn write(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push(b'.');
                    }
                    if octet >= 100 {
                        self.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        self.push(b'0' + octet / 10 % 10);
                    }
                    self.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut w = &mut self.buf[..];
                // 45 bytes at most ("ffff:...:255.255.255.255"): the buffer holds it.
                let _ = write!(w, "{v6}");
                let left = w.len();
                self.len = self.buf.len() - left;
            }
        }
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

/// Keeps a sane client-sent request id, or makes a new random one; returns it when `keep` (for
/// the access log: a copy costs an allocation, so none is made when the log is off).
pub fn request_id(h: &mut HeaderMap, keep: bool) -> Option<HeaderValue> {
    if let Some(v) = h.get(&X_REQUEST_ID) {
        if !v.is_empty() && v.len() <= 200 {
            return keep.then(|| v.clone());
        }
    }
    let v = HeaderValue::from_bytes(&hex_id(fastrand::u128(..))).expect("hex is a valid header");
    let kept = keep.then(|| v.clone());
    h.insert(X_REQUEST_ID, v);
    kept
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
        assert_eq!(HOP_BY_HOP[CONNECTION_INDEX], header::CONNECTION);
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
    fn request_id_is_kept_or_made_and_returned_only_when_asked() {
        let mut h = HeaderMap::new();
        assert_eq!(request_id(&mut h, false), None);
        let made = h.get(&X_REQUEST_ID).cloned().expect("an id is made");
        assert_eq!(made.len(), 32);
        assert_eq!(request_id(&mut h, true), Some(made));
        h.insert(X_REQUEST_ID, HeaderValue::from_static(""));
        let fresh = request_id(&mut h, true).expect("an empty id is replaced");
        assert_eq!(fresh.len(), 32);
        assert_eq!(h.get(&X_REQUEST_ID), Some(&fresh));
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        add_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "http", None);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn forwarded_for_on_several_lines_keeps_every_hop() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1".parse().unwrap());
        h.append("x-forwarded-for", "".parse().unwrap());
        h.append("x-forwarded-for", "2.2.2.2, 3.3.3.3".parse().unwrap());
        h.append("x-forwarded-for", "4.4.4.4".parse().unwrap());
        add_forwarded(&mut h, "127.0.0.1".parse().unwrap(), "http", None);
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["1.1.1.1, 2.2.2.2, 3.3.3.3, 4.4.4.4, 127.0.0.1"]);
    }

    #[test]
    fn addresses_are_written_like_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.100.255.9",
            "255.255.255.255",
            "::1",
            "fe80::1:2",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut t = IpText::default();
            t.write(ip);
            assert_eq!(t.as_str(), ip.to_string());
        }
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "::ffff:10.0.0.1".parse().unwrap(), "https", None);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
    }

    #[test]
    fn connection_tokens_that_are_not_headers_or_are_hop_by_hop_are_fine() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            "close, Upgrade, keep-alive, bad token".parse().unwrap(),
        );
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
