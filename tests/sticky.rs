//! Sticky sessions: the inserted cookie and its attributes, opaque and stable values shared by two
//! weir processes, forged and stale values, failover (down, failing probe, ejected) with
//! `rebalance` and `reject`, draining (admin and removal on reload) with `drain_timeout`, scale
//! events, `cookie_hash`, and HTTP/1.1, h2c and h2 over TLS.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use support::config::LISTENER;
use support::control::{ctl_servers, Admin, ControlBackend};
use support::tls_client::{dev_cert_paths, tls_send};
use support::{empty, Resp, Weir, WAIT};

const HOST: &str = "lb.test";
const COOKIE: &str = "weir_s";

/// Probes every 200ms; down after 2 failures.
const FAST_HEALTH: &str = "    health:\n      path: /healthz\n      interval: 200ms\n      timeout: 100ms\n      unhealthy_after: 2\n      healthy_after: 2\n";

/// One listener `web`, a pool `p` with `balance`, a sticky block (`sticky` lines indented six
/// spaces, after `cookie: weir_s`), extra pool lines, `servers`, a catch-all route, admin listener.
fn config(balance: &str, sticky: &str, pool_extra: &str, servers: &str) -> String {
    format!(
        "{LISTENER}pools:\n  p:\n    balance: {balance}\n    sticky:\n      cookie: {COOKIE}\n{sticky}\
         {pool_extra}    servers:\n{servers}\
         routes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n    retries: 1\n\
         admin:\n  bind: \"127.0.0.1:0\"\n"
    )
}

fn rewrite(weir: &Weir, yaml: &str) {
    std::fs::write(weir.dir().unwrap().join("weir.yaml"), yaml).unwrap();
}

async fn reload(weir: &Weir, yaml: &str) {
    let before = weir
        .logs()
        .iter()
        .filter(|l| l.contains("configuration reloaded"))
        .count();
    rewrite(weir, yaml);
    weir.signal("HUP");
    support::eventually("`configuration reloaded`", WAIT, || async {
        weir.logs()
            .iter()
            .filter(|l| l.contains("configuration reloaded"))
            .count()
            > before
    })
    .await;
}

/// Every `Set-Cookie` value of a response.
fn set_cookies(r: &Resp) -> Vec<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

/// The full `Set-Cookie` line of our affinity cookie, if the response set it.
fn affinity_line(r: &Resp) -> Option<String> {
    let prefix = format!("{COOKIE}=");
    let mut lines = set_cookies(r)
        .into_iter()
        .filter(|l| l.starts_with(&prefix));
    let line = lines.next();
    assert!(lines.next().is_none(), "two affinity cookies: {r:?}");
    line
}

/// The value of our affinity cookie, if the response set it.
fn affinity(r: &Resp) -> Option<String> {
    affinity_line(r).map(|l| {
        l.split(';').next().unwrap()[COOKIE.len() + 1..]
            .trim()
            .to_string()
    })
}

/// GET / with an optional `Cookie` header.
async fn get(weir: &Weir, cookie: Option<&str>) -> Resp {
    let mut b = weir.request("GET", HOST, "/");
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    weir.send(b.body(empty()).unwrap()).await
}

/// GET / carrying affinity value `v`.
async fn get_pinned(weir: &Weir, v: &str) -> Resp {
    get(weir, Some(&format!("{COOKIE}={v}"))).await
}

/// The backend that answered, asserting a 200 echo.
fn who(r: &Resp, weir: &Weir) -> String {
    assert_eq!(
        r.status,
        StatusCode::OK,
        "expected 200, got {} {:?}\n--- stderr ---\n{}",
        r.status,
        r.text(),
        weir.stderr()
    );
    r.seen().backend
}

/// Fresh clients (no cookie) until every backend in `names` has issued a cookie: name → value.
async fn cookies_by_backend(weir: &Weir, names: &[&str]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for _ in 0..100 {
        let r = get(weir, None).await;
        let b = who(&r, weir);
        let v =
            affinity(&r).unwrap_or_else(|| panic!("no affinity cookie on a first visit: {r:?}"));
        if let Some(old) = out.insert(b.clone(), v.clone()) {
            assert_eq!(old, v, "{b} got two different values");
        }
        if names.iter().all(|n| out.contains_key(*n)) {
            return out;
        }
    }
    panic!("not every backend of {names:?} was reached: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_response_sets_the_cookie_with_the_configured_attributes() {
    let a = ControlBackend::start("a").await;
    a.add_response_header("set-cookie", "JSESSIONID=app1; Path=/app; Secure");
    let b = ControlBackend::start("b").await;
    // Pool `p`: defaults plus ttl and domain. Pool `q`: every attribute changed, strip off.
    let yaml = format!(
        "{LISTENER}pools:\n  p:\n    sticky:\n      cookie: {COOKIE}\n      ttl: 1h\n      domain: lb.test\n    servers:\n{}  q:\
           \n    sticky:\n      cookie: other\n      path: /q\n      http_only: false\n      secure: true\n      same_site: Strict\n      strip: false\n    servers:\n{}\
         routes:\n  - name: q\n    match:\n      path_prefix: \"/q\"\n    pool: q\n  - name: all\n    pool: p\n",
        ctl_servers(&[&a]),
        ctl_servers(&[&b])
    );
    let weir = Weir::start(&yaml).await;

    let r = get(&weir, None).await;
    assert_eq!(who(&r, &weir), "a");
    let line = affinity_line(&r).expect("affinity cookie set on the first response");
    let attrs: Vec<&str> = line.split(';').map(str::trim).skip(1).collect();
    for want in [
        "Path=/",
        "Max-Age=3600",
        "HttpOnly",
        "SameSite=Lax",
        "Domain=lb.test",
    ] {
        assert!(attrs.contains(&want), "{want} missing in {line:?}");
    }
    assert!(
        !attrs.contains(&"Secure"),
        "Secure on a plain-HTTP listener: {line:?}"
    );
    assert!(
        set_cookies(&r).contains(&"JSESSIONID=app1; Path=/app; Secure".to_string()),
        "the application's Set-Cookie was altered: {:?}",
        set_cookies(&r)
    );
    assert_eq!(set_cookies(&r).len(), 2, "{:?}", set_cookies(&r));

    // The affinity cookie is stripped from what the server sees; the others are kept, in order.
    let v = affinity(&r).unwrap();
    let r = get(&weir, Some(&format!("x=1; {COOKIE}={v}; JSESSIONID=app1"))).await;
    assert_eq!(who(&r, &weir), "a");
    assert_eq!(
        r.seen().header("cookie").as_deref(),
        Some("x=1; JSESSIONID=app1")
    );
    assert_eq!(affinity(&r), None, "a pinned request re-sets the cookie");
    // Only the affinity cookie: no Cookie header reaches the server at all.
    let r = get_pinned(&weir, &v).await;
    assert!(!r.seen().has("cookie"), "{:?}", r.seen().headers);

    // Every attribute configurable.
    let q = |cookie: Option<String>| {
        let mut b = weir.request("GET", HOST, "/q");
        if let Some(c) = cookie {
            b = b.header("cookie", c);
        }
        b.body(empty()).unwrap()
    };
    let r = weir.send(q(None)).await;
    let line = set_cookies(&r)
        .into_iter()
        .find(|l| l.starts_with("other="))
        .unwrap_or_else(|| panic!("no `other` cookie: {r:?}"));
    let attrs: Vec<&str> = line.split(';').map(str::trim).skip(1).collect();
    assert_eq!(
        attrs,
        ["Path=/q", "Secure", "SameSite=Strict"],
        "{line:?}: no Max-Age, no HttpOnly, no Domain"
    );
    let value = line.split(';').next().unwrap().to_string();
    let r = weir.send(q(Some(value.clone()))).await;
    assert_eq!(who(&r, &weir), "b");
    assert_eq!(r.seen().header("cookie"), Some(value), "strip: false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_the_cookie_all_reach_one_server_and_the_value_is_opaque() {
    let bs = [
        ControlBackend::start("a").await,
        ControlBackend::start("b").await,
        ControlBackend::start("c").await,
    ];
    let weir = Weir::start(&config(
        "round_robin",
        "",
        "",
        &ctl_servers(&[&bs[0], &bs[1], &bs[2]]),
    ))
    .await;
    let values = cookies_by_backend(&weir, &["a", "b", "c"]).await;
    let b = &values["b"];
    for i in 0..200 {
        let r = get_pinned(&weir, b).await;
        assert_eq!(who(&r, &weir), "b", "request {i}");
        assert_eq!(affinity(&r), None, "request {i} re-set the cookie");
    }
    assert_eq!(
        bs[1].requests(),
        200 + 1,
        "b's first visit and the 200 pinned ones"
    );

    // Nothing in a value reveals or encodes the address: not the IP or port in any base, not
    // the address bytes in hex or base64; all values have one length whatever the address.
    let distinct: HashSet<_> = values.values().collect();
    assert_eq!(distinct.len(), 3, "{values:?}");
    for (name, v) in &values {
        let addr = bs.iter().find(|x| &x.name == name).unwrap().addr;
        let port = addr.port();
        let hexes = |bytes: &[u8]| {
            let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            h
        };
        let b64 = base64(addr.to_string().as_bytes());
        let forbidden = [
            addr.to_string(),
            addr.ip().to_string(),
            port.to_string(),
            format!("{port:x}"),
            format!("{port:04x}"),
            hexes(&port.to_be_bytes()),
            hexes(&port.to_le_bytes()),
            hexes(&[127, 0, 0, 1]),
            hexes(addr.to_string().as_bytes()),
            b64[..b64.len().min(8)].to_string(),
        ];
        for f in forbidden {
            assert!(
                !v.to_lowercase().contains(&f.to_lowercase()),
                "value {v} of {name} ({addr}) contains {f:?}"
            );
        }
        assert_eq!(v.len(), 16, "{v}");
        assert!(v.bytes().all(|c| c.is_ascii_hexdigit()), "{v}");
    }
}

/// Standard base64, enough to check a value is not the address in base64.
fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    b.chunks(3)
        .flat_map(|c| {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            (0..=c.len()).map(move |i| A[(n >> (18 - 6 * i) & 63) as usize] as char)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_weir_processes_from_one_config_agree_on_every_cookie() {
    let bs = [
        ControlBackend::start("a").await,
        ControlBackend::start("b").await,
        ControlBackend::start("c").await,
    ];
    for sticky in ["", "      secret: \"s3cr3t-shared\"\n"] {
        let yaml = config(
            "random",
            sticky,
            "",
            &ctl_servers(&[&bs[0], &bs[1], &bs[2]]),
        );
        let one = Weir::start(&yaml).await;
        let two = Weir::start(&yaml).await;
        let from_one = cookies_by_backend(&one, &["a", "b", "c"]).await;
        let from_two = cookies_by_backend(&two, &["a", "b", "c"]).await;
        assert_eq!(
            from_one, from_two,
            "the two processes issue different values"
        );
        for (name, v) in &from_one {
            for _ in 0..5 {
                let r = get_pinned(&two, v).await;
                assert_eq!(who(&r, &two), *name, "a cookie from the first process");
                assert_eq!(affinity(&r), None);
                let r = get_pinned(&one, &from_two[name]).await;
                assert_eq!(who(&r, &one), *name, "a cookie from the second process");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_garbage_and_stale_values_are_treated_as_no_cookie() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    let gone = support::control::closed_port();
    let secret = "correct horse battery staple";
    let weir = Weir::start(&config(
        "round_robin",
        &format!("      secret: \"{secret}\"\n"),
        "",
        &ctl_servers(&[&a, &b]),
    ))
    .await;
    let values = cookies_by_backend(&weir, &["a", "b"]).await;
    assert_eq!(values["a"].len(), 32, "an HMAC value: {values:?}");
    let b_addr = b.addr.to_string();
    // What a client could compute for b without the secret: the unkeyed hash, the HMAC with a
    // guessed key, the address itself; a value of a server no longer in the config (stale); junk.
    let crafted = [
        weir::sticky::server_value("p", &b_addr, None),
        weir::sticky::server_value("p", &b_addr, Some("guess")),
        weir::sticky::server_value("p", &b_addr, Some("")),
        b_addr.clone(),
        weir::sticky::server_value("p", &gone.to_string(), Some(secret)),
        values["b"][..31].to_string(),
        format!("{}0", values["b"]),
        values["b"].to_uppercase(),
        "garbage".to_string(),
        String::new(),
        "%00%ff\"'<>".to_string(),
        "x".repeat(3000),
    ];
    for v in &crafted {
        let mut seen = HashSet::new();
        for i in 0..4 {
            let r = get_pinned(&weir, v).await;
            seen.insert(who(&r, &weir));
            let issued = affinity(&r)
                .unwrap_or_else(|| panic!("value {v:?} (try {i}) was honoured: no new cookie"));
            assert!(
                issued == values["a"] || issued == values["b"],
                "issued {issued} for {v:?}"
            );
        }
        assert_eq!(
            seen.len(),
            2,
            "value {v:?} was not balanced like a first visit (answers {seen:?})"
        );
    }
    // The real value with the cookie in odd but valid places still works.
    let r = get(&weir, Some(&format!("a=1;{COOKIE}={};b=2", values["b"]))).await;
    assert_eq!(who(&r, &weir), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pinned_server_moves_the_user_with_no_failed_request() {
    let bs = [
        ControlBackend::start("a").await,
        ControlBackend::start("b").await,
        ControlBackend::start("c").await,
    ];
    let weir = Weir::start(&config(
        "round_robin",
        "",
        "",
        &ctl_servers(&[&bs[0], &bs[1], &bs[2]]),
    ))
    .await;
    let values = cookies_by_backend(&weir, &["a", "b", "c"]).await;
    // Warm a keep-alive connection to b, then kill it: both the stale pooled connection and the
    // refused new one must be absorbed.
    assert_eq!(who(&get_pinned(&weir, &values["b"]).await, &weir), "b");
    bs[1].stop().await;
    let mut cookie = values["b"].clone();
    let r = get_pinned(&weir, &cookie).await;
    let moved_to = who(&r, &weir);
    assert_ne!(moved_to, "b");
    let reissued = affinity(&r).expect("the cookie is re-issued for the new server");
    assert_eq!(reissued, values[&moved_to]);
    cookie = reissued;
    for i in 0..20 {
        let r = get_pinned(&weir, &cookie).await;
        assert_eq!(who(&r, &weir), moved_to, "request {i} after the move");
        assert_eq!(affinity(&r), None);
    }
    // A client still sending the old value keeps getting a good answer (and the new cookie).
    for _ in 0..5 {
        let r = get_pinned(&weir, &values["b"]).await;
        assert_ne!(who(&r, &weir), "b");
        assert!(affinity(&r).is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_probe_or_ejection_moves_the_user_and_reissues_the_cookie() {
    let bs = [
        ControlBackend::start("a").await,
        ControlBackend::start("b").await,
    ];
    let passive = "    passive:\n      consecutive_failures: 2\n      ejection_time: 30s\n";
    let weir = Weir::start(&config(
        "round_robin",
        "",
        &format!("{FAST_HEALTH}{passive}"),
        &ctl_servers(&[&bs[0], &bs[1]]),
    ))
    .await;
    let values = cookies_by_backend(&weir, &["a", "b"]).await;

    // Health probe fails: every request is answered 200 while the user moves from a to b.
    bs[0].set_health(500);
    let start = Instant::now();
    loop {
        let r = get_pinned(&weir, &values["a"]).await;
        if who(&r, &weir) == "b" {
            assert_eq!(affinity(&r).as_deref(), Some(values["b"].as_str()));
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "a stayed pinned after its probe failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bs[0].set_health(200);
    support::eventually("a back in rotation", WAIT, || async {
        who(&get(&weir, None).await, &weir) == "a"
    })
    .await;
    assert_eq!(who(&get_pinned(&weir, &values["a"]).await, &weir), "a");

    // Ejection (passive): a answers 500 twice and is ejected; its users move to b.
    bs[0].set_status(500);
    for _ in 0..2 {
        let r = get_pinned(&weir, &values["a"]).await;
        assert_eq!(
            r.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "a's own answer"
        );
    }
    let r = get_pinned(&weir, &values["a"]).await;
    assert_eq!(who(&r, &weir), "b", "ejected a still pinned");
    assert_eq!(affinity(&r).as_deref(), Some(values["b"].as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_unavailable_reject_answers_503_instead_of_moving() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    // No active probes: the pinned server's failure is only found by connecting to it; the
    // route's retries must not carry the request to another server.
    let weir = Weir::start(&config(
        "round_robin",
        "      on_unavailable: reject\n",
        "    passive:\n      consecutive_failures: 0\n",
        &ctl_servers(&[&a, &b]),
    ))
    .await;
    let values = cookies_by_backend(&weir, &["a", "b"]).await;
    assert_eq!(who(&get_pinned(&weir, &values["a"]).await, &weir), "a");
    a.stop().await;
    for i in 0..5 {
        let r = get_pinned(&weir, &values["a"]).await;
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "request {i} pinned to a dead server: {} {:?}",
            r.status,
            r.text()
        );
        assert_eq!(affinity(&r), None, "a 503 must not re-pin");
    }
    assert!(weir
        .logs()
        .iter()
        .any(|l| l.contains("status=503") && l.contains("sticky_unavailable")));
    // Others are unaffected: b's holders and new clients get 200 from b.
    assert_eq!(who(&get_pinned(&weir, &values["b"]).await, &weir), "b");
    for _ in 0..4 {
        assert_eq!(who(&get(&weir, None).await, &weir), "b");
    }
    a.restart().await;
    assert_eq!(who(&get_pinned(&weir, &values["a"]).await, &weir), "a");

    // With active probes: the pinned server marked down answers 503 without trying it.
    let weir = Weir::start(&config(
        "round_robin",
        "      on_unavailable: reject\n",
        FAST_HEALTH,
        &ctl_servers(&[&a, &b]),
    ))
    .await;
    a.set_health(500);
    support::eventually("503 for a's holders once a is down", WAIT, || async {
        get_pinned(&weir, &values["a"]).await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let before = a.requests();
    assert_eq!(
        get_pinned(&weir, &values["a"]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(a.requests(), before, "a down server was tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_server_keeps_its_cookie_holders_but_gets_no_new_clients() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    let weir = Weir::start(&config("round_robin", "", "", &ctl_servers(&[&a, &b]))).await;
    let admin = Admin::of(&weir).await;
    let values = cookies_by_backend(&weir, &["a", "b"]).await;
    admin.drain("p", a.addr).await;
    for i in 0..20 {
        let r = get_pinned(&weir, &values["a"]).await;
        assert_eq!(who(&r, &weir), "a", "holder request {i} left draining a");
        assert_eq!(affinity(&r), None);
        let r = get(&weir, None).await;
        assert_eq!(who(&r, &weir), "b", "new client {i} sent to draining a");
        assert_eq!(affinity(&r).as_deref(), Some(values["b"].as_str()));
    }
    admin.enable("p", a.addr).await;
    let seen: HashSet<_> = new_clients(&weir, 4).await;
    assert!(seen.contains("a"), "enabled a gets new clients again");
}

async fn new_clients(weir: &Weir, n: usize) -> HashSet<String> {
    let mut out = HashSet::new();
    for _ in 0..n {
        out.insert(who(&get(weir, None).await, weir));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_ends_a_drain_and_moves_its_holders() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    let weir = Weir::start(&config(
        "round_robin",
        "      drain_timeout: 1s\n",
        "",
        &ctl_servers(&[&a, &b]),
    ))
    .await;
    let admin = Admin::of(&weir).await;
    let values = cookies_by_backend(&weir, &["a", "b"]).await;
    admin.drain("p", a.addr).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = get_pinned(&weir, &values["a"]).await;
    assert_eq!(
        who(&r, &weir),
        "b",
        "a drained past drain_timeout still serves"
    );
    assert_eq!(affinity(&r).as_deref(), Some(values["b"].as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_removed_on_reload_drains_its_sessions_until_the_drain_timeout() {
    let bs = [
        ControlBackend::start("a").await,
        ControlBackend::start("b").await,
        ControlBackend::start("c").await,
    ];
    let all = ctl_servers(&[&bs[0], &bs[1], &bs[2]]);
    let weir = Weir::start(&config("round_robin", "", "", &all)).await;
    let admin = Admin::of(&weir).await;
    let values = cookies_by_backend(&weir, &["a", "b", "c"]).await;

    let without_c = ctl_servers(&[&bs[0], &bs[1]]);
    let before_reload = Instant::now();
    reload(
        &weir,
        &config("round_robin", "      drain_timeout: 4s\n", "", &without_c),
    )
    .await;
    let removed_at = Instant::now();
    let s = admin.server("p", bs[2].addr).await;
    assert_eq!(s["removed"], true, "{s}");
    assert_eq!(s["draining"], true, "{s}");
    for i in 0..10 {
        let r = get(&weir, None).await;
        assert_ne!(who(&r, &weir), "c", "new client {i} sent to removed c");
        if removed_at.elapsed() < Duration::from_secs(3) {
            let r = get_pinned(&weir, &values["c"]).await;
            assert_eq!(who(&r, &weir), "c", "c's holder moved during the drain");
            assert_eq!(affinity(&r), None);
        }
    }
    // Past the drain timeout c's holders move and are re-pinned.
    let start = Instant::now();
    loop {
        let r = get_pinned(&weir, &values["c"]).await;
        let w = who(&r, &weir);
        if w != "c" {
            assert_eq!(affinity(&r).as_deref(), Some(values[&w].as_str()));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "c served past drain_timeout"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(before_reload.elapsed() >= Duration::from_secs(4));
    // The next reload forgets it.
    reload(
        &weir,
        &config("round_robin", "      drain_timeout: 4s\n", "", &without_c),
    )
    .await;
    let st = admin.status().await;
    assert!(
        support::control::find_server(&st, "p", bs[2].addr).is_none(),
        "{st}"
    );
    // Re-adding it makes it a normal server again, with its old value.
    reload(&weir, &config("round_robin", "", "", &all)).await;
    let s = admin.server("p", bs[2].addr).await;
    assert_eq!(s["draining"], false, "{s}");
    assert_eq!(who(&get_pinned(&weir, &values["c"]).await, &weir), "c");
}

/// 100 fresh sessions: (cookie value, backend).
async fn sessions(weir: &Weir, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = get(weir, None).await;
        let b = who(&r, weir);
        out.push((affinity(&r).expect("cookie on a first visit"), b));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_server_moves_no_session_and_removing_one_moves_only_its_own() {
    let bs = [
        ControlBackend::start("a").await,
        ControlBackend::start("b").await,
        ControlBackend::start("c").await,
        ControlBackend::start("d").await,
    ];
    let weir = Weir::start(&config(
        "round_robin",
        "",
        "",
        &ctl_servers(&[&bs[0], &bs[1], &bs[2]]),
    ))
    .await;
    let sessions = sessions(&weir, 100).await;
    let per: HashSet<_> = sessions.iter().map(|(_, b)| b.clone()).collect();
    assert_eq!(per.len(), 3, "sessions should cover every server");

    reload(
        &weir,
        &config(
            "round_robin",
            "",
            "",
            &ctl_servers(&[&bs[0], &bs[1], &bs[2], &bs[3]]),
        ),
    )
    .await;
    let mut moved = 0;
    for (v, b) in &sessions {
        let r = get_pinned(&weir, v).await;
        if who(&r, &weir) != *b || affinity(&r).is_some() {
            moved += 1;
        }
    }
    assert_eq!(moved, 0, "sessions moved when d was added");
    assert!(bs[3].requests() == 0, "d got a pinned session");

    // Remove b (drain_timeout 0s: its sessions move at once).
    reload(
        &weir,
        &config(
            "round_robin",
            "      drain_timeout: 0s\n",
            "",
            &ctl_servers(&[&bs[0], &bs[2], &bs[3]]),
        ),
    )
    .await;
    let (mut kept, mut moved_b) = (0, 0);
    for (v, b) in &sessions {
        let r = get_pinned(&weir, v).await;
        let w = who(&r, &weir);
        if b == "b" {
            assert_ne!(w, "b");
            assert!(affinity(&r).is_some(), "b's session not re-pinned");
            moved_b += 1;
        } else {
            assert_eq!(w, *b, "a session of {b} moved when b was removed");
            assert_eq!(affinity(&r), None);
            kept += 1;
        }
    }
    assert_eq!(kept + moved_b, 100);
    assert!(moved_b > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_hash_pins_the_application_session_and_remaps_about_one_in_n() {
    let bs = [
        ControlBackend::start("a").await,
        ControlBackend::start("b").await,
        ControlBackend::start("c").await,
        ControlBackend::start("d").await,
    ];
    let yaml = |servers: &str| {
        format!(
            "{LISTENER}pools:\n  p:\n    balance: cookie_hash\n    hash_cookie: JSESSIONID\n    servers:\n{servers}\
             routes:\n  - name: all\n    pool: p\n"
        )
    };
    let three = ctl_servers(&[&bs[0], &bs[1], &bs[2]]);
    let weir = Weir::start(&yaml(&three)).await;
    let ids: Vec<String> = (0..300)
        .map(|i| format!("sess-{i:04}-{}", i * 7919))
        .collect();
    let mut first = HashMap::new();
    for id in &ids {
        let r = get(&weir, Some(&format!("JSESSIONID={id}"))).await;
        assert!(set_cookies(&r).is_empty(), "cookie_hash inserts no cookie");
        first.insert(id.clone(), who(&r, &weir));
    }
    // One session stays on one server.
    for _ in 0..20 {
        let r = get(&weir, Some(&format!("x=1; JSESSIONID={}", ids[0]))).await;
        assert_eq!(who(&r, &weir), first[&ids[0]]);
    }
    let spread: HashSet<_> = first.values().collect();
    assert_eq!(spread.len(), 3);

    reload(
        &weir,
        &yaml(&ctl_servers(&[&bs[0], &bs[1], &bs[2], &bs[3]])),
    )
    .await;
    let mut moved = 0;
    for id in &ids {
        let w = who(&get(&weir, Some(&format!("JSESSIONID={id}"))).await, &weir);
        if w != first[id] {
            assert_eq!(w, "d", "session {id} moved between old servers");
            moved += 1;
        }
    }
    // Expected 1/4 of 300 = 75; a generous band around it.
    assert!(
        (30..=130).contains(&moved),
        "{moved} of 300 sessions moved when a 4th server was added"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_over_h2c_and_over_tls_with_h2_and_http1() {
    let a = ControlBackend::start("a").await;
    let b = ControlBackend::start("b").await;
    let (cert, key) = dev_cert_paths();
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n  - name: tls\n    bind: \"127.0.0.1:0\"\n    tls:\n      certificates:\n        - cert: \"{cert}\"\n          key: \"{key}\"\n\
         pools:\n  p:\n    sticky:\n      cookie: {COOKIE}\n    servers:\n{}\
         routes:\n  - name: all\n    pool: p\n",
        ctl_servers(&[&a, &b])
    );
    let weir = Weir::start_with_listeners(&yaml, &["web", "tls"]).await;

    // h2c: HTTP/2 clients may split cookies over several `cookie` fields.
    let h2c = |cookies: &[String]| {
        let mut r = Request::builder().uri(format!("http://{HOST}/"));
        for c in cookies {
            r = r.header("cookie", c.as_str());
        }
        r.body(empty()).unwrap()
    };
    let r = support::h2c_send(weir.addr(), h2c(&[])).await.unwrap();
    assert_eq!(r.version, http::Version::HTTP_2);
    let first = who(&r, &weir);
    let line = affinity_line(&r).expect("cookie over h2c");
    assert!(!line.contains("Secure"), "{line}");
    let v = affinity(&r).unwrap();
    for _ in 0..10 {
        let r = support::h2c_send(
            weir.addr(),
            h2c(&["app=1".into(), format!("{COOKIE}={v}"), "z=2".into()]),
        )
        .await
        .unwrap();
        assert_eq!(who(&r, &weir), first);
        assert_eq!(affinity(&r), None);
        let seen = r.seen().headers.get("cookie").cloned().unwrap_or_default();
        assert!(
            !seen.join(";").contains(COOKIE) && seen.join("; ").contains("app=1"),
            "server saw cookies {seen:?}"
        );
    }

    // TLS with ALPN h2 and http/1.1: the cookie is Secure, and pins across both protocols.
    let tls = weir.addr_of("tls");
    let req = |cookie: Option<&str>| {
        let mut r = Request::builder().uri("https://localhost/");
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.body(empty()).unwrap()
    };
    for alpn in ["h2", "http/1.1"] {
        let r = tls_send(tls, alpn, req(None)).await.unwrap();
        let got = who(&r, &weir);
        let line = affinity_line(&r).unwrap_or_else(|| panic!("no cookie over TLS {alpn}"));
        assert!(line.contains("; Secure"), "{alpn}: {line}");
        let v = affinity(&r).unwrap();
        for other in ["h2", "http/1.1"] {
            for _ in 0..5 {
                let r = tls_send(tls, other, req(Some(&format!("{COOKIE}={v}"))))
                    .await
                    .unwrap();
                assert_eq!(who(&r, &weir), got, "cookie from {alpn} used over {other}");
                assert_eq!(affinity(&r), None);
                assert!(!r.seen().has("cookie"));
            }
        }
    }
}

#[test]
fn check_reports_a_bad_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\npools:\n  p:\n    sticky:\n      cookie: s\n      drain_timeout: 10\n    servers:\n      - address: \"127.0.0.1:1\"\nroutes:\n  - name: all\n    pool: p\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("weir.yaml:8:") && text.contains("sticky.drain_timeout"),
        "{text}"
    );
}
