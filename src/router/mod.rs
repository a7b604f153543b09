//! Route selection: the first route, in config order, whose every condition matches.
//!
//! Routes are pre-indexed by exact host: each exact host maps to the ordered list of routes that could
//! match it (its own, wildcard ones that cover it, and host-less ones), and any other host uses the
//! list of wildcard and host-less routes. So 10,000 virtual hosts cost one hash lookup, not a scan.

pub mod matcher;

use crate::config::{HeaderOps, HostPattern, MatchConfig, RouteConfig};
use http::Request;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A compiled route: its conditions and what to do with a request that meets them.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub conditions: MatchConfig,
    pub pool: usize,
    pub timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub retries: u32,
    pub strip_prefix: Option<String>,
    pub max_body_size: Option<u64>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

impl Route {
    fn new(r: &RouteConfig) -> Route {
        Route {
            name: r.name.as_str().into(),
            conditions: r.matcher.clone(),
            pool: r.pool,
            timeout: r.timeout,
            stream_idle_timeout: r.stream_idle_timeout,
            retries: r.retries,
            strip_prefix: r.strip_prefix.clone(),
            max_body_size: r.max_body_size,
            request_headers: r.request_headers.clone(),
            response_headers: r.response_headers.clone(),
        }
    }

    /// `host` is lowercase, without port; `sni` is the TLS server name, if any.
    pub fn matches<B>(&self, req: &Request<B>, host: &str, sni: Option<&str>) -> bool {
        use matcher::*;
        let c = &self.conditions;
        (c.hosts.is_empty() || c.hosts.iter().any(|p| host_matches(p, host)))
            && (c.snis.is_empty() || sni.is_some_and(|s| c.snis.iter().any(|p| host_matches(p, s))))
            && c.path
                .as_ref()
                .is_none_or(|p| path_matches(p, req.uri().path()))
            && (c.methods.is_empty() || c.methods.contains(req.method()))
            && c.headers
                .iter()
                .all(|(n, p)| header_matches(p, req.headers(), n))
            && c.cookies
                .iter()
                .all(|(n, p)| value_matches(p, cookie(req.headers(), n)))
            && c.query
                .iter()
                .all(|(n, p)| query_matches(p, req.uri().query(), n))
    }
}

#[derive(Debug)]
pub struct Router {
    pub routes: Vec<Route>,
    by_host: HashMap<String, Box<[u32]>>,
    others: Box<[u32]>,
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Router {
        let routes: Vec<Route> = routes.iter().map(Route::new).collect();
        let exact_names: Vec<&str> = routes
            .iter()
            .flat_map(|r| r.conditions.hosts.iter())
            .filter_map(|h| match h {
                HostPattern::Exact(e) => Some(e.as_str()),
                _ => None,
            })
            .collect();
        let mut by_host = HashMap::new();
        for name in exact_names {
            if by_host.contains_key(name) {
                continue;
            }
            let list: Box<[u32]> = (0..routes.len() as u32)
                .filter(|&i| {
                    let hosts = &routes[i as usize].conditions.hosts;
                    hosts.is_empty() || hosts.iter().any(|p| matcher::host_matches(p, name))
                })
                .collect();
            by_host.insert(name.to_string(), list);
        }
        let others = (0..routes.len() as u32)
            .filter(|&i| {
                let hosts = &routes[i as usize].conditions.hosts;
                hosts.is_empty() || hosts.iter().any(|p| !matches!(p, HostPattern::Exact(_)))
            })
            .collect();
        Router {
            routes,
            by_host,
            others,
        }
    }

    /// The first matching route, by index.
    pub fn route<B>(&self, req: &Request<B>, sni: Option<&str>) -> Option<usize> {
        let raw = matcher::request_host(req);
        let host: Cow<str> = if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(raw.to_ascii_lowercase())
        } else {
            Cow::Borrowed(raw)
        };
        let host = host.trim_end_matches('.');
        let candidates = self.by_host.get(host).unwrap_or(&self.others);
        candidates
            .iter()
            .map(|&i| i as usize)
            .find(|&i| self.routes[i].matches(req, host, sni))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PathPattern, ValuePattern};

    fn route(name: &str, m: MatchConfig) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            matcher: m,
            pool: 0,
            timeout: Duration::from_secs(1),
            stream_idle_timeout: Duration::from_secs(1),
            retries: 0,
            strip_prefix: None,
            max_body_size: None,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        }
    }

    fn req(host: &str, path: &str) -> Request<()> {
        Request::builder()
            .uri(path)
            .header("host", host)
            .body(())
            .unwrap()
    }

    #[test]
    fn first_match_wins_across_index_and_fallback() {
        let routes = vec![
            route(
                "wild",
                MatchConfig {
                    hosts: vec![HostPattern::Wildcard(".example.com".into())],
                    path: Some(PathPattern::Prefix("/w".into())),
                    ..Default::default()
                },
            ),
            route(
                "api",
                MatchConfig {
                    hosts: vec![HostPattern::Exact("api.example.com".into())],
                    ..Default::default()
                },
            ),
            route(
                "beta",
                MatchConfig {
                    headers: vec![("x-beta".parse().unwrap(), ValuePattern::Present(true))],
                    ..Default::default()
                },
            ),
            route("all", MatchConfig::default()),
        ];
        let r = Router::new(&routes);
        let name = |q: &Request<()>| r.route(q, None).map(|i| &*r.routes[i].name);
        assert_eq!(name(&req("api.example.com", "/w/x")), Some("wild"));
        assert_eq!(name(&req("API.example.com:8080", "/x")), Some("api"));
        assert_eq!(name(&req("other.example.com", "/x")), Some("all"));
        let mut beta = req("zzz", "/");
        beta.headers_mut().insert("x-beta", "1".parse().unwrap());
        assert_eq!(name(&beta), Some("beta"));
    }

    #[test]
    fn no_match() {
        let routes = vec![route(
            "a",
            MatchConfig {
                path: Some(PathPattern::Exact("/login".into())),
                ..Default::default()
            },
        )];
        let r = Router::new(&routes);
        assert_eq!(r.route(&req("h", "/logout"), None), None);
        assert_eq!(r.route(&req("h", "/login"), None), Some(0));
    }
}
