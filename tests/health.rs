//! Health: active probes (status, body, TCP mode, method and host, initial state, unhealthy_interval,
//! all servers down), retries on another server (never for a POST), the keep-alive race, a port that
//! closes under load, passive ejection with its cap, panic mode, slow start, max_connections with its
//! queue, `/status`, drain / enable through the admin API, and how health state and in-flight
//! requests survive a reload.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::closer::KeepAliveCloser;
use support::config::LISTENER;
use support::control::{closed_port, ctl_servers, find_server, Admin, ControlBackend};
use support::hung::HungServer;
use support::WAIT;
use support::{empty, full, Resp, Weir};

const HOST: &str = "lb.test";

/// Probes every 200ms with a 100ms timeout; down after 2 failures, up after 2 passes.
const FAST_HEALTH: &str = "    health:\n      path: /healthz\n      interval: 200ms\n      timeout: 100ms\n      unhealthy_after: 2\n      healthy_after: 2\n";

/// One listener `web`, one pool `p` (`balance`, extra pool lines indented four spaces, `servers`),
/// one catch-all route `all` (extra route lines indented four spaces), optionally an admin listener.
fn config(
    balance: &str,
    pool_extra: &str,
    servers: &str,
    route_extra: &str,
    admin: bool,
) -> String {
    let admin = if admin {
        "admin:\n  bind: \"127.0.0.1:0\"\n"
    } else {
        ""
    };
    format!(
        "{LISTENER}pools:\n  p:\n    balance: {balance}\n{pool_extra}    servers:\n{servers}\
         routes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n{route_extra}{admin}"
    )
}

/// weir's log lines that mention `needle` (e.g. a request id), or every line when it is empty.
fn lines_with(weir: &Weir, needle: &str) -> String {
    weir.logs()
        .into_iter()
        .filter(|l| l.contains(needle))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn get(weir: &Weir) -> Resp {
    weir.get(HOST, "/").await
}

/// The backend that answered, or `status NNN` for anything but a 200 echo.
fn who(r: &Resp) -> String {
    if r.status == StatusCode::OK {
        r.seen().backend
    } else {
        format!("status {}", r.status.as_u16())
    }
}

/// Sends GETs until `streak` consecutive ones are answered (200) by a server other than `name`;
/// panics after `limit`. Returns how long it took.
async fn until_avoided(weir: &Weir, name: &str, streak: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut run = 0;
    let mut last = Vec::new();
    while run < streak {
        let r = get(weir).await;
        let w = who(&r);
        if r.status == StatusCode::OK && w != name {
            run += 1;
        } else {
            run = 0;
        }
        last.push(w);
        if last.len() > 20 {
            last.remove(0);
        }
        if start.elapsed() > limit {
            panic!(
                "{name} still gets traffic after {limit:?} (last answers {last:?})\n--- stderr ---\n{}",
                weir.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// Sends GETs until `name` answers one; panics after `limit`.
async fn until_serves(weir: &Weir, name: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut last = Vec::new();
    loop {
        let w = who(&get(weir).await);
        if w == name {
            return start.elapsed();
        }
        last.push(w);
        if last.len() > 20 {
            last.remove(0);
        }
        if start.elapsed() > limit {
            panic!(
                "{name} got no traffic within {limit:?} (last answers {last:?})\n--- stderr ---\n{}",
                weir.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `/status` until `pred` holds for the entry of `server` in pool `p`; returns that entry.
async fn until_status(
    admin: &Admin,
    server: std::net::SocketAddr,
    what: &str,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let s = admin.server("p", server).await;
        if pred(&s) {
            return s;
        }
        if start.elapsed() > limit {
            panic!("/status never showed {what} for {server} within {limit:?}: last {s}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_probe_takes_server_out_and_passing_brings_it_back() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    let weir = Weir::start(&config(
        "round_robin",
        FAST_HEALTH,
        &ctl_servers(&[&a, &b]),
        "",
        false,
    ))
    .await;
    until_serves(&weir, "a", Duration::from_secs(5)).await;

    a.set_health(500);
    // unhealthy_after 2 × interval 200ms = 400ms, plus a generous margin.
    let took = until_avoided(&weir, "a", 10, Duration::from_secs(5)).await;
    let before = a.requests();
    for i in 0..50 {
        let r = get(&weir).await;
        assert_eq!(
            who(&r),
            "b",
            "request {i} after a's /healthz turned 500 (switch took {took:?})"
        );
    }
    assert_eq!(a.requests(), before, "a received requests while unhealthy");

    a.set_health(200);
    let back = until_serves(&weir, "a", Duration::from_secs(5)).await;
    eprintln!("out after {took:?}, back after {back:?}");
    assert!(a.health_checks() >= 4, "probes: {} on a", a.health_checks());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_body_mismatch_counts_as_failure() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    a.set_health_body(Some("nope"));
    let health = format!("{FAST_HEALTH}      expect_body: \"ok\"\n");
    let weir = Weir::start(&config(
        "round_robin",
        &health,
        &ctl_servers(&[&a, &b]),
        "",
        true,
    ))
    .await;
    let admin = Admin::of(&weir).await;
    until_avoided(&weir, "a", 10, Duration::from_secs(5)).await;
    for i in 0..50 {
        assert_eq!(
            who(&get(&weir).await),
            "b",
            "request {i}: a answers /healthz 200 \"nope\", which lacks \"ok\""
        );
    }
    let s = admin.server("p", a.addr).await;
    assert_eq!(s["healthy"], false, "{s}");
    assert_eq!(s["last_probe"]["ok"], false, "{s}");
    assert!(
        a.health_checks() >= 2,
        "a was probed {} times",
        a.health_checks()
    );
    // The same status with a body that contains "ok" passes: it was the body that failed.
    a.set_health_body(Some("all ok here"));
    until_serves(&weir, "a", Duration::from_secs(5)).await;
    let s = admin.server("p", b.addr).await;
    assert_eq!(s["healthy"], true, "b: {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_unhealthy_waits_for_passing_probes() {
    let a = ControlBackend::start("a").await;
    // No probe passes yet.
    a.set_health(500);
    let health = format!("{FAST_HEALTH}      initial: unhealthy\n");
    let weir = Weir::start(&config(
        "round_robin",
        &health,
        &ctl_servers(&[&a]),
        "",
        false,
    ))
    .await;
    // The very first request, before any probe could have passed.
    let r = get(&weir).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    support::eventually("a probed twice", Duration::from_secs(5), || async {
        a.health_checks() >= 2
    })
    .await;
    for _ in 0..5 {
        let r = get(&weir).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "initial: unhealthy and no passing probe yet: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.requests(), 0, "a got traffic before passing a probe");

    a.set_health(200);
    let start = Instant::now();
    loop {
        let r = get(&weir).await;
        if r.status == StatusCode::OK {
            assert_eq!(r.backend(), "a");
            break;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "a not up 5s after its probes pass\n{}",
            weir.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        assert_eq!(get(&weir).await.backend(), "a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_servers_down_answers_503_quickly() {
    // One server refuses, the other accepts and never answers: neither timeout may be waited on
    // once the probes have taken both out.
    let hung = HungServer::start().await;
    let servers = format!(
        "      - address: \"{}\"\n      - address: \"{}\"\n",
        closed_port(),
        hung.addr
    );
    let pool = format!("    connect_timeout: 5s\n{FAST_HEALTH}");
    let weir = Weir::start(&config(
        "round_robin",
        &pool,
        &servers,
        "    timeout: 5s\n",
        true,
    ))
    .await;
    let admin = Admin::of(&weir).await;
    support::eventually("both servers down in /status", WAIT, || async {
        let st = admin.status().await;
        st["pools"][0]["servers"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["healthy"] == false))
    })
    .await;
    for i in 0..20 {
        let t = Instant::now();
        let r = get(&weir).await;
        let took = t.elapsed();
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "request {i}");
        assert!(
            took < Duration::from_secs(1),
            "request {i} took {took:?}: a 503 for a pool with no healthy server must not wait on \
             the 5s connect or response timeout"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_route_around_a_closed_port() {
    let a = ControlBackend::start("a").await;
    let servers = format!(
        "      - address: \"{}\"\n{}",
        closed_port(),
        ctl_servers(&[&a])
    );
    let weir = Weir::start(&config(
        "round_robin",
        "",
        &servers,
        "    retries: 2\n",
        false,
    ))
    .await;
    let client = weir.client();
    let mut failures = Vec::new();
    for i in 0..200 {
        let req = weir.request("GET", HOST, "/").body(empty()).unwrap();
        match support::try_send(&client, req).await {
            Ok(r) if r.status == StatusCode::OK && r.seen().backend == "a" => {}
            Ok(r) => failures.push(format!("{i}: {} {}", r.status, r.text())),
            Err(e) => failures.push(format!("{i}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 200 GETs failed: {:?}\n--- stderr ---\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        weir.stderr()
    );
    assert_eq!(a.requests(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_never_sent_twice_but_a_get_is_retried() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    a.set_status(502);
    // Passive ejection off, so a stays in rotation for every request.
    let weir = Weir::start(&config(
        "round_robin",
        "    passive:\n      consecutive_failures: 0\n",
        &ctl_servers(&[&a, &b]),
        "    retries: 2\n",
        false,
    ))
    .await;
    let n = 20;
    for i in 0..n {
        let req = weir
            .request("POST", HOST, "/submit")
            .header("x-test-id", format!("post-{i}"))
            .header("content-type", "text/plain")
            .body(full(format!("order number {i}")))
            .unwrap();
        let r = weir.send(req).await;
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::BAD_GATEWAY,
            "POST {i}: {} {}",
            r.status,
            r.text()
        );
    }
    let mut deliveries = std::collections::HashMap::<String, Vec<String>>::new();
    for (name, be) in [("a", &a), ("b", &b)] {
        for r in be.received().into_iter().filter(|r| r.method == "POST") {
            deliveries
                .entry(r.test_id.clone().unwrap_or_default())
                .or_default()
                .push(name.to_string());
        }
    }
    for i in 0..n {
        let id = format!("post-{i}");
        let got = deliveries.get(&id).cloned().unwrap_or_default();
        assert_eq!(
            got.len(),
            1,
            "{id} was delivered {} times (to {got:?}): a POST must never be sent twice",
            got.len()
        );
    }
    let posts_to_a = a.received().iter().filter(|r| r.method == "POST").count();
    assert!(
        posts_to_a > 0,
        "no POST reached a: the case was not exercised"
    );

    for i in 0..n {
        let req = weir
            .request("GET", HOST, "/read")
            .header("x-test-id", format!("get-{i}"))
            .body(empty())
            .unwrap();
        let r = weir.send(req).await;
        let rid = if r.status == StatusCode::OK || r.status == StatusCode::BAD_GATEWAY {
            r.seen().header("x-request-id").unwrap_or_default()
        } else {
            String::new()
        };
        assert_eq!(
            who(&r),
            "b",
            "GET {i} should be retried onto b after a's 502: {}\nweir's lines for it:\n{}\nall GETs:\n{}",
            r.text(),
            lines_with(&weir, &rid),
            lines_with(&weir, "path=/read")
        );
    }
    let gets_to_a = a.received().iter().filter(|r| r.method == "GET").count();
    assert!(
        gets_to_a > 0,
        "no GET was tried on a first: retry not exercised"
    );
    assert!(
        weir.logs().iter().any(|l| l.contains("retries=1")),
        "no access-log line with retries=1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_after_consecutive_failures() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    let c = ControlBackend::start("c").await;
    c.set_status(500);
    let weir = Weir::start(&config(
        "round_robin",
        "    passive:\n      consecutive_failures: 3\n      ejection_time: 30s\n",
        &ctl_servers(&[&a, &b, &c]),
        "",
        true,
    ))
    .await;
    let admin = Admin::of(&weir).await;
    for _ in 0..60 {
        if c.requests() >= 3 {
            break;
        }
        let r = get(&weir).await;
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::INTERNAL_SERVER_ERROR,
            "{} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(c.requests(), 3, "c did not get 3 requests in 60");
    let s = admin.server("p", c.addr).await;
    assert_eq!(s["ejected"], true, "c after 3 consecutive 500s: {s}");
    assert!(s["ejections"].as_u64() >= Some(1), "{s}");
    for other in [&a, &b] {
        let s = admin.server("p", other.addr).await;
        assert_eq!(s["ejected"], false, "{}: {s}", other.name);
    }
    for i in 0..30 {
        let r = get(&weir).await;
        assert_eq!(r.status, StatusCode::OK, "request {i} after c's ejection");
        assert_ne!(r.backend(), "c");
    }
    assert_eq!(c.requests(), 3, "an ejected server got traffic");
    weir.wait_log("`server ejected`", |l| l.contains("server ejected"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_is_capped_by_max_ejected_percent() {
    let good = ControlBackend::start("good").await;
    let bad: Vec<ControlBackend> = vec![
        ControlBackend::start("bad1").await,
        ControlBackend::start("bad2").await,
        ControlBackend::start("bad3").await,
    ];
    for b in &bad {
        b.set_status(500);
    }
    let all = [&good, &bad[0], &bad[1], &bad[2]];
    let weir = Weir::start(&config(
        "round_robin",
        "    passive:\n      consecutive_failures: 2\n      ejection_time: 30s\n      max_ejected_percent: 50\n",
        &ctl_servers(&all),
        "",
        true,
    ))
    .await;
    let admin = Admin::of(&weir).await;
    let ejected_now = |st: &serde_json::Value| -> Vec<String> {
        all.iter()
            .filter(|b| find_server(st, "p", b.addr).is_some_and(|s| s["ejected"] == true))
            .map(|b| b.name.clone())
            .collect()
    };
    let mut most = 0;
    for i in 0..80 {
        let r = get(&weir).await;
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::INTERNAL_SERVER_ERROR,
            "request {i}: {} {}",
            r.status,
            r.text()
        );
        let ej = ejected_now(&admin.status().await);
        assert!(
            ej.len() <= 2,
            "more than 50% of 4 servers ejected at once: {ej:?}"
        );
        most = most.max(ej.len());
    }
    assert_eq!(
        most,
        2,
        "3 failing servers, cap 50% of 4: expected 2 ejected\n{}",
        admin.status().await
    );
    // The failing server that could not be ejected still gets its share.
    let st = admin.status().await;
    let ej = ejected_now(&st);
    let left: Vec<_> = bad.iter().filter(|b| !ej.contains(&b.name)).collect();
    assert_eq!(left.len(), 1, "{ej:?}");
    let before = left[0].requests();
    for _ in 0..8 {
        get(&weir).await;
    }
    assert!(
        left[0].requests() > before,
        "{} (failing, not ejected because of the cap) got no traffic",
        left[0].name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_an_unhealthy_server_with_its_probe_detail() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    a.set_health(500);
    let weir = Weir::start(&config(
        "round_robin",
        FAST_HEALTH,
        &ctl_servers(&[&a, &b]),
        "",
        true,
    ))
    .await;
    let admin = Admin::of(&weir).await;
    let s = until_status(
        &admin,
        a.addr,
        "healthy: false",
        Duration::from_secs(5),
        |s| s["healthy"] == false,
    )
    .await;
    assert_eq!(s["last_probe"]["ok"], false, "{s}");
    let detail = s["last_probe"]["detail"].as_str().unwrap_or_default();
    assert!(
        !detail.is_empty() && detail.contains("500"),
        "last_probe.detail should say why (status 500): {s}"
    );
    let sb = until_status(
        &admin,
        b.addr,
        "a passing probe",
        Duration::from_secs(5),
        |s| s["last_probe"]["ok"] == true,
    )
    .await;
    assert_eq!(sb["healthy"], true, "{sb}");
    weir.wait_log("`server is unhealthy`", |l| {
        l.contains("server is unhealthy")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_enable_through_the_admin_api() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    let c = ControlBackend::start("c").await;
    let weir = Weir::start(&config(
        "round_robin",
        "",
        &ctl_servers(&[&a, &b, &c]),
        "",
        true,
    ))
    .await;
    let admin = Admin::of(&weir).await;
    until_serves(&weir, "b", Duration::from_secs(5)).await;

    admin.drain("p", b.addr).await;
    assert_eq!(admin.server("p", b.addr).await["draining"], true);
    let before = b.requests();
    for i in 0..60 {
        let r = get(&weir).await;
        assert_ne!(who(&r), "b", "request {i} reached drained b");
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(b.requests(), before, "drained b got requests");

    admin.enable("p", b.addr).await;
    assert_eq!(admin.server("p", b.addr).await["draining"], false);
    let mut seen_b = 0;
    for _ in 0..30 {
        if who(&get(&weir).await) == "b" {
            seen_b += 1;
        }
    }
    assert!(seen_b >= 5, "b got {seen_b} of 30 after enable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_health_state() {
    // Slow probes make this deterministic: a goes down on its first probe (unhealthy_after 1),
    // then its /healthz passes again, but coming back takes 3 passes 10s apart. A reload that
    // forgot the state would bring a back at once (initial: healthy).
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    a.set_health(500);
    let health = "    health:\n      path: /healthz\n      interval: 10s\n      timeout: 1s\n      unhealthy_after: 1\n      healthy_after: 3\n      initial: healthy\n";
    let weir = Weir::start(&config(
        "round_robin",
        health,
        &ctl_servers(&[&a, &b]),
        "",
        true,
    ))
    .await;
    let admin = Admin::of(&weir).await;
    until_status(
        &admin,
        a.addr,
        "healthy: false",
        Duration::from_secs(8),
        |s| s["healthy"] == false,
    )
    .await;
    a.set_health(200);
    let generation = admin.status().await["generation"].as_u64().unwrap_or(0);

    weir.signal("HUP");
    weir.wait_log("`configuration reloaded`", |l| {
        l.contains("configuration reloaded")
    })
    .await;
    let st = admin.status().await;
    assert!(
        st["generation"].as_u64().unwrap_or(0) > generation,
        "generation did not move: {st}"
    );
    let s = find_server(&st, "p", a.addr).unwrap();
    assert_eq!(
        s["healthy"], false,
        "a was unhealthy before the reload of the same config: {s}"
    );
    for i in 0..20 {
        assert_eq!(who(&get(&weir).await), "b", "request {i} after reload");
    }
    assert_eq!(a.requests(), 0, "unhealthy a got traffic after the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_removed_on_reload_finishes_its_in_flight_request() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    a.set_delay(Duration::from_secs(2));
    let weir = Weir::start(&config(
        "round_robin",
        "",
        &ctl_servers(&[&a, &b]),
        "",
        false,
    ))
    .await;
    // Start requests until one is in flight on slow a.
    let client = weir.client();
    let mut slow = None;
    for _ in 0..10 {
        let (ra, rb) = (a.requests(), b.requests());
        let req = weir.request("GET", HOST, "/slow").body(empty()).unwrap();
        let c = client.clone();
        let task = tokio::spawn(async move { support::try_send(&c, req).await });
        support::eventually("the request reaches a server", support::WAIT, || async {
            a.requests() > ra || b.requests() > rb
        })
        .await;
        if a.requests() > ra {
            slow = Some(task);
            break;
        }
        let _ = task.await;
    }
    let slow = slow.expect("no request landed on a");

    let path = weir.dir().unwrap().join("weir.yaml");
    std::fs::write(
        &path,
        config("round_robin", "", &ctl_servers(&[&b]), "", false),
    )
    .unwrap();
    weir.signal("HUP");
    weir.wait_log("`configuration reloaded`", |l| {
        l.contains("configuration reloaded")
    })
    .await;
    assert_eq!(
        a.completed(),
        0,
        "precondition: the slow request should still be in flight at the reload"
    );
    let r = tokio::time::timeout(Duration::from_secs(20), slow)
        .await
        .expect("in-flight request did not finish")
        .expect("task")
        .unwrap_or_else(|e| panic!("in-flight request failed: {e}\n{}", weir.stderr()));
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.backend(), "a");
    let before = a.requests();
    for _ in 0..10 {
        assert_eq!(who(&get(&weir).await), "b");
    }
    assert_eq!(a.requests(), before, "removed server got new requests");
}

/// Share of `n` sequential GETs (or of those sent within `window`) answered by `name`.
async fn share_of(weir: &Weir, name: &str, window: Duration, most: usize) -> (usize, usize) {
    let start = Instant::now();
    let (mut hits, mut total) = (0, 0);
    while start.elapsed() < window && total < most {
        let r = get(weir).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        total += 1;
        if r.backend() == name {
            hits += 1;
        }
    }
    (hits, total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_ramps_a_returning_server_up() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    a.set_health(500);
    let pool = format!("    slow_start: 6s\n{FAST_HEALTH}");
    let weir = Weir::start(&config(
        "round_robin",
        &pool,
        &ctl_servers(&[&a, &b]),
        "",
        false,
    ))
    .await;
    until_avoided(&weir, "a", 10, Duration::from_secs(5)).await;
    a.set_health(200);
    until_serves(&weir, "a", Duration::from_secs(5)).await;
    let back = Instant::now();
    // In its first 1.5s back, a's share of its weight is 10% to ~35%: well under its half.
    let (early, early_n) = share_of(&weir, "a", Duration::from_millis(1500), 2000).await;
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(back.elapsed())).await;
    // After the 6s window: its full half.
    let (late, late_n) = share_of(&weir, "a", Duration::from_secs(30), 200).await;
    let (early_pct, late_pct) = (early * 100 / early_n, late * 100 / late_n);
    eprintln!("slow start: a had {early}/{early_n} early, {late}/{late_n} late");
    assert!(early_n >= 20, "only {early_n} requests in the early window");
    assert!(
        early_pct < 30,
        "a got {early}/{early_n} ({early_pct}%) right after coming back: no ramp"
    );
    assert!(
        (35..=65).contains(&late_pct),
        "a got {late}/{late_n} ({late_pct}%) after the slow-start window, expected about half"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_on_max_connections_get_503_after_queue_timeout() {
    let a = ControlBackend::start("a").await;
    a.set_delay(Duration::from_secs(4));
    let pool = "    max_connections: 1\n    queue_size: 5\n    queue_timeout: 500ms\n";
    let weir = Weir::start(&config("round_robin", pool, &ctl_servers(&[&a]), "", false)).await;
    let (client, req) = (
        weir.client(),
        weir.request("GET", HOST, "/slow").body(empty()).unwrap(),
    );
    let first = tokio::spawn(async move { support::try_send(&client, req).await });
    support::eventually("the first request reaches a", WAIT, || async {
        a.requests() == 1
    })
    .await;
    let t = Instant::now();
    let r = get(&weir).await;
    let took = t.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(
        took >= Duration::from_millis(450),
        "503 after {took:?}: the request did not wait its queue_timeout of 500ms"
    );
    assert!(
        took < Duration::from_secs(3),
        "503 after {took:?}: it waited for the busy slot (4s), not its queue_timeout"
    );
    assert_eq!(a.requests(), 1, "a request went past max_connections: 1");
    let r = first.await.unwrap().expect("the first request");
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_are_served_when_a_slot_frees_and_a_full_queue_gets_503() {
    let a = ControlBackend::start("a").await;
    a.set_delay(Duration::from_millis(1500));
    let pool = "    max_connections: 1\n    queue_size: 1\n    queue_timeout: 20s\n";
    let weir = Weir::start(&config("round_robin", pool, &ctl_servers(&[&a]), "", false)).await;
    let send = |path: &str| {
        let (client, req) = (
            weir.client(),
            weir.request("GET", HOST, path).body(empty()).unwrap(),
        );
        tokio::spawn(async move { support::try_send(&client, req).await })
    };
    let first = send("/first");
    support::eventually("the first request reaches a", WAIT, || async {
        a.requests() == 1
    })
    .await;
    let second = send("/second");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        a.requests(),
        1,
        "the second request was not held in the queue"
    );
    // The queue (size 1) is full: the third is refused without waiting.
    let t = Instant::now();
    let r = get(&weir).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "a request beyond queue_size waited {:?}",
        t.elapsed()
    );
    // Never more than one in flight at a: `requests` is read before `completed`.
    let watch = async {
        loop {
            let (r, c) = (a.requests(), a.completed());
            assert!(
                r - c <= 1,
                "{r} requests arrived, {c} completed: over max_connections"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let both = async { (first.await.unwrap(), second.await.unwrap()) };
    let (r1, r2) = tokio::select! {
        b = both => b,
        _ = watch => unreachable!(),
    };
    for (r, path) in [(r1, "/first"), (r2, "/second")] {
        let r = r.unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        assert_eq!(r.seen().uri, path);
    }
    assert_eq!(a.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_closing_under_load_costs_no_get() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    // A small delay keeps requests in flight on a when its connections are cut.
    a.set_delay(Duration::from_millis(5));
    b.set_delay(Duration::from_millis(5));
    let weir = Weir::start(&config(
        "round_robin",
        "",
        &ctl_servers(&[&a, &b]),
        "    retries: 2\n",
        false,
    ))
    .await;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let loops: Vec<_> = (0..4)
        .map(|l| {
            let (client, url, sent) = (weir.client(), weir.url("/"), sent.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for i in 0..150 {
                    let req = http::Request::get(&url)
                        .header("host", HOST)
                        .body(empty())
                        .unwrap();
                    match support::try_send(&client, req).await {
                        Ok(r) if r.status == StatusCode::OK => {}
                        Ok(r) => failures.push(format!("loop {l} #{i}: {} {}", r.status, r.text())),
                        Err(e) => failures.push(format!("loop {l} #{i}: {e}")),
                    }
                    sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                failures
            })
        })
        .collect();
    support::eventually("150 GETs sent", WAIT, || async {
        sent.load(std::sync::atomic::Ordering::SeqCst) >= 150
    })
    .await;
    let (before_a, in_flight) = (a.requests(), a.requests() - a.completed());
    a.stop().await;
    let mut failures = Vec::new();
    for l in loops {
        failures.extend(l.await.unwrap());
    }
    eprintln!(
        "a served {before_a} before its port closed ({in_flight} in flight then); b served {}",
        b.requests()
    );
    assert!(
        failures.is_empty(),
        "{} of 600 GETs failed after a's port closed: {:?}\n--- stderr ---\n{}",
        failures.len(),
        &failures[..failures.len().min(10)],
        weir.stderr()
    );
    assert!(
        before_a >= 20,
        "a served only {before_a}: the case was not exercised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_sends_to_every_server_when_none_is_healthy() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    a.set_health(500);
    b.set_health(500);
    let pool = format!("    panic: true\n{FAST_HEALTH}");
    let weir = Weir::start(&config(
        "round_robin",
        &pool,
        &ctl_servers(&[&a, &b]),
        "",
        true,
    ))
    .await;
    let admin = Admin::of(&weir).await;
    for s in [&a, &b] {
        until_status(&admin, s.addr, "healthy: false", WAIT, |s| {
            s["healthy"] == false
        })
        .await;
    }
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20 {
        let r = get(&weir).await;
        assert_eq!(r.status, StatusCode::OK, "request {i} with panic: true");
        seen.insert(r.backend());
    }
    assert_eq!(
        seen.len(),
        2,
        "panic mode should use every server: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probe_only_connects_and_logs_why_a_server_went_down() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    // An HTTP probe would fail a; a TCP probe never sends one.
    a.set_health(500);
    let health = "    health:\n      tcp: true\n      interval: 200ms\n      timeout: 100ms\n      unhealthy_after: 2\n      healthy_after: 2\n";
    let weir = Weir::start(&config(
        "round_robin",
        health,
        &ctl_servers(&[&a, &b]),
        "",
        false,
    ))
    .await;
    until_serves(&weir, "b", Duration::from_secs(5)).await;
    b.stop().await;
    until_avoided(&weir, "b", 10, Duration::from_secs(5)).await;
    let line = weir
        .wait_log("`server is unhealthy` for b", |l| {
            l.contains("server is unhealthy") && l.contains(&b.addr.to_string())
        })
        .await;
    assert!(
        line.to_lowercase().contains("refused"),
        "the state change should say why (connection refused): {line}"
    );
    b.restart().await;
    until_serves(&weir, "b", Duration::from_secs(5)).await;
    weir.wait_log("`server is healthy` for b", |l| {
        l.contains("server is healthy") && l.contains(&b.addr.to_string())
    })
    .await;
    assert_eq!(a.health_checks(), 0, "a TCP probe sent an HTTP request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_uses_the_configured_method_and_host() {
    let a = ControlBackend::start("a").await;
    let health = "    health:\n      path: /healthz\n      method: HEAD\n      host: health.internal\n      interval: 200ms\n      timeout: 100ms\n";
    let weir = Weir::start(&config(
        "round_robin",
        health,
        &ctl_servers(&[&a]),
        "",
        false,
    ))
    .await;
    support::eventually("a probe", WAIT, || async { a.health_checks() >= 2 }).await;
    assert_eq!(
        a.last_health_request(),
        Some(("HEAD".to_string(), Some("health.internal".to_string())))
    );
    assert_eq!(get(&weir).await.backend(), "a", "a HEAD probe should pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_server_is_probed_at_unhealthy_interval() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    a.set_health(500);
    let health = "    health:\n      path: /healthz\n      interval: 5s\n      unhealthy_interval: 100ms\n      timeout: 80ms\n      healthy_after: 2\n      initial: unhealthy\n";
    let _weir = Weir::start(&config(
        "round_robin",
        health,
        &ctl_servers(&[&a, &b]),
        "",
        false,
    ))
    .await;
    support::eventually("a probed 6 times", WAIT, || async {
        a.health_checks() >= 6
    })
    .await;
    // b came up after 2 passes and is then probed every 5s.
    assert!(
        b.health_checks() <= 4,
        "b (up) was probed {} times while a (down) was probed {}",
        b.health_checks(),
        a.health_checks()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_connection_closed_unanswered_spends_the_routes_retries_only() {
    // Servers that read each request and hang up. That is their answer, not the keep-alive race
    // (the connections are new), so a GET is sent 1 + `retries` times, each to another server.
    let (a, b) = (
        KeepAliveCloser::start_answering(0).await,
        KeepAliveCloser::start_answering(0).await,
    );
    let one = format!("      - address: \"{}\"\n", a.addr);
    let weir = Weir::start(&config("round_robin", "", &one, "", false)).await;
    let r = get(&weir).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(a.cut(), 1, "retries: 0 sent the GET {} times", a.cut());
    drop(weir);

    let two = format!(
        "      - address: \"{}\"\n      - address: \"{}\"\n",
        a.addr, b.addr
    );
    let weir = Weir::start(&config("round_robin", "", &two, "    retries: 1\n", false)).await;
    let r = get(&weir).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(
        (a.cut() - 1, b.cut()),
        (1, 1),
        "retries: 1 over two servers: one attempt on each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_race_is_retried_on_a_fresh_connection_for_gets_only() {
    let server = KeepAliveCloser::start().await;
    let servers = format!("      - address: \"{}\"\n", server.addr);
    // One server and no retries: only the keep-alive race retry can save a request. One worker:
    // idle upstream connections are kept per worker, and the test's pooled client sometimes
    // opens a second connection (when its first is not back in its pool yet), which weir then
    // serves on the other worker, where no idle upstream connection waits for the POST.
    let weir = Weir::start_args(
        &config("round_robin", "", &servers, "", false),
        &["web"],
        &["--workers", "1"],
    )
    .await;
    for i in 0..10 {
        let r = weir.get(HOST, &format!("/get/{i}")).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "GET {i}: {}\n{}",
            r.text(),
            weir.stderr()
        );
    }
    assert!(
        server.cut() >= 5,
        "weir reused a connection only {} times: the race was not exercised",
        server.cut()
    );
    // A POST with a body on a reused connection that breaks is not sent again.
    let req = weir
        .request("POST", HOST, "/order")
        .body(full("one order"))
        .unwrap();
    let cut_before = server.cut();
    let r = weir.send(req).await;
    assert_eq!(
        server.cut(),
        cut_before + 1,
        "the POST did not go out on a reused connection: case not exercised"
    );
    let posts = server
        .request_lines()
        .iter()
        .filter(|l| l.starts_with("POST"))
        .count();
    assert_eq!(posts, 1, "the POST reached the server {posts} times");
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
}
