//! Balancing: round robin evenness, weights, random, load-aware picks away from a slow server,
//! and the two hashes (ip_hash stability, header_hash stability, spread and minimal remapping).

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::config::single_pool;
use support::{empty, servers, weighted_servers, Backend, Weir};

/// Sends `n` GETs with `concurrency` workers; `header(i)` optionally adds one header to request i.
/// Returns the backend that answered each request, by index.
async fn spread(
    weir: &Weir,
    n: usize,
    concurrency: usize,
    header: impl Fn(usize) -> Option<(String, String)> + Send + Sync + 'static,
) -> Vec<String> {
    let header = std::sync::Arc::new(header);
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let client = weir.client();
        let url = weir.url("/");
        let header = header.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = w;
            while i < n {
                let mut req = http::Request::builder().uri(&url).header("host", "lb.test");
                if let Some((k, v)) = header(i) {
                    req = req.header(k, v);
                }
                let resp = support::send(&client, req.body(empty()).unwrap()).await;
                out.push((i, resp.backend()));
                i += concurrency;
            }
            out
        }));
    }
    let mut result = vec![String::new(); n];
    for t in tasks {
        for (i, b) in t.await.expect("worker panicked") {
            result[i] = b;
        }
    }
    result
}

fn count(picks: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for p in picks {
        *m.entry(p.clone()).or_insert(0) += 1;
    }
    m
}

fn get(m: &HashMap<String, usize>, k: &str) -> usize {
    m.get(k).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_even() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let weir = Weir::start(&single_pool("round_robin", "", &servers(&[&a, &b, &c]))).await;
    let counts = count(&spread(&weir, 300, 1, |_| None).await);
    for name in ["a", "b", "c"] {
        let n = get(&counts, name);
        assert!((97..=103).contains(&n), "round robin over 3: {counts:?}");
    }
    // Sequential requests rotate: no server answers twice in a row.
    let picks = spread(&weir, 30, 1, |_| None).await;
    for w in picks.windows(2) {
        assert_ne!(w[0], w[1], "round robin repeated a server: {picks:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_honours_weights() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let weir = Weir::start(&single_pool(
        "round_robin",
        "",
        &weighted_servers(&[(&a, 1), (&b, 3)]),
    ))
    .await;
    let counts = count(&spread(&weir, 400, 4, |_| None).await);
    let (na, nb) = (get(&counts, "a"), get(&counts, "b"));
    assert!(
        (85..=115).contains(&na),
        "weights 1:3 over 400 requests: {counts:?}"
    );
    assert_eq!(na + nb, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_honours_weights() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let weir = Weir::start(&single_pool(
        "random",
        "",
        &weighted_servers(&[(&a, 1), (&b, 3)]),
    ))
    .await;
    let picks = spread(&weir, 800, 4, |_| None).await;
    let counts = count(&picks);
    eprintln!("random 1:3: {counts:?}");
    // Expected 200 : 600; one standard deviation is about 12, so this is a ±5σ band.
    let na = get(&counts, "a");
    assert!(
        (140..=260).contains(&na),
        "random with weights 1:3 over 800: {counts:?}"
    );
    assert_eq!(na + get(&counts, "b"), 800);
}

/// With `concurrency` clients in flight, the 200 ms server must get clearly fewer requests than
/// its equal share (a third, what round robin or random would give it).
async fn steers_away_from_slow(balance: &str) {
    let slow = Backend::builder("slow")
        .delay(Duration::from_millis(200))
        .start()
        .await;
    let (f1, f2) = (Backend::start("fast1").await, Backend::start("fast2").await);
    let weir = Weir::start(&single_pool(balance, "", &servers(&[&slow, &f1, &f2]))).await;
    let total = 240;
    let counts = count(&spread(&weir, total, 8, |_| None).await);
    let n_slow = get(&counts, "slow");
    eprintln!("{balance}: {counts:?}");
    assert!(
        n_slow < total / 5,
        "{balance}: the slow server got {n_slow} of {total} (a third would be {}): {counts:?}",
        total / 3
    );
    assert!(
        get(&counts, "fast1") > 0 && get(&counts, "fast2") > 0,
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_avoids_slow_server() {
    steers_away_from_slow("least_request").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_of_two_avoids_slow_server() {
    steers_away_from_slow("power_of_two").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_is_stable() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let weir = Weir::start(&single_pool("ip_hash", "", &servers(&[&a, &b, &c]))).await;
    let mut all = spread(&weir, 60, 4, |_| None).await;
    // Fresh connections (new source ports) from the same address land on the same server.
    for _ in 0..5 {
        all.push(get_from(&weir, [127, 0, 0, 1]).await);
    }
    let counts = count(&all);
    assert_eq!(
        counts.len(),
        1,
        "every request from 127.0.0.1 should reach one server: {counts:?}"
    );
}

/// One GET from a client bound to the loopback address `ip`, on a fresh connection.
async fn get_from(weir: &Weir, ip: [u8; 4]) -> String {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(Some(std::net::IpAddr::from(ip)));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector);
    let req = http::Request::builder()
        .uri(weir.url("/"))
        .body(empty())
        .unwrap();
    let resp = support::send(&client, req).await;
    let seen = resp.seen();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some(std::net::IpAddr::from(ip).to_string()),
        "sanity: the request came from {ip:?}"
    );
    seen.backend
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_hash_spreads_client_addresses_and_keeps_each_on_one_server() {
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    let weir = Weir::start(&single_pool("ip_hash", "", &servers(&[&a, &b, &c]))).await;
    // All of 127.0.0.0/8 is loopback on Linux: 40 client addresses.
    let mut first = HashMap::new();
    for i in 2..42u8 {
        let ip = [127, 0, 0, i];
        let picked = get_from(&weir, ip).await;
        for _ in 0..2 {
            assert_eq!(
                get_from(&weir, ip).await,
                picked,
                "127.0.0.{i} moved between servers"
            );
        }
        first.insert(i, picked);
    }
    let counts = count(&first.into_values().collect::<Vec<_>>());
    assert_eq!(
        counts.len(),
        3,
        "40 client addresses should reach all 3 servers: {counts:?}"
    );
}

/// Maps each of `keys` to the backend that answered `x-user: key`.
async fn assign(weir: &Weir, keys: usize) -> Vec<String> {
    spread(weir, keys, 8, |i| {
        Some(("x-user".into(), format!("user-{i}")))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_hash_is_stable_spread_and_consistent() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        Backend::start("d").await,
    ];
    let all: Vec<&Backend> = backends.iter().collect();
    let hash = "    hash_header: x-user\n";
    let weir4 = Weir::start(&single_pool("header_hash", hash, &servers(&all))).await;

    let keys = 1000;
    let first = assign(&weir4, keys).await;
    let again = assign(&weir4, keys).await;
    assert_eq!(
        first, again,
        "the same key must always land on the same server"
    );

    let counts = count(&first);
    for b in &backends {
        let n = get(&counts, &b.name);
        assert!(
            (150..=350).contains(&n),
            "1000 keys over 4 servers should spread: {counts:?}"
        );
    }

    // Remove one server (not the last one listed): only its keys may move.
    let removed = "b";
    let three: Vec<&Backend> = backends.iter().filter(|b| b.name != removed).collect();
    let weir3 = Weir::start(&single_pool("header_hash", hash, &servers(&three))).await;
    let after = assign(&weir3, keys).await;
    assert!(after.iter().all(|b| b != removed));

    let stayed_eligible = first.iter().filter(|b| *b != removed).count();
    let moved_eligible = first
        .iter()
        .zip(&after)
        .filter(|(x, y)| *x != removed && x != y)
        .count();
    let moved = first.iter().zip(&after).filter(|(x, y)| x != y).count();
    eprintln!("header_hash: spread {counts:?}, moved {moved} ({moved_eligible} of {stayed_eligible} on remaining servers)");
    assert!(
        moved_eligible * 100 <= stayed_eligible * 5,
        "{moved_eligible} of {stayed_eligible} keys on the remaining servers moved (≤ 5% allowed)"
    );
    assert!(
        (150..=350).contains(&moved),
        "removing one of four servers should move about a quarter of 1000 keys; moved {moved}"
    );
}
