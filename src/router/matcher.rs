//! Matchers for one route's conditions, all on borrowed request data (no allocation per request).

use crate::config::{HostPattern, PathPattern, ValuePattern};
use http::HeaderMap;

/// The host a request names, without port, from `Host` or the HTTP/2 `:authority`.
pub fn request_host<B>(req: &http::Request<B>) -> &str {
    let raw = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    strip_port(raw)
}

pub fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port → v6 (brackets kept off so patterns can name the bare address)
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

/// `host` must already be lowercase.
pub fn host_matches(p: &HostPattern, host: &str) -> bool {
    match p {
        HostPattern::Any => true,
        HostPattern::Exact(e) => e == host,
        HostPattern::Wildcard(suffix) => host
            .strip_suffix(suffix.as_str())
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
    }
}

/// Segment-aware prefixes: `/api` matches `/api` and `/api/x`, not `/apix`.
pub fn path_matches(p: &PathPattern, path: &str) -> bool {
    match p {
        PathPattern::Any => true,
        PathPattern::Exact(e) => e == path,
        PathPattern::Regex(r) => r.is_match(path),
        PathPattern::Prefix(prefix) => match path.strip_prefix(prefix.as_str()) {
            Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
            None => false,
        },
    }
}

pub fn value_matches(p: &ValuePattern, v: Option<&str>) -> bool {
    match (p, v) {
        (ValuePattern::Present(want), v) => *want == v.is_some(),
        (ValuePattern::Exact(e), Some(v)) => e == v,
        (ValuePattern::Regex(r), Some(v)) => r.is_match(v),
        (_, None) => false,
    }
}

/// Every value of a header must be considered: a pattern matches if any value does.
pub fn header_matches(p: &ValuePattern, headers: &HeaderMap, name: &http::HeaderName) -> bool {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    match p {
        ValuePattern::Present(want) => *want == headers.contains_key(name),
        _ => values.any(|v| value_matches(p, Some(v))),
    }
}

/// The value of cookie `name` across all `Cookie` headers (HTTP/2 may split them).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// Whether query parameter `name` satisfies `p` (values are percent-decoded only when encoded).
pub fn query_matches(p: &ValuePattern, query: Option<&str>, name: &str) -> bool {
    let mut found = false;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if k == name {
            found = true;
            if value_matches(p, Some(&v)) {
                return true;
            }
        }
    }
    matches!(p, ValuePattern::Present(want) if *want == found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_segment_aware() {
        let p = PathPattern::Prefix("/api".into());
        assert!(path_matches(&p, "/api"));
        assert!(path_matches(&p, "/api/x"));
        assert!(!path_matches(&p, "/apix"));
        let slash = PathPattern::Prefix("/api/".into());
        assert!(path_matches(&slash, "/api/x"));
        assert!(!path_matches(&slash, "/api"));
    }

    #[test]
    fn hosts() {
        assert!(host_matches(
            &HostPattern::Wildcard(".example.com".into()),
            "a.example.com"
        ));
        assert!(!host_matches(
            &HostPattern::Wildcard(".example.com".into()),
            "example.com"
        ));
        assert!(!host_matches(
            &HostPattern::Wildcard(".example.com".into()),
            "a.b.example.com"
        ));
        assert_eq!(strip_port("api.example.com:8080"), "api.example.com");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("localhost"), "localhost");
    }

    #[test]
    fn cookies_and_query() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1; beta=yes".parse().unwrap());
        h.append("cookie", "c=3".parse().unwrap());
        assert_eq!(cookie(&h, "beta"), Some("yes"));
        assert_eq!(cookie(&h, "c"), Some("3"));
        assert_eq!(cookie(&h, "b"), None);
        let exact = ValuePattern::Exact("acme corp".into());
        assert!(query_matches(
            &exact,
            Some("x=1&tenant=acme%20corp"),
            "tenant"
        ));
        assert!(query_matches(
            &ValuePattern::Present(true),
            Some("flag"),
            "flag"
        ));
        assert!(query_matches(&ValuePattern::Present(false), None, "flag"));
    }
}
