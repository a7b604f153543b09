//! Reload under load: while clients keep a steady stream of requests running (keep-alive and a new
//! connection per request), the configuration is reloaded 50 times with SIGHUP, adding and removing
//! routes, changing a pool's servers and adding and removing a listener. Not one request may fail
//! and not one connection may be refused; slow requests started before a reload finish normally on
//! the route they started with, even when the reload removes that route.

mod support;

use std::time::{Duration, Instant};

use support::load::Load;
use support::{empty, servers, Backend, Weir};

const RELOADS: usize = 50;

/// Reload `i`'s config: the pool `p` cycles through {a}, {a, b}, {b}; even configs have the slow
/// route and the `extra` route, odd ones have neither and add a second listener.
fn config(i: usize, a: &Backend, b: &Backend, slow: &Backend) -> String {
    let p_servers = match i % 3 {
        0 => servers(&[a]),
        1 => servers(&[a, b]),
        _ => servers(&[b]),
    };
    let even = i % 2 == 0;
    let mut y = String::from("listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n");
    if !even {
        y.push_str("  - name: extra\n    bind: \"127.0.0.1:0\"\n");
    }
    y.push_str(&format!(
        "pools:\n  p:\n    balance: round_robin\n    servers:\n{p_servers}  s:\n    balance: round_robin\n    servers:\n{}",
        servers(&[slow])
    ));
    y.push_str("routes:\n");
    if even {
        y.push_str("  - name: slow\n    match:\n      path_prefix: \"/slow\"\n    pool: s\n");
        y.push_str("  - name: extra\n    match:\n      path_prefix: \"/extra\"\n    pool: p\n");
    }
    y.push_str("  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n");
    y
}

fn reloaded(weir: &Weir) -> usize {
    weir.logs()
        .iter()
        .filter(|l| l.contains("configuration reloaded"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_lose_nothing() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let slow = Backend::builder("slow")
        .delay(Duration::from_secs(1))
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weir.yaml");
    std::fs::write(&path, config(0, &a, &b, &slow)).unwrap();
    // The access log goes to a file: thousands of lines on stderr would only slow the log scans.
    let access = dir.path().join("access.log");
    let weir =
        Weir::start_path_args(&path, &["web"], &["--access-log", access.to_str().unwrap()]).await;
    let addr = weir.addr();

    let load = Load::start(addr, "/", 3, 3);
    let started = Instant::now();
    let mut slow_requests = Vec::new();
    for i in 1..=RELOADS {
        if i % 2 == 1 {
            // The running config (even) has the slow route; the next one (odd) removes it.
            let client = weir.client();
            let req = weir.request("GET", "h", "/slow").body(empty()).unwrap();
            let before = slow.requests();
            slow_requests.push(tokio::spawn(async move {
                support::try_send(&client, req).await
            }));
            support::eventually(
                "the slow request to reach its backend",
                Duration::from_secs(10),
                || async { slow.requests() > before },
            )
            .await;
        }
        std::fs::write(&path, config(i, &a, &b, &slow)).unwrap();
        weir.signal("HUP");
        support::eventually(
            "the reload to complete",
            Duration::from_secs(15),
            || async { reloaded(&weir) >= i },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The last config is even: /slow routes to the slow pool again; odd ones sent it to `p`.
    let mut slow_ok = 0;
    for t in slow_requests {
        let r = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("slow request finished")
            .expect("task")
            .unwrap_or_else(|e| {
                panic!(
                    "slow request failed across a reload: {e}\n{}",
                    weir.stderr()
                )
            });
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.seen().backend,
            "slow",
            "the slow request kept its old route"
        );
        slow_ok += 1;
    }
    let stats = load.stop().await;
    let took = started.elapsed();
    println!(
        "reload under load: {RELOADS} reloads in {took:?}; {} requests ok, {} failed, {} refused, \
         {} connections opened; {slow_ok} slow requests across reloads ok",
        stats.ok, stats.failed, stats.refused, stats.connections
    );
    assert!(
        weir.logs().iter().all(|l| !l.contains("reload rejected")),
        "{}",
        weir.stderr()
    );
    assert_eq!(
        (stats.failed, stats.refused),
        (0, 0),
        "failures during reloads: {:?}",
        stats.examples
    );
    assert!(stats.ok > 100, "the load ran: {stats:?}");
    assert!(took < Duration::from_secs(60), "bounded: took {took:?}");
    // The `extra` listener was bound by each odd config and closed by each even one.
    let count = |needle: &str| {
        weir.logs()
            .iter()
            .filter(|l| l.contains(needle) && l.contains("extra"))
            .count()
    };
    assert_eq!(count("listening"), RELOADS / 2, "{}", weir.stderr());
    assert_eq!(count("listener closed"), RELOADS / 2, "{}", weir.stderr());
    // Both servers of `p` answered at some point, so the server changes were applied.
    assert!(a.requests() > 0 && b.requests() > 0);
}
