//! A router built from a fixed config with every kind of rule, fed arbitrary requests.
//!
//! The host index must never change the answer: `Router::route` has to pick the same route as a plain
//! first-match scan over every route. The path sent upstream after `strip_prefix` must stay a valid
//! origin-form path that keeps the query.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use weir::router::{matcher, Router};
use weir_fuzz::{header_map, RawHeader};

const CONFIG: &str = r#"
listeners:
  - name: web
    bind: "127.0.0.1:8080"
pools:
  p:
    servers: [{ address: "127.0.0.1:9001" }]
routes:
  - name: wild-prefix
    match: { host: "*.example.com", path_prefix: /w }
    pool: p
  - name: exact-host
    match: { host: [api.example.com, "API2.example.com", "[::1]", "10.0.0.1"] }
    pool: p
    strip_prefix: /v1/
  - name: sni
    match: { sni: ["secure.example.com", "*.tls.example.org"], path_prefix: /s/ }
    pool: p
  - name: methods
    match: { methods: [post, PUT, PATCH], path_exact: /submit }
    pool: p
  - name: header-exact
    match: { headers: { x-canary: "1" } }
    pool: p
  - name: header-regex
    match: { headers: { x-tenant: { regex: "^(acme|globex)-[0-9]+$" } }, host: "*.example.net" }
    pool: p
  - name: header-absent
    match: { headers: { x-internal: { present: false } }, path_regex: "^/admin(/.*)?$" }
    pool: p
  - name: cookie
    match: { cookies: { beta: "yes", session: { present: true } } }
    pool: p
    strip_prefix: /beta
  - name: cookie-regex
    match: { cookies: { lang: { regex: "^(en|fr)$" } }, host: [shop.example.com, "*.shop.example.com"] }
    pool: p
  - name: query
    match: { query: { tenant: "acme corp", debug: { present: true } } }
    pool: p
  - name: query-regex
    match: { query: { v: { regex: "^[0-9]{1,3}$" } }, path_prefix: /q/ }
    pool: p
  - name: exact-after-wild
    match: { host: [a.example.com, "*"], path_prefix: /any }
    pool: p
    strip_prefix: /any
  - name: api
    match: { path_prefix: /api }
    pool: p
    strip_prefix: /api
  - name: default-shop
    match: { host: shop.example.com }
    pool: p
  - name: default
    match: { path_prefix: / }
    pool: p
"#;

const HOSTS: [&str; 10] = [
    "api.example.com",
    "api2.example.com",
    "a.example.com",
    "b.example.com",
    "x.example.net",
    "shop.example.com",
    "m.shop.example.com",
    "secure.example.com",
    "::1",
    "10.0.0.1",
];

static ROUTER: LazyLock<Router> = LazyLock::new(|| {
    let (config, _) = weir::config::parse("router.yaml", CONFIG).expect("fixed config is valid");
    Router::new(&config.routes)
});

#[derive(Arbitrary, Debug)]
enum Host {
    Known {
        index: u8,
        upper: bool,
        port: Option<u16>,
        dot: bool,
    },
    Raw(Vec<u8>),
}

impl Host {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Host::Known {
                index,
                upper,
                port,
                dot,
            } => {
                let h = HOSTS[*index as usize % HOSTS.len()];
                let mut s = if h.contains(':') {
                    format!("[{h}]")
                } else {
                    h.to_string()
                };
                if *upper {
                    s = s.to_ascii_uppercase();
                }
                if *dot {
                    s.push('.');
                }
                if let Some(p) = port {
                    s.push_str(&format!(":{p}"));
                }
                s.into_bytes()
            }
            Host::Raw(b) => b.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    method: Method,
    host: Option<Host>,
    /// Absolute-form (or HTTP/2 `:authority`) host.
    authority: Option<Host>,
    path: String,
    query: Option<String>,
    headers: Vec<RawHeader>,
    cookies: Vec<(String, String)>,
    sni: Option<String>,
}

#[derive(Arbitrary, Debug)]
enum Method {
    Get,
    Post,
    Put,
    Patch,
    Other(String),
}

fuzz_target!(|input: Input| {
    let Some(req) = request(&input) else { return };
    let router = &*ROUTER;
    let sni = input.sni.as_deref();
    let got = router.route(&req, sni);

    let raw = matcher::request_host(&req);
    let lower = raw.to_ascii_lowercase();
    let host = lower.trim_end_matches('.');
    let want = router
        .routes
        .iter()
        .position(|r| r.matches(&req, host, sni));
    assert_eq!(got, want, "index and scan disagree for host {host:?}");

    if let Some(i) = got {
        let route = &router.routes[i];
        let up = weir::proxy::upstream_path(req.uri(), route.strip_prefix.as_deref());
        // Origin form, or the asterisk form (`OPTIONS *`) passed on as it came.
        let asterisk = req.uri().path() == "*" && up.path() == "*";
        assert!(
            up.path().starts_with('/') || asterisk,
            "upstream path {up:?}"
        );
        assert_eq!(up.query(), req.uri().query(), "query lost: {up:?}");
        if route.strip_prefix.is_none() {
            assert_eq!(
                up.as_str(),
                req.uri().path_and_query().map_or("/", |p| p.as_str())
            );
        }
    }
});

fn request(input: &Input) -> Option<http::Request<()>> {
    let method = match &input.method {
        Method::Get => http::Method::GET,
        Method::Post => http::Method::POST,
        Method::Put => http::Method::PUT,
        Method::Patch => http::Method::PATCH,
        Method::Other(m) => http::Method::from_bytes(m.as_bytes()).ok()?,
    };
    let mut target = String::new();
    if let Some(a) = &input.authority {
        target.push_str("http://");
        target.push_str(std::str::from_utf8(&a.bytes()).ok()?);
    }
    target.push_str(&input.path);
    if let Some(q) = &input.query {
        target.push('?');
        target.push_str(q);
    }
    let uri: http::Uri = target.parse().ok()?;
    let mut req = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .ok()?;
    let mut headers = header_map(&input.headers);
    if let Some(h) = &input.host {
        headers.append(
            http::header::HOST,
            http::HeaderValue::from_bytes(&h.bytes()).ok()?,
        );
    }
    if !input.cookies.is_empty() {
        let c: Vec<String> = input
            .cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if let Ok(v) = http::HeaderValue::from_str(&c.join("; ")) {
            headers.append(http::header::COOKIE, v);
        }
    }
    *req.headers_mut() = headers;
    Some(req)
}
