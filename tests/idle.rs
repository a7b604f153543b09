//! Idle keep-alive connections are parked: weir drops hyper's per-connection state once a client
//! goes quiet and rebuilds it when the client sends again. Every case here checks, over real
//! sockets, that a parked connection loses nothing (the next request, a body, a pipelined pair,
//! blank lines between requests, TLS), still obeys `idle_timeout` and drains, does not spin while
//! parked, and really is small.

mod support;

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use support::config::LISTENER;
use support::rawconn::RawConn;
use support::recorder::Recorder;
use support::tls_client::{dev_cert_paths, tls_connect};
use support::Weir;

fn config(rec: &Recorder, listener_extra: &str) -> String {
    format!(
        "{LISTENER}{listener_extra}pools:\n  p:\n    balance: round_robin\n    servers:\n      - address: \"{}\"\n\
         routes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n",
        rec.addr
    )
}

/// Long enough for a connection to park (it parks as soon as it is idle, the first time).
const PAUSE: Duration = Duration::from_millis(150);

async fn get(c: &mut RawConn, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(
        c.send(req.as_bytes()).await,
        "connection closed before {path}"
    );
    let r = c.response(false).await;
    assert_eq!(r.status, 200, "{path}: {:?}", r.text());
    r.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connection_serves_every_kind_of_request_again() {
    let rec = Recorder::start().await;
    let weir = Weir::start(&config(&rec, "")).await;
    let mut c = RawConn::connect(weir.addr()).await;
    assert_eq!(get(&mut c, "/one").await, "ok GET /one HTTP/1.1");
    tokio::time::sleep(PAUSE).await;
    assert_eq!(get(&mut c, "/two").await, "ok GET /two HTTP/1.1");
    tokio::time::sleep(PAUSE).await;
    // A body with a length, then one chunked, each after a pause.
    c.send(b"POST /len HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    assert_eq!(c.response(false).await.text(), "ok POST /len HTTP/1.1");
    tokio::time::sleep(PAUSE).await;
    c.send(b"POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.text(), "ok POST /chunked HTTP/1.1");
    tokio::time::sleep(PAUSE).await;
    // Two requests in one write, after a pause.
    c.send(b"GET /p1 HTTP/1.1\r\nHost: h\r\n\r\nGET /p2 HTTP/1.1\r\nHost: h\r\n\r\n")
        .await;
    assert_eq!(c.response(false).await.text(), "ok GET /p1 HTTP/1.1");
    assert_eq!(c.response(false).await.text(), "ok GET /p2 HTTP/1.1");
    tokio::time::sleep(PAUSE).await;
    // A head that arrives in two pieces with a pause between them (a begun head never parks).
    c.send(b"GET /split HTTP/1.1\r\n").await;
    tokio::time::sleep(PAUSE).await;
    c.send(b"Host: h\r\n\r\n").await;
    assert_eq!(c.response(false).await.text(), "ok GET /split HTTP/1.1");
    let bodies: Vec<_> = rec.requests().iter().map(|r| r.body.clone()).collect();
    assert_eq!(bodies[2], b"hello");
    assert_eq!(bodies[3], b"abc");
    assert_eq!(rec.requests().len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blank_lines_left_behind_do_not_spin_or_break_the_next_request() {
    let rec = Recorder::start().await;
    let weir = Weir::start(&config(&rec, "")).await;
    let mut c = RawConn::connect(weir.addr()).await;
    // Some old clients send CRLF after a body: bytes hyper holds that are no request.
    c.send(b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nx\r\n")
        .await;
    assert_eq!(c.response(false).await.text(), "ok POST /a HTTP/1.1");
    let cpu = || weir.cpu_seconds();
    let (before, start) = (cpu(), Instant::now());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let used = cpu() - before;
    let wall = start.elapsed().as_secs_f64();
    // A parked connection that kept waking itself would burn a core: ~`wall` seconds.
    assert!(used < wall / 3.0, "{used:.2}s of CPU in {wall:.2}s idle");
    assert_eq!(get(&mut c, "/b").await, "ok GET /b HTTP/1.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connection_gets_idle_timeout_and_drain() {
    let rec = Recorder::start().await;
    let weir = Weir::start(&config(&rec, "    idle_timeout: 600ms\n")).await;
    let mut c = RawConn::connect(weir.addr()).await;
    get(&mut c, "/one").await;
    let start = Instant::now();
    assert!(c.closed_within(Duration::from_secs(10)).await);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(500),
        "closed after {waited:?}"
    );
    // A connection that came back quickly (so parks only after a second idle) times out too.
    let mut c = RawConn::connect(weir.addr()).await;
    get(&mut c, "/a").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    get(&mut c, "/b").await;
    assert!(c.closed_within(Duration::from_secs(10)).await);

    let mut weir = Weir::start(&config(&rec, "")).await;
    let mut c = RawConn::connect(weir.addr()).await;
    get(&mut c, "/one").await;
    tokio::time::sleep(PAUSE).await;
    weir.signal("TERM");
    assert!(
        c.closed_within(Duration::from_secs(10)).await,
        "parked connection kept open by a drain"
    );
    let exit = weir.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_tls_connection_serves_again() {
    let rec = Recorder::start().await;
    let (cert, key) = dev_cert_paths();
    let tls = format!(
        "    tls:\n      certificates:\n        - cert: \"{cert}\"\n          key: \"{key}\"\n"
    );
    let weir = Weir::start(&config(&rec, &tls)).await;
    let stream = tls_connect(weir.addr(), "localhost", "http/1.1")
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = http::Request::get(format!("/tls{i}"))
            .header("host", "localhost")
            .body(support::empty())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), send.send_request(req))
            .await
            .expect("no response within 10s")
            .expect("request failed on the kept-alive TLS connection");
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("ok GET /tls{i} HTTP/1.1").as_bytes());
        tokio::time::sleep(PAUSE).await;
    }
    assert_eq!(rec.connections(), 1, "the server connection was not reused");
}

/// Not a speed target: a bound far above what weir needs (about 1 KB each), far below what an
/// unparked connection costs (about 30 KB), so that a change that stops parking fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_small() {
    const N: usize = 300;
    let rec = Recorder::start().await;
    let weir = Weir::start(&config(&rec, "")).await;
    // Warm up (the server connection, the allocator), then measure.
    let mut warm = RawConn::connect(weir.addr()).await;
    get(&mut warm, "/warm").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = weir.proc_status_kib("VmRSS");
    let mut conns = Vec::with_capacity(N);
    for i in 0..N {
        let mut c = RawConn::connect(weir.addr()).await;
        get(&mut c, &format!("/{i}")).await;
        conns.push(c);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = weir.proc_status_kib("VmRSS");
    let per_conn = (after.saturating_sub(before) * 1024) as usize / N;
    assert!(per_conn < 12 * 1024, "{per_conn} bytes per idle connection");
    // And every one of them still works.
    for (i, c) in conns.iter_mut().enumerate().step_by(50) {
        assert_eq!(
            get(c, &format!("/again{i}")).await,
            format!("ok GET /again{i} HTTP/1.1")
        );
    }
}
