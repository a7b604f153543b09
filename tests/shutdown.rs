//! Graceful shutdown: SIGTERM stops accepting, lets in-flight requests finish and exits 0;
//! `shutdown_timeout` bounds the wait; SIGINT drains too.

mod support;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use http::StatusCode;
use support::config::LISTENER;
use support::{empty, eventually, servers, Backend, Weir};

fn config(backend: &Backend, shutdown_timeout: Option<&str>) -> String {
    let timeout = shutdown_timeout
        .map(|t| format!("shutdown_timeout: {t}\n"))
        .unwrap_or_default();
    format!(
        "{LISTENER}pools:\n  p:\n    balance: round_robin\n    servers:\n{}\
         routes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n{timeout}",
        servers(&[backend])
    )
}

/// Starts one GET in the background and waits until the backend has it.
async fn in_flight(
    weir: &Weir,
    backend: &Backend,
) -> tokio::task::JoinHandle<Result<support::Resp, String>> {
    let client = weir.client();
    let req = weir.request("GET", "h", "/slow").body(empty()).unwrap();
    let task = tokio::spawn(async move { support::try_send(&client, req).await });
    eventually(
        "the request to reach the backend",
        Duration::from_secs(10),
        || async { backend.requests() >= 1 },
    )
    .await;
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_then_exits_0() {
    // 2 s rather than 1 s leaves room to observe the refusal while the request is in flight.
    let slow = Backend::builder("slow")
        .delay(Duration::from_secs(2))
        .start()
        .await;
    let mut weir = Weir::start(&config(&slow, None)).await;
    let addr = weir.addr();
    let task = in_flight(&weir, &slow).await;

    let signalled = Instant::now();
    weir.signal("TERM");

    // New connections are refused once weir has stopped accepting.
    let mut refused = false;
    while signalled.elapsed() < Duration::from_secs(5) {
        match tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionRefused => {
                refused = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let still_in_flight = !task.is_finished();
    assert!(
        refused,
        "new connections were still accepted 5 s after SIGTERM\n{}",
        weir.stderr()
    );
    assert!(
        still_in_flight,
        "the in-flight request ended before weir stopped accepting\n{}",
        weir.stderr()
    );

    let resp = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("in-flight request finished")
        .expect("task")
        .unwrap_or_else(|e| {
            panic!(
                "in-flight request failed during drain: {e}\n{}",
                weir.stderr()
            )
        });
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.seen().backend, "slow");

    // Well within the default 30 s shutdown_timeout.
    let status = weir
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("weir still running 10 s after draining\n{}", weir.stderr()));
    assert!(
        status.success(),
        "weir exited with {status}\n{}",
        weir.stderr()
    );
    assert!(signalled.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_bounds_the_drain() {
    let stuck = Backend::builder("stuck")
        .delay(Duration::from_secs(10))
        .start()
        .await;
    let mut weir = Weir::start(&config(&stuck, Some("1s"))).await;
    let _task = in_flight(&weir, &stuck).await;

    let signalled = Instant::now();
    weir.signal("TERM");
    let status = weir
        .wait_exit(Duration::from_secs(8))
        .await
        .unwrap_or_else(|| {
            panic!(
                "weir still running 8 s after SIGTERM with shutdown_timeout 1s\n{}",
                weir.stderr()
            )
        });
    let took = signalled.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "weir took {took:?} to exit with shutdown_timeout 1s"
    );
    assert!(
        status.success(),
        "weir exited with {status}\n{}",
        weir.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_when_idle_exits_0() {
    let backend = Backend::start("idle").await;
    let mut weir = Weir::start(&config(&backend, None)).await;
    assert_eq!(weir.get("h", "/").await.backend(), "idle");
    weir.signal("INT");
    let status = weir
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| {
            panic!(
                "weir still running 10 s after SIGINT while idle\n{}",
                weir.stderr()
            )
        });
    assert!(
        status.success(),
        "weir exited with {status}\n{}",
        weir.stderr()
    );
}
