//! gRPC awareness: `grpc-timeout` caps the wait for the response head, and when weir itself fails
//! a gRPC call the client gets a gRPC answer (HTTP 200, trailers-only, `grpc-status`) instead of an
//! HTTP error page that gRPC clients would report as an opaque protocol error.

use super::body::ResponseBody;
use super::error::ProxyError;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use std::time::Duration;

/// gRPC status codes weir answers with.
const DEADLINE_EXCEEDED: &str = "4";
const RESOURCE_EXHAUSTED: &str = "8";
const UNIMPLEMENTED: &str = "12";
const INTERNAL: &str = "13";
const UNAVAILABLE: &str = "14";

/// Whether the request is a gRPC call (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
                && matches!(v.as_bytes().get(16), None | Some(b'+' | b';'))
        })
}

/// The route's head timeout, shortened to the call's `grpc-timeout` when that is sooner.
pub fn head_timeout(h: &HeaderMap, route: Duration) -> Duration {
    const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
    h.get(GRPC_TIMEOUT)
        .and_then(|v| parse_timeout(v.as_bytes()))
        .map_or(route, |d| d.min(route))
}

/// `grpc-timeout`: up to 8 ASCII digits and a unit (H, M, S, m, u, n).
fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

fn code(e: &ProxyError) -> &'static str {
    match e {
        ProxyError::Timeout => DEADLINE_EXCEEDED,
        ProxyError::NoRoute | ProxyError::MethodNotAllowed => UNIMPLEMENTED,
        ProxyError::BodyTooLarge | ProxyError::UriTooLong => RESOURCE_EXHAUSTED,
        ProxyError::BadRequest(_) => INTERNAL,
        ProxyError::BodyTimeout | ProxyError::HeaderTimeout => DEADLINE_EXCEEDED,
        ProxyError::NoHealthyServer
        | ProxyError::QueueFull
        | ProxyError::StickyUnavailable
        | ProxyError::Connect(_)
        | ProxyError::Upstream(_)
        | ProxyError::Misdirected => UNAVAILABLE,
    }
}

/// Turns weir's own error answer into a trailers-only gRPC response: HTTP 200 with `grpc-status`
/// and `grpc-message` in the only HEADERS frame, and no body.
pub fn into_grpc(e: &ProxyError, r: &mut Response<ResponseBody>) {
    *r.status_mut() = StatusCode::OK;
    *r.body_mut() = ResponseBody::empty();
    let h = r.headers_mut();
    h.clear();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static(code(e)));
    h.insert("grpc-message", HeaderValue::from_static(message(e)));
}

/// Fixed ASCII texts (no percent-encoding needed, no server addresses: those go to the log).
fn message(e: &ProxyError) -> &'static str {
    match e {
        ProxyError::Timeout => "weir: deadline exceeded waiting for the server",
        ProxyError::NoRoute => "weir: no route for this method",
        ProxyError::BodyTooLarge => "weir: request too large",
        ProxyError::BadRequest(_) => "weir: malformed request",
        ProxyError::MethodNotAllowed => "weir: CONNECT is not served",
        ProxyError::NoHealthyServer => "weir: no healthy server",
        ProxyError::QueueFull => "weir: every server is at its connection limit",
        ProxyError::UriTooLong => "weir: request target too long",
        ProxyError::BodyTimeout => "weir: request body stalled",
        ProxyError::HeaderTimeout => "weir: request head stalled",
        ProxyError::StickyUnavailable => "weir: pinned server unavailable",
        ProxyError::Connect(_) => "weir: connecting to the server failed",
        ProxyError::Upstream(_) => "weir: the server failed",
        ProxyError::Misdirected => "weir: misdirected request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_grpc(&m)
        };
        assert!(h("application/grpc"));
        assert!(h("application/grpc+proto"));
        assert!(h("Application/GRPC; charset=utf-8"));
        assert!(!h("application/grpc-web"));
        assert!(!h("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout(b"500m"), Some(Duration::from_millis(500)));
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"123456789S"), None);
        assert_eq!(parse_timeout(b"S"), None);
        assert_eq!(parse_timeout(b"5x"), None);
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", "100m".parse().unwrap());
        let route = Duration::from_secs(60);
        assert_eq!(head_timeout(&h, route), Duration::from_millis(100));
        h.insert("grpc-timeout", "2M".parse().unwrap());
        assert_eq!(head_timeout(&h, route), route);
    }

    #[test]
    fn error_codes() {
        assert_eq!(code(&ProxyError::Timeout), "4");
        assert_eq!(code(&ProxyError::NoHealthyServer), "14");
        assert_eq!(code(&ProxyError::Connect("x".into())), "14");
        assert_eq!(code(&ProxyError::NoRoute), "12");
    }
}
