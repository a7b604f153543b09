//! The operational surface: `/metrics` counters move with traffic and the whole exposition parses
//! strictly; every answer weir gives itself carries a reason code in the access log and in
//! `weir_local_replies_total`; `--access-log FILE`; `/healthz` turns 503 on SIGTERM while the
//! listeners still accept (`shutdown_delay`); a reload moves the admin endpoint.
//! (`/status` for an unhealthy server and drain through the admin API are in `health.rs`.)

mod support;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use support::control::{closed_port, Admin};
use support::{empty, eventually, raw_request, servers, Backend, Weir};

fn config(backend: &Backend, extra: &str) -> String {
    format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n  - name: plain\n    bind: \"127.0.0.1:0\"\n    redirect_https: 8443\n\
         pools:\n  p:\n    balance: round_robin\n    servers:\n{}  dead:\n    balance: round_robin\n    servers:\n      - address: \"{}\"\n\
         routes:\n  - name: dead\n    match:\n      path_prefix: \"/dead\"\n    pool: dead\n  - name: api\n    match:\n      path_prefix: \"/api\"\n    pool: p\n\
         admin:\n  bind: \"127.0.0.1:0\"\n{extra}",
        servers(&[backend]),
        closed_port()
    )
}

/// The address of pool `dead`'s one server, from the config file `config` wrote.
fn backend_dead(path: &std::path::Path) -> String {
    let yaml = std::fs::read_to_string(path).unwrap();
    let after = &yaml[yaml.find("  dead:").expect("pool dead")..];
    let start = after.find("address: \"").unwrap() + "address: \"".len();
    after[start..].split('"').next().unwrap().to_string()
}

async fn metrics(admin: &Admin) -> support::prom::Exposition {
    let c = support::client::client();
    let req = http::Request::get(format!("http://{}/metrics", admin.addr))
        .body(empty())
        .unwrap();
    let r = support::try_send(&c, req).await.expect("GET /metrics");
    assert_eq!(r.status, StatusCode::OK);
    support::prom::parse(&r.text())
        .unwrap_or_else(|e| panic!("/metrics is not valid exposition text: {e}\n{}", r.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_and_every_local_reply_has_a_reason() {
    let backend = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    let log = dir.path().join("access.log");
    std::fs::write(&path, config(&backend, "")).unwrap();
    let weir = Weir::start_path_args(
        &path,
        &["web", "plain"],
        &["--access-log", log.to_str().unwrap()],
    )
    .await;
    let admin = Admin::of(&weir).await;
    let before = metrics(&admin).await;
    let ok = |e: &support::prom::Exposition| {
        e.sum(
            "weir_requests_total",
            &[("route", "api"), ("class", "2xx"), ("listener", "web")],
        )
    };
    assert_eq!(ok(&before), 0.0);

    for _ in 0..5 {
        assert_eq!(weir.get("h", "/api/x").await.backend(), "b");
    }
    assert_eq!(
        weir.get("h", "/nothing").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(weir.get("h", "/dead").await.status, StatusCode::BAD_GATEWAY);
    let redirect = raw_request(
        weir.addr_of("plain"),
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
        false,
    )
    .await;
    assert_eq!(redirect.status, 308);
    let long = format!(
        "GET /api/{} HTTP/1.1\r\nHost: h\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let too_long = raw_request(weir.addr(), long.into_bytes(), false).await;
    assert!(
        [414, 431].contains(&too_long.status),
        "a 70 KiB URI: {}",
        too_long.raw.lines().next().unwrap_or("")
    );

    let reasons = [
        ("no_route", 1.0),
        ("connect_refused", 1.0),
        ("redirect_https", 1.0),
    ];
    // The access log line (and its counters) is written when the response body ends.
    eventually("the counters to move", Duration::from_secs(10), || async {
        let e = metrics(&admin).await;
        ok(&e) == 5.0
            && reasons
                .iter()
                .all(|(r, n)| e.sum("weir_local_replies_total", &[("reason", r)]) == *n)
    })
    .await;
    let after = metrics(&admin).await;
    assert!(
        after.sum("weir_request_duration_seconds_count", &[("route", "api")]) >= 5.0,
        "{:?}",
        after.samples
    );
    assert!(after.sum("weir_connections_total", &[("listener", "web")]) >= 1.0);
    assert_eq!(after.sum("weir_build_info", &[]), 1.0);
    let long_reason = if too_long.status == 414 {
        "uri_too_long"
    } else {
        "header_too_large"
    };
    assert_eq!(
        after.sum("weir_local_replies_total", &[("reason", long_reason)]),
        1.0
    );

    // A reload is counted by outcome.
    weir.signal("HUP");
    weir.wait_log("the reload", |l| l.contains("configuration reloaded"))
        .await;
    let reloaded = metrics(&admin).await;
    assert_eq!(
        reloaded.sum("weir_config_reloads_total", &[("outcome", "ok")]),
        1.0
    );

    // The access log went to the file, with the reason of each answer and upstream timing.
    let text = std::fs::read_to_string(&log).unwrap();
    for needle in [
        "reason=ok",
        "reason=no_route",
        "reason=connect_refused",
        "reason=redirect_https",
        long_reason,
    ] {
        assert!(text.contains(needle), "{needle} in the access log:\n{text}");
    }
    // A 502 names the server it could not reach, as nginx's $upstream_addr does.
    let refused = text
        .lines()
        .find(|l| l.contains("reason=connect_refused"))
        .unwrap();
    let dead = format!("upstream={}", backend_dead(&path));
    assert!(refused.contains(&dead), "{dead} in {refused}");
    let ok_lines: Vec<&str> = text.lines().filter(|l| l.contains("reason=ok")).collect();
    assert!(ok_lines[0].contains("upstream_ms="), "{}", ok_lines[0]);
    // The first request opened the upstream connection and logs its connect time; the later ones
    // reused the pooled connection and log none.
    assert!(ok_lines[0].contains("connect_ms="), "{}", ok_lines[0]);
    assert!(
        ok_lines[1..].iter().any(|l| !l.contains("connect_ms=")),
        "a reused connection logs no connect time:\n{text}"
    );
    assert!(
        !weir.logs().iter().any(|l| l.contains("weir::access")),
        "the access log is not also on stderr"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_turns_503_on_sigterm_before_the_listener_closes() {
    let backend = Backend::start("b").await;
    let mut weir =
        Weir::start_with_listeners(&config(&backend, "shutdown_delay: 2s\n"), &["web", "plain"])
            .await;
    let admin = Admin::of(&weir).await;
    let c = support::client::client();
    let healthz = |c: hyper_util::client::legacy::Client<_, _>, addr: SocketAddr| async move {
        let req = http::Request::get(format!("http://{addr}/healthz"))
            .body(empty())
            .unwrap();
        support::try_send(&c, req).await.map(|r| r.status)
    };
    assert_eq!(healthz(c.clone(), admin.addr).await, Ok(StatusCode::OK));
    weir.signal("TERM");
    eventually("/healthz to answer 503", Duration::from_secs(5), || {
        let c = c.clone();
        async move { healthz(c, admin.addr).await == Ok(StatusCode::SERVICE_UNAVAILABLE) }
    })
    .await;
    // /healthz says 503 and the proxy listener still accepts and serves.
    let fresh = support::client::client();
    let req = weir.request("GET", "h", "/api/x").body(empty()).unwrap();
    let r = support::try_send(&fresh, req)
        .await
        .unwrap_or_else(|e| panic!("served during shutdown_delay: {e}\n{}", weir.stderr()));
    assert_eq!(r.status, StatusCode::OK);
    // Then the listener closes, and weir exits 0.
    let addr = weir.addr();
    eventually("the listener to close", Duration::from_secs(10), || async move {
        matches!(tokio::net::TcpStream::connect(addr).await, Err(e) if e.kind() == ErrorKind::ConnectionRefused)
    })
    .await;
    let status = weir.wait_exit(Duration::from_secs(15)).await.expect("exit");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_admin_endpoint() {
    let backend = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, config(&backend, "")).unwrap();
    let weir = Weir::start_path(&path, &["web", "plain"]).await;
    let old = Admin::of(&weir).await;
    assert_eq!(old.status().await["generation"], 1);

    // A rejected reload changes nothing, its generation number included.
    std::fs::write(&path, "routes: [oops\n").unwrap();
    weir.signal("HUP");
    weir.wait_log("the rejected reload", |l| l.contains("reload rejected"))
        .await;
    assert_eq!(old.status().await["generation"], 1);

    let new_addr = closed_port();
    let moved = config(&backend, "").replace(
        "admin:\n  bind: \"127.0.0.1:0\"",
        &format!("admin:\n  bind: \"{new_addr}\""),
    );
    std::fs::write(&path, moved).unwrap();
    weir.signal("HUP");
    weir.wait_log("the reload", |l| l.contains("configuration reloaded"))
        .await;
    weir.wait_log("the new admin address", |l| {
        l.contains("admin listening") && l.contains(&new_addr.to_string())
    })
    .await;
    let c = support::client::client();
    let req = http::Request::get(format!("http://{new_addr}/status"))
        .body(empty())
        .unwrap();
    let r = support::try_send(&c, req).await.expect("new admin address");
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("\"generation\":2"), "{}", r.text());
    let old_addr = old.addr;
    eventually(
        "the old admin socket to close",
        Duration::from_secs(5),
        || async move { tokio::net::TcpStream::connect(old_addr).await.is_err() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_a_reload_removed_leaves_the_metrics() {
    let (b1, b2) = (Backend::start("b1").await, Backend::start("b2").await);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    let yaml = |backends: &[&Backend]| {
        format!(
            "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n\
             pools:\n  p:\n    servers:\n{}\
             routes:\n  - name: api\n    match:\n      path_prefix: \"/\"\n    pool: p\n\
             admin:\n  bind: \"127.0.0.1:0\"\n",
            servers(backends)
        )
    };
    std::fs::write(&path, yaml(&[&b1, &b2])).unwrap();
    let weir = Weir::start_path(&path, &["web"]).await;
    let admin = Admin::of(&weir).await;
    let up = |e: &support::prom::Exposition, b: &Backend| {
        let server = b.addr.to_string();
        e.samples
            .iter()
            .filter(|s| s.name == "weir_server_up" && s.label("server") == Some(server.as_str()))
            .count()
    };
    let before = metrics(&admin).await;
    assert_eq!((up(&before, &b1), up(&before, &b2)), (1, 1));

    std::fs::write(&path, yaml(&[&b1])).unwrap();
    weir.signal("HUP");
    weir.wait_log("the reload", |l| l.contains("configuration reloaded"))
        .await;
    let after = metrics(&admin).await;
    assert_eq!(
        up(&after, &b1),
        1,
        "the server that stays is still reported"
    );
    assert_eq!(up(&after, &b2), 0, "the removed server is still reported");
    for name in [
        "weir_server_in_flight_requests",
        "weir_server_ejections",
        "weir_server_draining",
    ] {
        let server = b2.addr.to_string();
        assert!(
            !after
                .samples
                .iter()
                .any(|s| s.name == name && s.label("server") == Some(server.as_str())),
            "{name} still has the removed server"
        );
    }
}

/// With `--workers 3`, connections are shared out evenly over the three event loops (the main
/// thread's and two worker threads), each keeps being served where it landed, and the
/// per-worker gauge follows them in and out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_shared_out_over_the_workers() {
    let backend = Backend::start("b").await;
    let weir = Weir::start_args(
        &config(&backend, ""),
        &["web", "plain"],
        &["--workers", "3"],
    )
    .await;
    let admin = Admin::of(&weir).await;
    let get = b"GET /api/w HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut conns = Vec::new();
    for _ in 0..6 {
        let mut c = support::rawconn::RawConn::connect(weir.addr()).await;
        assert!(c.send(get).await);
        assert_eq!(c.response(false).await.status, 200);
        conns.push(c);
    }
    let per_worker =
        |e: &support::prom::Exposition, w: &str| e.sum("weir_worker_connections", &[("worker", w)]);
    let e = metrics(&admin).await;
    for w in ["0", "1", "2"] {
        assert_eq!(per_worker(&e, w), 2.0, "worker {w} of 3, 6 connections");
    }
    // Every connection is still served, a few times over, on the worker it landed on.
    for _ in 0..3 {
        for c in conns.iter_mut() {
            assert!(c.send(get).await);
            assert_eq!(c.response(false).await.status, 200);
        }
    }
    assert_eq!(backend.requests(), 24);
    drop(conns);
    eventually(
        "every worker's count back to 0",
        Duration::from_secs(10),
        || async {
            let e = metrics(&admin).await;
            ["0", "1", "2"].iter().all(|w| per_worker(&e, w) == 0.0)
        },
    )
    .await;
}

/// A client that goes away while its request waits on a server: hyper drops the request's future,
/// and the request is still released from that server (its in-flight count drives
/// `least_request` and `max_connections`, so a leak would hold a slot for good), counted, and
/// logged as 499 `client_closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_goes_away_is_released_and_logged_499() {
    use tokio::io::AsyncWriteExt;
    let hung = support::hung::HungServer::start().await;
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n\
         pools:\n  p:\n    balance: least_request\n    servers:\n      - address: \"{}\"\n\
         routes:\n  - name: api\n    match:\n      path_prefix: \"/\"\n    pool: p\n\
         admin:\n  bind: \"127.0.0.1:0\"\n",
        hung.addr
    );
    let weir = Weir::start(&yaml).await;
    let admin = Admin::of(&weir).await;
    let server = hung.addr.to_string();
    let in_flight = |e: &support::prom::Exposition| {
        e.sum(
            "weir_server_in_flight_requests",
            &[("server", server.as_str())],
        )
    };
    let mut tcp = tokio::net::TcpStream::connect(weir.addr()).await.unwrap();
    tcp.write_all(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    eventually(
        "the request waits on the server",
        Duration::from_secs(10),
        || async { in_flight(&metrics(&admin).await) == 1.0 },
    )
    .await;
    drop(tcp);
    eventually("the request released", Duration::from_secs(10), || async {
        in_flight(&metrics(&admin).await) == 0.0
    })
    .await;
    let line = weir.expect_access_log(499, Some("api")).await;
    assert!(line.contains("client_closed"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_open_connections_and_names_the_balancer_as_configured() {
    let backend = Backend::start("b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, config(&backend, "")).unwrap();
    let weir = Weir::start_path_args(&path, &["web", "plain"], &[]).await;
    let admin = Admin::of(&weir).await;
    let listener = |st: &serde_json::Value, name: &str| {
        st["listeners"]
            .as_array()
            .and_then(|ls| ls.iter().find(|l| l["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no listener {name} in /status: {st}"))
    };

    // HEAD answers like GET, without a body (load balancers probe /healthz this way).
    let head = raw_request(
        admin.addr,
        b"HEAD /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(),
        true,
    )
    .await;
    assert_eq!(head.status, 200, "{:?}", head.raw);
    assert!(
        !head.raw.contains("ok\n"),
        "a HEAD answer has no body: {:?}",
        head.raw
    );

    let st = admin.status().await;
    assert_eq!(st["pools"][0]["balance"], "round_robin", "{st}");
    assert_eq!(st["active_connections"], 0, "{st}");

    // Two clients hold keep-alive connections open after a request each.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(weir.addr()).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        held.push(s);
    }
    let st = admin.status().await;
    assert_eq!(listener(&st, "web")["active_connections"], 2, "{st}");
    assert_eq!(listener(&st, "plain")["active_connections"], 0, "{st}");
    assert_eq!(st["active_connections"], 2, "{st}");

    drop(held);
    eventually(
        "the closed connections to leave /status",
        Duration::from_secs(10),
        || async { admin.status().await["active_connections"] == 0 },
    )
    .await;
}
