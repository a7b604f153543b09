//! What clients see when things go wrong: 502, 503, 504, 400, 431; short plain-text bodies; every
//! error in the access log.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::config::{single_pool, LISTENER};
use support::{eventually, raw_request, servers, Backend, Resp, Weir};

/// A weir-generated error: the status, a short plain-text body, no internals named.
fn assert_plain_error(resp: &Resp, status: StatusCode, internals: &[&str]) {
    assert_eq!(resp.status, status, "body {:?}", resp.text());
    let body = resp.text();
    assert!(body.len() < 256, "error body should be short: {body:?}");
    let ctype = resp.header("content-type").unwrap_or_default();
    assert!(
        body.is_empty() || ctype.starts_with("text/plain"),
        "error body should be plain text, content-type {ctype:?}"
    );
    for s in internals {
        assert!(!body.contains(s), "error body {body:?} names {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_is_502() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let yaml = format!(
        "{LISTENER}pools:\n  deadpool:\n    balance: round_robin\n    servers:\n      - address: \"{dead}\"\n\
         routes:\n  - name: deadroute\n    match:\n      path_prefix: \"/\"\n    pool: deadpool\n"
    );
    let weir = Weir::start(&yaml).await;
    let resp = weir.get("h", "/x").await;
    assert_plain_error(
        &resp,
        StatusCode::BAD_GATEWAY,
        &["deadpool", "deadroute", &dead.to_string()],
    );
    weir.expect_access_log(502, Some("deadroute")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_server_is_504_after_route_timeout() {
    let never = Backend::builder("never")
        .delay(Duration::from_secs(3600))
        .start()
        .await;
    let yaml = format!(
        "{LISTENER}pools:\n  p:\n    balance: round_robin\n    servers:\n{}\
         routes:\n  - name: hurry\n    match:\n      path_prefix: \"/\"\n    pool: p\n    timeout: 300ms\n",
        servers(&[&never])
    );
    let weir = Weir::start(&yaml).await;
    let start = Instant::now();
    let resp = weir.get("h", "/").await;
    let took = start.elapsed();
    assert_plain_error(
        &resp,
        StatusCode::GATEWAY_TIMEOUT,
        &["hurry", &never.addr.to_string()],
    );
    // Generous bound: only shows the 300ms route timeout applied, not the 60s default.
    assert!(took < Duration::from_secs(10), "504 took {took:?}");
    assert!(never.requests() >= 1);
    weir.expect_access_log(504, Some("hurry")).await;
}

/// The response-head timer is kept on the upstream connection from one request to the next
/// (`pool::h1`): a later request on the same connection moves it later (a shorter route's
/// deadline still fires) and earlier (a longer one's first deadline must not cut the next).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_upstream_connection_keeps_each_requests_own_deadline() {
    let b = Backend::start("b").await;
    let yaml = format!(
        "{LISTENER}pools:\n  p:\n    balance: round_robin\n    servers:\n{}\
         routes:\n  - name: hurry\n    match:\n      path_prefix: \"/hurry\"\n    pool: p\n    timeout: 300ms\n\
         \x20 - name: patient\n    match:\n      path_prefix: \"/\"\n    pool: p\n    timeout: 3s\n",
        servers(&[&b])
    );
    let weir = Weir::start(&yaml).await;

    // Each pair must go over one upstream connection to test anything, and weir gives a connection
    // back to its pool only once it has sent the response on: a client that asks again at once
    // can beat that and get a new connection. The statuses must be right every time; a pair that
    // did not share its connection is tried again, a few times.
    let mut shared = [false; 2];
    for _ in 0..4 {
        // Two answers back to back, the second later than the first's deadline: armed at +3 s,
        // moved to +4.8 s when the second request takes the connection at +1.8 s.
        assert_eq!(
            weir.get("h", "/a?delay_ms=1800").await.status,
            StatusCode::OK
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = b.connections();
        let resp = weir.get("h", "/b?delay_ms=2000").await;
        assert_eq!(resp.status, StatusCode::OK, "body {:?}", resp.text());
        // No new connection: the pool's most recently used one (LIFO), which was /a's.
        shared[0] |= b.connections() == before;

        // A 300 ms route after a 3 s one on one connection: its deadline comes first, and fires.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(weir.get("h", "/c").await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = b.connections();
        let start = Instant::now();
        let resp = weir.get("h", "/hurry?delay_ms=4000").await;
        assert_plain_error(&resp, StatusCode::GATEWAY_TIMEOUT, &["hurry"]);
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "504 took {:?}",
            start.elapsed()
        );
        shared[1] |= b.connections() == before;
        if shared == [true, true] {
            return;
        }
    }
    panic!("the requests never shared an upstream connection: {shared:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_server_is_503() {
    let sick = Backend::builder("sick").health_status(500).start().await;
    let well = Backend::start("well").await;
    let health = |healthy_after: &str| {
        format!(
            "    health:\n      path: /healthz\n      interval: 200ms\n      timeout: 150ms\n      unhealthy_after: 1\n{healthy_after}      initial: unhealthy\n"
        )
    };
    let yaml = format!(
        "{LISTENER}pools:\n  sickpool:\n    balance: round_robin\n    servers:\n{}{}\
         \x20 up:\n    balance: round_robin\n    servers:\n{}{}\
         routes:\n  - name: up\n    match:\n      path_prefix: \"/up\"\n    pool: up\n\
         \x20 - name: sickroute\n    match:\n      path_prefix: \"/\"\n    pool: sickpool\n",
        servers(&[&sick]),
        health(""),
        servers(&[&well]),
        health("      healthy_after: 1\n"),
    );
    let weir = Weir::start(&yaml).await;

    // Probes run: the healthy pool comes up...
    eventually(
        "pool `up` to turn healthy",
        Duration::from_secs(10),
        || async { weir.get("h", "/up").await.status == StatusCode::OK },
    )
    .await;
    assert!(well.health_checks() >= 1);
    // ...and the failing one, probed by now, stays down.
    eventually(
        "a probe of the sick server",
        Duration::from_secs(10),
        || async { sick.health_checks() >= 1 },
    )
    .await;
    let resp = weir.get("h", "/x").await;
    assert_plain_error(
        &resp,
        StatusCode::SERVICE_UNAVAILABLE,
        &["sickpool", "sickroute", &sick.addr.to_string()],
    );
    assert_eq!(
        sick.requests(),
        0,
        "no request may reach a server marked down"
    );
    weir.expect_access_log(503, Some("sickroute")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_retry_on_another_server() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let live = Backend::start("live").await;
    let yaml = format!(
        "{LISTENER}pools:\n  p:\n    balance: round_robin\n    servers:\n      - address: \"{dead}\"\n{}\
         routes:\n  - name: retry\n    match:\n      path_prefix: \"/\"\n    pool: p\n    retries: 1\n",
        servers(&[&live])
    );
    let weir = Weir::start(&yaml).await;
    // Round robin sends every other first attempt to the dead server; the retry rescues it.
    for i in 0..10 {
        let resp = weir.get("h", &format!("/{i}")).await;
        assert_eq!(resp.status, StatusCode::OK, "GET {i}: {}", resp.text());
        assert_eq!(resp.seen().backend, "live");
    }
}

async fn one_backend() -> (Backend, Weir) {
    let backend = Backend::start("echo").await;
    let weir = Weir::start(&single_pool("round_robin", "", &servers(&[&backend]))).await;
    (backend, weir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_is_400_and_closed() {
    let (backend, weir) = one_backend().await;
    let resp = raw_request(weir.addr(), b"THIS IS NOT HTTP\r\n\r\n".to_vec(), true).await;
    assert_eq!(resp.status, 400, "raw response: {:?}", resp.raw);
    assert!(resp.body.len() < 256);
    assert_eq!(
        resp.closed,
        Some(true),
        "connection should be closed after a 400"
    );

    let resp = raw_request(
        weir.addr(),
        b"GET /\x01bad HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
        true,
    )
    .await;
    assert_eq!(resp.status, 400, "control byte in target: {:?}", resp.raw);
    assert_eq!(resp.closed, Some(true));

    // The asterisk form belongs to OPTIONS alone; `GET *` never reaches a server.
    let resp = raw_request(
        weir.addr(),
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(),
        true,
    )
    .await;
    assert_eq!(resp.status, 400, "GET *: {:?}", resp.raw);
    assert_eq!(backend.requests(), 0);
}

/// A reverse proxy is not a tunnel: `CONNECT` gets 405 and a closed connection, in either target
/// form and over HTTP/2 (plain, or RFC 8441's with a `:protocol` other than the WebSocket that
/// `websocket_h2` covers), and nothing reaches a server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_405_and_reaches_no_server() {
    let (backend, weir) = one_backend().await;
    for request in [
        &b"CONNECT internal.example:443 HTTP/1.1\r\nHost: internal.example:443\r\n\r\n"[..],
        &b"CONNECT / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
    ] {
        let resp = raw_request(weir.addr(), request.to_vec(), true).await;
        assert_eq!(resp.status, 405, "raw response: {:?}", resp.raw);
        assert_eq!(resp.closed, Some(true), "{:?}", resp.raw);
        assert_eq!(resp.text(), "405 Method Not Allowed\n");
    }

    let tcp = tokio::net::TcpStream::connect(weir.addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("internal.example:443")
        .body(())
        .unwrap();
    let mut client = client.ready().await.expect("h2 ready");
    let (resp, _stream) = client.send_request(req, true).expect("CONNECT sent");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer to the h2 CONNECT")
        .expect("a response, not a reset");
    assert_eq!(resp.status(), 405);

    // An extended CONNECT for anything but a WebSocket is a tunnel too.
    support::eventually(
        "SETTINGS_ENABLE_CONNECT_PROTOCOL from weir",
        Duration::from_secs(10),
        || {
            let on = client.is_extended_connect_protocol_enabled();
            async move { on }
        },
    )
    .await;
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("http://{}/udp", weir.addr()))
        .extension(h2::ext::Protocol::from("connect-udp"))
        .body(())
        .unwrap();
    let (resp, _stream) = client
        .send_request(req, true)
        .expect("extended CONNECT sent");
    let resp = tokio::time::timeout(Duration::from_secs(10), resp)
        .await
        .expect("an answer to the extended CONNECT")
        .expect("a response, not a reset");
    assert_eq!(resp.status(), 405);
    conn.abort();

    // Give a wrongly forwarded request time to arrive before asserting that none did.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(backend.requests(), 0, "a CONNECT reached the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dot_segment_in_the_path_is_400_and_reaches_no_server() {
    // `/public/../admin` would be routed by `/public` and served as `/admin` by a server that
    // resolves it; weir refuses it, spelled out or percent-encoded.
    let (backend, weir) = one_backend().await;
    for path in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/a/./b",
        "/x/%2E%2e",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
        let resp = raw_request(weir.addr(), request.into_bytes(), true).await;
        assert_eq!(resp.status, 400, "{path}: {:?}", resp.raw);
        assert_eq!(resp.closed, Some(true), "{path}: {:?}", resp.raw);
    }
    // Dots inside a segment are a name like any other.
    let resp = raw_request(
        weir.addr(),
        b"GET /.well-known/a..b/v1.2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".to_vec(),
        true,
    )
    .await;
    assert_eq!(resp.status, 200, "{:?}", resp.raw);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        backend.requests(),
        1,
        "only the last request reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_400() {
    let (backend, weir) = one_backend().await;
    let request = b"POST /smuggle HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\
                    Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /second HTTP/1.1\r\nHost: h\r\n\r\n";
    let resp = raw_request(weir.addr(), request.to_vec(), true).await;
    assert_eq!(resp.status, 400, "raw response: {:?}", resp.raw);
    assert_eq!(
        resp.closed,
        Some(true),
        "connection should be closed after a 400"
    );
    // Give a wrongly forwarded request time to arrive before asserting that none did.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        backend.requests(),
        0,
        "an ambiguously framed request reached the server"
    );
}

/// 100 KiB of headers in four 25 KiB values (few headers, so only a size limit can catch them).
fn huge_headers_request() -> Vec<u8> {
    let mut req = b"GET /big HTTP/1.1\r\nHost: h\r\n".to_vec();
    let value = "v".repeat(25 * 1024);
    for i in 0..4 {
        req.extend_from_slice(format!("X-Fill-{i}: {value}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_too_large_is_431() {
    let (backend, weir) = one_backend().await;
    let resp = raw_request(weir.addr(), huge_headers_request(), false).await;
    assert_eq!(
        resp.status,
        431,
        "raw response: {:?}",
        &resp.raw[..resp.raw.len().min(500)]
    );
    assert!(resp.body.len() < 256);
    assert_eq!(backend.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_is_access_logged() {
    let (_backend, weir) = one_backend().await;
    let resp = raw_request(weir.addr(), b"THIS IS NOT HTTP\r\n\r\n".to_vec(), false).await;
    assert_eq!(resp.status, 400);
    weir.expect_access_log(400, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_access_logged() {
    let (_backend, weir) = one_backend().await;
    let resp = raw_request(weir.addr(), huge_headers_request(), false).await;
    assert_eq!(resp.status, 431);
    weir.expect_access_log(431, None).await;
}
