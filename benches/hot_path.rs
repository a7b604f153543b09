//! Micro-benchmarks of the per-request hot pieces: route matching (10, 100 and 10,000 routes),
//! each balancer's pick, cookie lookup and header rewriting. Run with `cargo bench`; CI only
//! compiles them (`cargo clippy --all-targets`). Figures belong in BENCHMARKS.md, not in tests.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Request};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use weir::balance::PickInput;
use weir::pool::Pool;
use weir::router::Router;

/// Loads a YAML config from text the way `weir check` does (through a temp file).
fn config(yaml: &str) -> weir::config::Config {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.yaml");
    std::fs::write(&path, yaml).expect("write config");
    match weir::config::load(&path) {
        Ok((c, _)) => c,
        Err(e) => panic!("bench config invalid: {e}"),
    }
}

/// `n` routes: one host per route (as a multi-tenant edge has), each with a path prefix and a
/// header condition, plus a regex route and a catch-all at the end.
fn routes_yaml(n: usize) -> String {
    let mut y = String::from(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:1\"\npools:\n  p:\n    servers:\n      - address: \"127.0.0.1:2\"\nroutes:\n",
    );
    for i in 0..n {
        let _ = write!(
            y,
            "  - name: r{i}\n    match:\n      host: \"svc{i}.example.com\"\n      path_prefix: \"/api/v{}/\"\n      headers: {{ x-tenant: {{ present: true }} }}\n    pool: p\n",
            i % 7
        );
    }
    y.push_str(
        "  - name: regex\n    match: { path_regex: \"^/v[0-9]+/items/[0-9]+$\" }\n    pool: p\n",
    );
    y.push_str("  - name: default\n    match: { path_prefix: \"/\" }\n    pool: p\n");
    y
}

fn request(host: &str, path: &str) -> Request<()> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .header("x-tenant", "acme")
        .header("user-agent", "bench/1.0")
        .header("accept", "*/*")
        .header(
            "cookie",
            "theme=dark; session=abc123; weir_api=deadbeefcafe",
        )
        .body(())
        .expect("request")
}

fn route_matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    for n in [10usize, 100, 10_000] {
        let cfg = config(&routes_yaml(n));
        let router = Router::new(&cfg.routes);
        let last = format!("svc{}.example.com", n - 1);
        let hit = request(&last, &format!("/api/v{}/users/42", (n - 1) % 7));
        let fallthrough = request("unknown.example.org", "/v2/items/17");
        g.bench_with_input(BenchmarkId::new("host_hit", n), &hit, |b, r| {
            b.iter(|| black_box(router.route(black_box(r), None)))
        });
        g.bench_with_input(
            BenchmarkId::new("no_host_regex", n),
            &fallthrough,
            |b, r| b.iter(|| black_box(router.route(black_box(r), None))),
        );
    }
    g.finish();
}

fn balancers(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    let kinds = [
        ("round_robin", ""),
        ("least_request", ""),
        ("power_of_two", ""),
        ("random", ""),
        ("ip_hash", ""),
        ("header_hash", "\n    hash_header: x-user"),
        ("cookie_hash", "\n    hash_cookie: session"),
    ];
    let mut headers = HeaderMap::new();
    headers.insert("x-user", HeaderValue::from_static("user-4711"));
    headers.insert(
        "cookie",
        HeaderValue::from_static("theme=dark; session=abc123"),
    );
    let input = PickInput {
        client_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        headers: &headers,
    };
    for (kind, extra) in kinds {
        let mut y = format!("listeners:\n  - name: web\n    bind: \"127.0.0.1:1\"\npools:\n  p:\n    balance: {kind}{extra}\n    servers:\n");
        for i in 0..16 {
            let _ = writeln!(
                y,
                "      - {{ address: \"10.0.0.{i}:80\", weight: {} }}",
                1 + i % 3
            );
        }
        y.push_str("routes:\n  - name: all\n    match: { path_prefix: \"/\" }\n    pool: p\n");
        let cfg = config(&y);
        let pool = Pool::build(&cfg.pools[0], None).expect("pool");
        g.bench_function(kind, |b| {
            b.iter(|| black_box(pool.pick(black_box(&input), &[])))
        });
    }
    g.finish();
}

fn cookies_and_headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    let mut h = HeaderMap::new();
    h.insert(
        "cookie",
        HeaderValue::from_static("a=1; theme=dark; session=abc123; weir_api=deadbeefcafe; z=9"),
    );
    g.bench_function("cookie_lookup", |b| {
        b.iter(|| black_box(weir::router::matcher::cookie(black_box(&h), "weir_api")))
    });
    let mut req = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench"),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-encoding", "gzip, br"),
        ("connection", "keep-alive, x-drop"),
        ("keep-alive", "timeout=5"),
        ("x-drop", "1"),
        ("x-forwarded-for", "198.51.100.1"),
        ("cookie", "session=abc123"),
    ] {
        req.insert(k, HeaderValue::from_static(v));
    }
    let client = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let host = HeaderValue::from_static("api.example.com");
    g.bench_function("rewrite_request_headers", |b| {
        b.iter(|| {
            let mut h = req.clone();
            weir::proxy::headers::remove_hop_by_hop(&mut h);
            weir::proxy::headers::add_forwarded(&mut h, client, "https", Some(&host));
            black_box(weir::proxy::headers::request_id(&mut h, false));
            h
        })
    });
    g.finish();
}

criterion_group!(benches, route_matching, balancers, cookies_and_headers);
criterion_main!(benches);
