//! Forwarding: upstream connection reuse, the x-forwarded-* and x-request-id headers, Host pass-
//! through, hop-by-hop removal both ways, streaming of large bodies in bounded memory, and
//! `max_body_size`.

mod support;

use std::time::Duration;

use http::StatusCode;
use http_body_util::BodyExt;
use support::config::single_pool;
use support::{empty, full, raw_request, repeat, repeat_chunked, servers, Backend, Weir};
use tokio::time::timeout;

const MIB: u64 = 1024 * 1024;

async fn one_backend() -> (Backend, Weir) {
    let backend = Backend::start("echo").await;
    let weir = Weir::start(&single_pool("round_robin", "", &servers(&[&backend]))).await;
    (backend, weir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused() {
    let (backend, weir) = one_backend().await;
    for i in 0..1000 {
        let resp = weir.get("reuse.test", &format!("/r/{i}")).await;
        assert_eq!(resp.status, StatusCode::OK, "request {i}: {}", resp.text());
    }
    assert_eq!(backend.requests(), 1000);
    let conns = backend.connections();
    eprintln!("1000 requests over {conns} upstream connections");
    assert!(
        conns <= 8,
        "1000 sequential requests used {conns} upstream connections"
    );
}

/// weir's HTTP/1.1 pool keeps idle connections without a task of their own; they must still be
/// closed once the pool's `idle_timeout` passes, so a quiet weir holds no upstream sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_are_closed_after_idle_timeout() {
    let backend = Backend::start("echo").await;
    let cfg = single_pool(
        "round_robin",
        "    idle_timeout: 300ms\n",
        &servers(&[&backend]),
    );
    let weir = Weir::start(&cfg).await;
    let gets = ["/c/0", "/c/1", "/c/2", "/c/3"].map(|p| weir.get("h", p));
    for r in futures_util::future::join_all(gets).await {
        assert_eq!(r.status, StatusCode::OK);
    }
    assert!(backend.open() >= 1, "pooled connections stay open at first");
    let closed = timeout(Duration::from_secs(10), async {
        while backend.open() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{} upstream connections still open",
        backend.open()
    );
    // And the next request opens a fresh one.
    let r = weir.get("h", "/after").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// An upstream connection idle for a second is parked (hyper's buffers dropped, the socket kept):
/// the next request still goes over the same socket, and one the server closes on reuse (the
/// keep-alive race) is retried on a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_upstream_connection_is_reused() {
    let backend = Backend::start("echo").await;
    let cfg = single_pool("round_robin", "", &servers(&[&backend]));
    let weir = Weir::start(&cfg).await;
    for i in 0..3 {
        let r = weir.get("h", &format!("/p/{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(2200)).await;
    }
    assert_eq!(backend.requests(), 3);
    assert_eq!(
        backend.connections(),
        1,
        "the parked connection was not reused"
    );

    let closer = support::closer::KeepAliveCloser::start().await;
    let cfg = single_pool(
        "round_robin",
        "",
        &format!("      - address: \"{}\"\n", closer.addr),
    );
    let weir = Weir::start(&cfg).await;
    assert_eq!(weir.get("h", "/first").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = weir.get("h", "/second").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!((closer.answered(), closer.cut()), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_is_appended() {
    let (_backend, weir) = one_backend().await;
    let req = weir
        .request("GET", "h", "/")
        .header("x-forwarded-for", "1.2.3.4")
        .body(empty())
        .unwrap();
    let seen = weir.send(req).await.seen();
    assert_eq!(
        seen.header("x-forwarded-for").as_deref(),
        Some("1.2.3.4, 127.0.0.1")
    );

    let seen = weir.get("h", "/").await.seen();
    assert_eq!(seen.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));

    // Two header lines are one list: both hops reach the server, in order, before weir's.
    let req = weir
        .request("GET", "h", "/")
        .header("x-forwarded-for", "1.1.1.1")
        .header("x-forwarded-for", "2.2.2.2")
        .body(empty())
        .unwrap();
    let seen = weir.send(req).await.seen();
    assert_eq!(
        seen.header("x-forwarded-for").as_deref(),
        Some("1.1.1.1, 2.2.2.2, 127.0.0.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_proto_and_host_and_host_passthrough() {
    let (backend, weir) = one_backend().await;
    let seen = weir.get("shop.example.com", "/cart").await.seen();
    assert_eq!(seen.header("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host").as_deref(),
        Some("shop.example.com")
    );
    assert_eq!(
        seen.header("host").as_deref(),
        Some("shop.example.com"),
        "the backend ({}) must see the client's Host",
        backend.addr
    );
    assert_eq!(seen.uri, "/cart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_request_id_kept_or_generated() {
    let (_backend, weir) = one_backend().await;
    let req = weir
        .request("GET", "h", "/")
        .header("x-request-id", "abc-123")
        .body(empty())
        .unwrap();
    let seen = weir.send(req).await.seen();
    assert_eq!(
        seen.headers.get("x-request-id"),
        Some(&vec!["abc-123".to_string()])
    );

    let one = weir.get("h", "/").await.seen().header("x-request-id");
    let two = weir.get("h", "/").await.seen().header("x-request-id");
    let (one, two) = (
        one.expect("generated x-request-id"),
        two.expect("generated x-request-id"),
    );
    assert!(!one.trim().is_empty() && !two.trim().is_empty());
    assert_ne!(one, two, "generated request ids should be unique");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_are_removed() {
    let (backend, weir) = one_backend().await;
    // Raw bytes, so the client library cannot add or drop anything.
    let request = "GET /hop HTTP/1.1\r\n\
                   Host: hop.test\r\n\
                   Connection: x-secret\r\n\
                   X-Secret: 1\r\n\
                   Keep-Alive: timeout=5\r\n\
                   Proxy-Connection: keep-alive\r\n\
                   TE: deflate\r\n\
                   X-Normal: yes\r\n\
                   \r\n";
    let resp = raw_request(weir.addr(), request.as_bytes().to_vec(), false).await;
    assert_eq!(resp.status, 200, "raw response: {}", resp.raw);
    let v: serde_json::Value = serde_json::from_slice(&resp.body).expect("json echo");
    let seen = support::Seen::from_json(&v).expect("echo");
    assert_eq!(seen.header("x-normal").as_deref(), Some("yes"));
    for h in ["x-secret", "keep-alive", "proxy-connection", "te"] {
        assert!(
            !seen.has(h),
            "backend received hop-by-hop {h}: {:?}",
            seen.headers
        );
    }
    let conn = seen
        .header("connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        !conn.contains("x-secret"),
        "backend received Connection: {conn}"
    );
    assert_eq!(backend.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_removed() {
    let backend = Backend::builder("echo")
        .response_header("connection", "x-resp-secret")
        .response_header("x-resp-secret", "1")
        .response_header("keep-alive", "timeout=5")
        .response_header("x-resp-normal", "yes")
        .start()
        .await;
    let weir = Weir::start(&single_pool("round_robin", "", &servers(&[&backend]))).await;

    // The backend really sends them (so the test can fail).
    let direct = raw_request(
        backend.addr,
        b"GET / HTTP/1.1\r\nHost: direct\r\n\r\n".to_vec(),
        false,
    )
    .await;
    assert!(
        direct.has("x-resp-secret") && direct.has("keep-alive"),
        "{}",
        direct.raw
    );

    let resp = raw_request(
        weir.addr(),
        b"GET / HTTP/1.1\r\nHost: hop.test\r\n\r\n".to_vec(),
        false,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.raw);
    assert_eq!(resp.header("x-resp-normal"), Some("yes"), "{}", resp.raw);
    assert!(
        !resp.has("x-resp-secret"),
        "client received x-resp-secret:\n{}",
        resp.raw
    );
    assert!(
        !resp.has("keep-alive"),
        "client received keep-alive:\n{}",
        resp.raw
    );
    let conn = resp
        .header("connection")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        !conn.contains("x-resp-secret"),
        "client received Connection: {conn}"
    );
}

/// The transparency check: the same requests sent straight to the backend and through weir
/// arrive the same, apart from the headers weir adds by contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_requests_match_direct_ones() {
    let (backend, weir) = one_backend().await;
    // Headers weir adds by contract, and framing headers a proxy may legitimately re-frame
    // (the body length itself is compared).
    let added = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "forwarded",
        "via",
        "content-length",
        "transfer-encoding",
    ];
    // (method, path and query, headers, body length)
    type Case = (
        &'static str,
        &'static str,
        Vec<(&'static str, &'static str)>,
        usize,
    );
    let cases: Vec<Case> = vec![
        ("GET", "/", vec![], 0),
        (
            "GET",
            "/a/b%20c/d?x=1&y=%2F&z",
            vec![("accept", "*/*"), ("x-custom", "one")],
            0,
        ),
        (
            "POST",
            "/submit",
            vec![("content-type", "application/json")],
            1234,
        ),
        ("PUT", "/put?q", vec![("x-dup", "1"), ("x-dup", "2")], 10),
        (
            "DELETE",
            "/item/7",
            vec![("authorization", "Bearer t"), ("cookie", "a=1; b=2")],
            0,
        ),
        (
            "PATCH",
            "/p",
            vec![("user-agent", "weir-tests/1"), ("accept-encoding", "gzip")],
            3,
        ),
        ("HEAD", "/head", vec![], 0),
        ("OPTIONS", "/opt", vec![], 0),
    ];
    let client = support::client::client();
    for (method, path, headers, body_len) in cases {
        let build = |url: String| {
            let mut req = http::Request::builder()
                .method(method)
                .uri(url)
                .header("host", "transparent.test");
            for (k, v) in &headers {
                req = req.header(*k, *v);
            }
            req.body(full(vec![b'b'; body_len])).unwrap()
        };
        let direct = support::send(&client, build(format!("http://{}{path}", backend.addr))).await;
        let proxied = weir.send(build(weir.url(path))).await;
        assert_eq!(direct.status, proxied.status, "{method} {path}");
        if method == "HEAD" {
            assert!(proxied.body.is_empty());
            continue;
        }
        let (d, p) = (direct.seen(), proxied.seen());
        assert_eq!(
            (&d.method, &d.uri, d.body_len),
            (&p.method, &p.uri, p.body_len),
            "{method} {path}"
        );
        let strip = |s: &support::Seen| {
            let mut h = s.headers.clone();
            h.retain(|k, _| !added.contains(&k.as_str()));
            h
        };
        assert_eq!(strip(&d), strip(&p), "{method} {path}: headers differ");
        assert_eq!(
            direct.header("content-type"),
            proxied.header("content-type"),
            "{method} {path}"
        );
    }
}

/// Peak RSS growth (KiB) of weir while `f` runs: VmHWM after minus VmRSS before, so a body that
/// was buffered whole and freed again still counts.
async fn peak_growth_kib<F: std::future::Future<Output = ()>>(weir: &Weir, f: F) -> u64 {
    let before = weir.proc_status_kib("VmRSS");
    f.await;
    let growth = weir.proc_status_kib("VmHWM").saturating_sub(before);
    eprintln!("weir RSS before {before} KiB, peak growth {growth} KiB");
    growth
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_request_body_streams_through() {
    let (_backend, weir) = one_backend().await;
    // Warm up the connection pools so their buffers are in the baseline.
    let warm = weir
        .request("POST", "h", "/upload")
        .body(repeat(MIB))
        .unwrap();
    assert_eq!(weir.send(warm).await.seen().body_len, MIB);

    let size = 100 * MIB;
    let growth = peak_growth_kib(&weir, async {
        let req = weir
            .request("POST", "h", "/upload")
            .body(repeat(size))
            .unwrap();
        let resp = weir.send(req).await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        assert_eq!(resp.seen().body_len, size);
    })
    .await;
    assert!(
        growth <= 20 * 1024,
        "weir's peak RSS grew by {} MiB while streaming a 100 MiB request body",
        growth / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_body_arrives_intact() {
    let (_backend, weir) = one_backend().await;
    let size = 3 * MIB + 17;
    let req = weir
        .request("PUT", "h", "/chunked")
        .body(repeat_chunked(size))
        .unwrap();
    let seen = weir.send(req).await.seen();
    assert_eq!((seen.method.as_str(), seen.body_len), ("PUT", size));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_response_body_streams_back() {
    let (_backend, weir) = one_backend().await;
    let warm = weir.get("h", &format!("/download?bytes={MIB}")).await;
    assert_eq!(warm.body.len() as u64, MIB);

    let size = 100 * MIB;
    let growth = peak_growth_kib(&weir, async {
        let req = weir
            .request("GET", "h", &format!("/download?bytes={size}"))
            .body(empty())
            .unwrap();
        let resp = timeout(Duration::from_secs(30), weir.client().request(req))
            .await
            .expect("response head within 30s")
            .expect("response");
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let mut received = 0u64;
        let read_all = async {
            while let Some(frame) = body.frame().await {
                if let Some(d) = frame.expect("body frame").data_ref() {
                    received += d.len() as u64;
                }
            }
        };
        timeout(Duration::from_secs(120), read_all)
            .await
            .expect("100 MiB body within 120s");
        assert_eq!(received, size);
    })
    .await;
    assert!(
        growth <= 20 * 1024,
        "weir's peak RSS grew by {} MiB while streaming a 100 MiB response body",
        growth / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_body_size_gives_413() {
    let backend = Backend::start("echo").await;
    let yaml = format!(
        "{}pools:\n  p:\n    balance: round_robin\n    servers:\n{}\
         routes:\n  - name: small\n    match:\n      path_prefix: \"/\"\n    pool: p\n    max_body_size: 1KiB\n",
        support::config::LISTENER,
        servers(&[&backend])
    );
    let weir = Weir::start(&yaml).await;

    let ok = weir
        .send(
            weir.request("POST", "h", "/")
                .body(full(vec![b'a'; 512]))
                .unwrap(),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.seen().body_len, 512);

    let resp = weir
        .send(
            weir.request("POST", "h", "/")
                .body(full(vec![b'a'; 2048]))
                .unwrap(),
        )
        .await;
    assert_eq!(
        resp.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body {:?}",
        resp.text()
    );
    assert!(resp.body.len() < 256, "short error body: {:?}", resp.text());
    let ctype = resp.header("content-type").unwrap_or_default();
    assert!(
        resp.body.is_empty() || ctype.starts_with("text/plain"),
        "content-type {ctype:?}"
    );
    assert_eq!(
        backend.requests(),
        1,
        "the oversized request (with Content-Length) must not reach the server"
    );
    weir.expect_access_log(413, Some("small")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_refused_with_413_reads_the_413_not_a_reset() {
    // A client that sends its whole body before it reads (Python's http.client, many others):
    // weir answers 413 without reading the body, and closing with it unread would reset the
    // connection, destroying the 413 on its way. weir reads and drops the rest first.
    let backend = Backend::start("echo").await;
    let yaml = format!(
        "{}pools:\n  p:\n    servers:\n{}\
         routes:\n  - name: small\n    match:\n      path_prefix: \"/\"\n    pool: p\n    max_body_size: 1KiB\n",
        support::config::LISTENER,
        servers(&[&backend])
    );
    let weir = Weir::start(&yaml).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(weir.addr()).await.unwrap();
        let size = 32 << 20;
        let head = format!("POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: {size}\r\n\r\n");
        let exchange = async {
            s.write_all(head.as_bytes()).await?;
            let chunk = vec![b'a'; 1 << 20];
            for _ in 0..(size >> 20) {
                s.write_all(&chunk).await?;
            }
            let mut resp = Vec::new();
            s.read_to_end(&mut resp).await?;
            Ok::<_, std::io::Error>(resp)
        };
        let resp = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .expect("the exchange within 30 s")
            .expect("no reset: the 413 is read whole");
        let text = String::from_utf8_lossy(&resp);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    }
    assert_eq!(backend.requests(), 0);
}
