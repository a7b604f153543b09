//! Hostile clients and broken servers, byte for byte: every case sends raw bytes over TCP to weir in
//! front of a raw recording backend, and passes only if the client got the expected answer and the
//! backend received nothing ambiguous (nothing at all for a refused request; only weir's re-framed
//! requests otherwise). Each smuggling case runs on a fresh connection and again on a keep-alive
//! connection whose first request was valid, always with a valid request pipelined behind it.

mod support;

use std::time::{Duration, Instant};

use support::config::LISTENER;
use support::rawconn::RawConn;
use support::recorder::{ok_naming, Act, Recorder};
use support::Weir;

fn config(rec: &Recorder, listener_extra: &str, route_extra: &str) -> String {
    format!(
        "{LISTENER}{listener_extra}pools:\n  p:\n    balance: round_robin\n    servers:\n      - address: \"{}\"\n\
         routes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n{route_extra}",
        rec.addr
    )
}

fn req(name: &str, headers: &str, body: &str) -> Vec<u8> {
    format!("POST /case-{name} HTTP/1.1\r\nHost: h\r\n{headers}\r\n{body}").into_bytes()
}

/// Every ambiguous or malformed request head of issue item (1); each must get 400.
fn smuggling_cases() -> Vec<(&'static str, Vec<u8>)> {
    let mut v = vec![
        (
            "cl-then-te",
            req(
                "cl-then-te",
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "te-then-cl",
            req(
                "te-then-cl",
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "cl-duplicate-equal",
            req(
                "cl-duplicate-equal",
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                "hello",
            ),
        ),
        (
            "cl-differing",
            req(
                "cl-differing",
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                "hello!",
            ),
        ),
        (
            "cl-list",
            req("cl-list", "Content-Length: 5, 5\r\n", "hello"),
        ),
        ("cl-plus", req("cl-plus", "Content-Length: +5\r\n", "hello")),
        (
            "cl-negative",
            req("cl-negative", "Content-Length: -1\r\n", ""),
        ),
        (
            "te-chunked-identity",
            req(
                "te-chunked-identity",
                "Transfer-Encoding: chunked, identity\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "te-identity",
            req("te-identity", "Transfer-Encoding: identity\r\n", ""),
        ),
        ("te-gzip", req("te-gzip", "Transfer-Encoding: gzip\r\n", "")),
        (
            "te-gzip-chunked",
            req(
                "te-gzip-chunked",
                "Transfer-Encoding: gzip, chunked\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "te-twice",
            req(
                "te-twice",
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "te-xchunked",
            req(
                "te-xchunked",
                "Transfer-Encoding: xchunked\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "te-space-before-colon",
            req(
                "te-space-before-colon",
                "Transfer-Encoding : chunked\r\n",
                "0\r\n\r\n",
            ),
        ),
        ("obs-fold", req("obs-fold", "X-A: a\r\n folded\r\n", "")),
        (
            "obs-fold-te",
            req(
                "obs-fold-te",
                "Transfer-Encoding:\r\n chunked\r\n",
                "0\r\n\r\n",
            ),
        ),
        (
            "space-before-colon",
            req("space-before-colon", "X-A : a\r\n", ""),
        ),
        (
            "tab-before-colon",
            req("tab-before-colon", "X-A\t: a\r\n", ""),
        ),
        (
            "bare-cr-in-value",
            req("bare-cr-in-value", "X-A: a\rb\r\n", ""),
        ),
        (
            "bare-cr-line-end",
            req("bare-cr-line-end", "X-A: a\rX-B: b\r\n", ""),
        ),
        (
            "bare-lf-header",
            req("bare-lf-header", "X-A: a\nX-B: b\r\n", ""),
        ),
        ("nul-in-value", req("nul-in-value", "X-A: a\0b\r\n", "")),
        ("nul-in-name", req("nul-in-name", "X-\0A: a\r\n", "")),
        ("ctl-in-name", req("ctl-in-name", "X-\x01A: a\r\n", "")),
        ("del-in-value", req("del-in-value", "X-A: a\x7fb\r\n", "")),
        ("esc-in-value", req("esc-in-value", "X-A: a\x1bb\r\n", "")),
        (
            "chunk-size-invalid",
            req(
                "chunk-size-invalid",
                "Transfer-Encoding: chunked\r\n",
                "zz\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "chunk-size-bare-lf",
            req(
                "chunk-size-bare-lf",
                "Transfer-Encoding: chunked\r\n",
                "5\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "chunk-size-overflow",
            req(
                "chunk-size-overflow",
                "Transfer-Encoding: chunked\r\n",
                "fffffffffffffffff1\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "chunk-size-space",
            req(
                "chunk-size-space",
                "Transfer-Encoding: chunked\r\n",
                "5 5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "chunk-ext-nul",
            req(
                "chunk-ext-nul",
                "Transfer-Encoding: chunked\r\n",
                "5;a\0b\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "chunk-ext-bare-lf",
            req(
                "chunk-ext-bare-lf",
                "Transfer-Encoding: chunked\r\n",
                "5;a\nhello\r\n0\r\n\r\n",
            ),
        ),
        (
            "chunk-data-no-crlf",
            req(
                "chunk-data-no-crlf",
                "Transfer-Encoding: chunked\r\n",
                "5\r\nhelloGET / HTTP/1.1\r\n\r\n",
            ),
        ),
        (
            "chunk-trailer-cl",
            req(
                "chunk-trailer-cl",
                "Transfer-Encoding: chunked\r\n",
                "0\r\nContent-Length: 5\r\n\r\n",
            ),
        ),
        (
            "absolute-host-mismatch",
            b"GET http://evil.test/case-absolute HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
        ),
        (
            "two-hosts",
            b"GET /case-two-hosts HTTP/1.1\r\nHost: h\r\nHost: evil.test\r\n\r\n".to_vec(),
        ),
        (
            "host-with-userinfo",
            b"GET /case-host-userinfo HTTP/1.1\r\nHost: h@evil.test\r\n\r\n".to_vec(),
        ),
        (
            "host-with-space",
            b"GET /case-host-space HTTP/1.1\r\nHost: h evil.test\r\n\r\n".to_vec(),
        ),
        (
            "no-host",
            b"GET /case-no-host HTTP/1.1\r\nX-A: a\r\n\r\n".to_vec(),
        ),
        (
            "bare-lf-request-line",
            b"GET /case-bare-lf-line HTTP/1.1\nHost: h\r\n\r\n".to_vec(),
        ),
        (
            "http10-te",
            b"POST /case-http10-te HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "bad-version",
            b"GET /case-bad-version HTTP/1.2\r\nHost: h\r\n\r\n".to_vec(),
        ),
        (
            "space-in-target",
            b"GET /case space HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
        ),
    ];
    v.sort_by_key(|c| c.0);
    v
}

const PIPELINED: &[u8] = b"GET /pipelined-after-refusal HTTP/1.1\r\nHost: h\r\n\r\n";

/// Sends `bad` (plus a pipelined valid request) on `c`; the reply must be `status` and then close.
async fn expect_refused(c: &mut RawConn, bad: &[u8], status: u16) -> Result<(), String> {
    let mut bytes = bad.to_vec();
    bytes.extend_from_slice(PIPELINED);
    c.send(&bytes).await;
    let r = c.response(false).await;
    if r.status != status {
        return Err(format!(
            "got status {} (want {status}), body {:?}",
            r.status,
            r.text()
        ));
    }
    if !c.closed_within(Duration::from_secs(5)).await {
        return Err("connection not closed after the refusal".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_are_refused_and_never_reach_the_server() {
    let rec = Recorder::start().await;
    let weir = Weir::start(&config(&rec, "", "")).await;
    let mut failures = Vec::new();
    let mut results = Vec::new();
    for (name, bad) in smuggling_cases() {
        // Fresh connection.
        let before = rec.raw().len();
        let mut c = RawConn::connect(weir.addr()).await;
        let fresh = expect_refused(&mut c, &bad, 400).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let leaked = rec.raw()[before..].to_vec();
        let fresh = fresh.and_then(|()| {
            if leaked.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "backend received {:?}",
                    String::from_utf8_lossy(&leaked)
                ))
            }
        });
        // Keep-alive connection whose first request is valid.
        let before_reqs = rec.requests().len();
        let before = rec.raw().len();
        let mut c = RawConn::connect(weir.addr()).await;
        let first = format!("GET /ka-first-{name} HTTP/1.1\r\nHost: h\r\n\r\n");
        c.send(first.as_bytes()).await;
        let r = c.response(false).await;
        let ka = if r.status != 200 || !r.text().contains(&format!("/ka-first-{name}")) {
            Err(format!(
                "valid first request got {} {:?}",
                r.status,
                r.text()
            ))
        } else {
            expect_refused(&mut c, &bad, 400).await
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = rec.requests()[before_reqs..].to_vec();
        let raw = String::from_utf8_lossy(&rec.raw()[before..]).into_owned();
        let ka = ka.and_then(|()| {
            if got.len() == 1 && !raw.contains("case-") && !raw.contains("pipelined") {
                Ok(())
            } else {
                Err(format!("backend received {} requests: {raw:?}", got.len()))
            }
        });
        results.push(format!(
            "{name}: fresh {} keep-alive {}",
            if fresh.is_ok() { "ok" } else { "FAIL" },
            if ka.is_ok() { "ok" } else { "FAIL" }
        ));
        if let Err(e) = fresh {
            failures.push(format!("{name} (fresh connection): {e}"));
        }
        if let Err(e) = ka {
            failures.push(format!("{name} (keep-alive): {e}"));
        }
    }
    eprintln!("{}", results.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Chunk errors that arrive after weir has forwarded the head: the server must see an aborted body
/// (its connection cut before the last chunk), never a complete one and never a second request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunks_after_the_head_abort_the_forwarded_body() {
    let rec = Recorder::start().await;
    let weir = Weir::start(&config(&rec, "", "")).await;
    let tails: [(&str, &[u8]); 6] = [
        ("invalid-size", b"zz\r\nhello\r\n0\r\n\r\n"),
        ("bare-lf-size", b"5\nhello\r\n0\r\n\r\n"),
        ("ext-nul", b"5;a\0\r\nhello\r\n0\r\n\r\n"),
        (
            "missing-crlf",
            b"5\r\nhelloXXGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        ),
        ("bare-lf-last", b"5\r\nhello\r\n0\r\n\n"),
        (
            "trailer-te",
            b"5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (name, tail)) in tails.iter().enumerate() {
        let mut c = RawConn::connect(weir.addr()).await;
        let head = format!(
            "POST /late-{name} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        );
        c.send(head.as_bytes()).await;
        // Wait until the head reached the server, so the error really comes mid-body.
        support::eventually("head forwarded", support::WAIT, || async {
            rec.requests().len() > i || rec.raw_text().contains(&format!("/late-{name}"))
        })
        .await;
        let mut rest = tail.to_vec();
        rest.extend_from_slice(PIPELINED);
        c.send(&rest).await;
        let r = c.response(false).await;
        let closed = c.closed_within(Duration::from_secs(5)).await;
        support::eventually(
            "the backend to record the request",
            support::WAIT,
            || async { rec.requests().len() > i },
        )
        .await;
        let got = rec.requests();
        let raw = rec.raw_text();
        if r.status != 400 || !closed {
            failures.push(format!("{name}: status {} closed {closed}", r.status));
        }
        if got.len() != i + 1 || got[i].complete {
            failures.push(format!("{name}: backend got {:?}", &got[i..]));
        }
        if raw.contains("smuggled") || raw.contains("pipelined") {
            failures.push(format!(
                "{name}: a second request reached the backend: {raw:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_is_not_forwarded() {
    let rec = Recorder::start().await;
    let weir = Weir::start(&config(&rec, "", "")).await;
    for conn_hdr in ["Upgrade, HTTP2-Settings", "Upgrade"] {
        let mut c = RawConn::connect(weir.addr()).await;
        let r = format!(
            "GET /up HTTP/1.1\r\nHost: h\r\nConnection: {conn_hdr}\r\nUpgrade: h2c\r\n\
             HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        );
        c.send(r.as_bytes()).await;
        let resp = c.response(false).await;
        assert_eq!(resp.status, 200, "{:?}", resp.text());
        let got = rec.requests().pop().expect("forwarded as a plain request");
        assert_eq!(got.line, "GET /up HTTP/1.1");
        for h in ["upgrade", "http2-settings", "connection"] {
            let v = got.header(h);
            assert!(
                v.is_none() || !v.unwrap().to_ascii_lowercase().contains("upgrade"),
                "{h} forwarded: {:?}",
                got.headers
            );
        }
        assert!(!rec.raw_text().to_ascii_lowercase().contains("h2c"));
        assert!(!rec
            .raw_text()
            .to_ascii_lowercase()
            .contains("http2-settings"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_answer_414_431_413() {
    let rec = Recorder::start().await;
    let yaml = config(
        &rec,
        "    max_uri_length: 1KiB\n    max_header_size: 16KiB\n    max_headers: 20\n",
        "    max_body_size: 1KiB\n",
    );
    let weir = Weir::start(&yaml).await;
    let long_path = "a".repeat(1100);
    let many: String = (0..30).map(|i| format!("X-{i}: v\r\n")).collect();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("uri-too-long", format!("GET /{long_path} HTTP/1.1\r\nHost: h\r\n\r\n").into_bytes(), 414),
        (
            "uri-longer-than-head",
            format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(20_000)).into_bytes(),
            431,
        ),
        (
            "headers-too-large",
            format!("GET / HTTP/1.1\r\nHost: h\r\nX-Big: {}\r\n\r\n", "v".repeat(17_000)).into_bytes(),
            431,
        ),
        ("too-many-headers", format!("GET / HTTP/1.1\r\nHost: h\r\n{many}\r\n").into_bytes(), 431),
        (
            "body-cl-too-large",
            format!("POST /cl HTTP/1.1\r\nHost: h\r\nContent-Length: 2000\r\n\r\n{}", "b".repeat(2000)).into_bytes(),
            413,
        ),
        (
            "body-chunked-too-large",
            format!(
                "POST /chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{}\r\n0\r\n\r\n",
                "b".repeat(2000)
            )
            .into_bytes(),
            413,
        ),
    ];
    for (name, bytes, status) in cases {
        let before = rec.requests().len();
        let mut c = RawConn::connect(weir.addr()).await;
        c.send(&bytes).await;
        let r = c.response(false).await;
        assert_eq!(r.status, status, "{name}: {:?}", r.text());
        assert!(r.body.len() < 256, "{name}: short body");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = &rec.requests()[before..];
        // A streamed body that crosses the limit was already on its way: the server sees it cut off.
        assert!(
            got.iter().all(|g| !g.complete) && (got.is_empty() || name == "body-chunked-too-large"),
            "{name}: backend got {got:?}"
        );
    }

    // A chunked body that crosses the limit mid-stream, after its head went out.
    let mut c = RawConn::connect(weir.addr()).await;
    c.send(b"POST /midstream HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n200\r\n")
        .await;
    c.send(&[b'x'; 512]).await;
    c.send(b"\r\n").await;
    support::eventually("head forwarded", support::WAIT, || async {
        rec.raw_text().contains("/midstream")
    })
    .await;
    c.send(format!("400\r\n{}\r\n0\r\n\r\n", "y".repeat(1024)).as_bytes())
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 413);
    support::eventually("aborted body recorded", support::WAIT, || async {
        rec.requests().iter().any(|g| g.line.contains("/midstream"))
    })
    .await;
    let mid = rec
        .requests()
        .into_iter()
        .find(|g| g.line.contains("/midstream"))
        .unwrap();
    assert!(!mid.complete, "the server must see the body cut off");

    // Within the limits everything passes.
    let mut c = RawConn::connect(weir.addr()).await;
    c.send(
        format!(
            "POST /fine HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n{}",
            "b".repeat(1000)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(c.response(false).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_silent_clients_are_cut_off() {
    let rec = Recorder::start().await;
    let weir = Weir::start(&config(&rec, "    header_read_timeout: 500ms\n", "")).await;
    // Silent: connects and sends nothing.
    let mut silent = RawConn::connect(weir.addr()).await;
    // Slowloris: a head one byte at a time, never finished.
    let mut slow = RawConn::connect(weir.addr()).await;
    let start = Instant::now();
    let head = b"GET /slowloris HTTP/1.1\r\nHost: h\r\nX-Slow: ";
    let mut closed = false;
    for b in head.iter().chain(std::iter::repeat(&b'a')) {
        if !slow.send(&[*b]).await || start.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if slow.closed_within(Duration::from_millis(1)).await {
            closed = true;
            break;
        }
    }
    assert!(
        closed,
        "a slowloris head was still open after 10s (header_read_timeout 500ms)"
    );
    // A head that started gets an answer before the close, as HAProxy gives one.
    let r = slow.response_within(Duration::from_secs(1), false).await;
    assert_eq!(r.status, 408, "{:?}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.text(), "408 Request Timeout\n");
    assert!(!r.truncated);
    // A connection that sent nothing is closed without a word.
    assert!(
        silent.closed_within(Duration::from_secs(5)).await,
        "silent client not closed"
    );
    let r = silent
        .response_within(Duration::from_millis(100), false)
        .await;
    assert_eq!(
        r.status,
        0,
        "no answer to a silent connection: {:?}",
        r.text()
    );
    assert_eq!(rec.raw().len(), 0, "nothing may reach the server");
    weir.expect_access_log(408, None).await;
    // A second head on a keep-alive connection, begun and left unfinished: 408 after the first
    // response, never inside it.
    let mut ka = RawConn::connect(weir.addr()).await;
    ka.send(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let first = ka.response(false).await;
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "ok GET /first HTTP/1.1")
    );
    ka.send(b"GET /second HTTP/1.1\r\nHo").await;
    assert_eq!(ka.response(false).await.status, 408);
    assert!(ka.closed_within(Duration::from_secs(5)).await);
    // The same unfinished head pipelined behind a complete request in one write: no later read
    // starts its clock, yet it gets header_read_timeout (not idle_timeout, 60s here).
    let mut piped = RawConn::connect(weir.addr()).await;
    piped
        .send(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\nGET /second HTTP/1.1\r\nHo")
        .await;
    assert_eq!(piped.response(false).await.status, 200);
    let r = piped.response_within(Duration::from_secs(10), false).await;
    assert_eq!(r.status, 408, "pipelined partial head: {:?}", r.text());
    assert!(piped.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_idle_timeout_is_enforced() {
    let rec = Recorder::start().await;
    let yaml = config(
        &rec,
        "    header_read_timeout: 400ms\n    idle_timeout: 1500ms\n",
        "",
    );
    let weir = Weir::start(&yaml).await;
    let mut c = RawConn::connect(weir.addr()).await;
    c.send(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(c.response(false).await.status, 200);
    // Idle longer than the header timeout but shorter than the idle timeout: still served.
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.send(b"GET /two HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!(
        r.status, 200,
        "idle_timeout, not header_read_timeout, bounds keep-alive"
    );
    // Then idle past the idle timeout: closed.
    let start = Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(10)).await,
        "idle connection not closed"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(1000),
        "closed too early: {:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_gets_408() {
    let rec = Recorder::start().await;
    let weir = Weir::start(&config(&rec, "    body_timeout: 500ms\n", "")).await;
    let mut c = RawConn::connect(weir.addr()).await;
    c.send(b"POST /stall HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")
        .await;
    let r = c.response(false).await;
    assert_eq!(r.status, 408, "{:?}", r.text());
    assert!(c.closed_within(Duration::from_secs(5)).await);
    support::eventually("aborted body recorded", support::WAIT, || async {
        !rec.requests().is_empty()
    })
    .await;
    assert!(
        !rec.requests()[0].complete,
        "the server must see the body cut off"
    );
    // A slow but steady body is fine: each gap is shorter than the timeout.
    let mut c = RawConn::connect(weir.addr()).await;
    c.send(b"POST /steady HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\n")
        .await;
    for b in b"abcd" {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.send(&[*b]).await;
    }
    assert_eq!(c.response(false).await.status, 200);
}

async fn served(c: &mut RawConn, path: &str) -> bool {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
        .await
        && c.response(false).await.status == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_caps_refuse_new_sockets_and_keep_serving_old_ones() {
    for key in ["max_connections_per_ip", "max_connections"] {
        let rec = Recorder::start().await;
        let weir = Weir::start(&config(&rec, &format!("    {key}: 2\n"), "")).await;
        let mut a = RawConn::connect(weir.addr()).await;
        let mut b = RawConn::connect(weir.addr()).await;
        assert!(
            served(&mut a, "/a1").await && served(&mut b, "/b1").await,
            "{key}"
        );
        let mut c = RawConn::connect(weir.addr()).await;
        c.send(b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n").await;
        let r = c.response(false).await;
        assert_eq!(
            r.status, 0,
            "{key}: the third connection must be closed unanswered"
        );
        assert!(
            served(&mut a, "/a2").await && served(&mut b, "/b2").await,
            "{key}: established ones keep working"
        );
        drop(a);
        // The slot frees once weir notices the close.
        support::eventually("a freed slot", support::WAIT, || async {
            let mut d = RawConn::connect(weir.addr()).await;
            served(&mut d, "/d").await
        })
        .await;
        assert!(!rec.raw_text().contains("GET /c "), "{key}");
    }
}

// ---- broken servers --------------------------------------------------------------------------------

const SMUGGLED: &str = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED";

async fn broken(
    script: impl Fn(&support::recorder::Recorded, usize) -> Act + Send + Sync + 'static,
) -> (Recorder, Weir) {
    let rec = Recorder::script(script).await;
    let weir = Weir::start(&config(&rec, "", "    timeout: 1s\n")).await;
    (rec, weir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_servers_get_clean_errors() {
    let big = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
        "v".repeat(600_000)
    );
    // `None`: never answer. Every attempt at /x gets the broken answer (weir retries a GET once).
    let cases: Vec<(&str, Option<Vec<u8>>, u16)> = vec![
        (
            "malformed-head",
            Some(b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
            502,
        ),
        (
            "garbage",
            Some(b"\x00\x01\x02garbage\r\n\r\n".to_vec()),
            502,
        ),
        ("oversize-head", Some(big.into_bytes()), 502),
        ("close-before-head", Some(Vec::new()), 502),
        ("never-answers", None, 504),
    ];
    for (name, act, status) in cases {
        let (_rec, weir) = broken(move |r, _| {
            if !r.line.contains(" /x ") {
                return Act::Send(ok_naming(r));
            }
            match &act {
                Some(b) => Act::SendClose(b.clone()),
                None => Act::Silent,
            }
        })
        .await;
        let mut c = RawConn::connect(weir.addr()).await;
        c.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").await;
        let r = c.response(false).await;
        assert_eq!(r.status, status, "{name}: {:?}", r.text());
        assert!(r.body.len() < 256, "{name}");
        // The client connection stays usable and the next answer is a fresh one.
        c.send(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n").await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200, "{name}: next request {:?}", r.text());
        assert_eq!(r.text(), "ok GET /next HTTP/1.1", "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closing_mid_response_aborts_the_client_stream() {
    for (name, bytes) in [
        (
            "content-length",
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b",
        ),
        (
            "chunked",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\nonly ten b\r\n",
        ),
    ] {
        let first = std::sync::atomic::AtomicBool::new(true);
        let (_rec, weir) = broken(move |r, _| {
            if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                Act::SendClose(bytes.as_bytes().to_vec())
            } else {
                Act::Send(ok_naming(r))
            }
        })
        .await;
        let mut c = RawConn::connect(weir.addr()).await;
        c.send(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n").await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200, "{name}");
        assert!(
            r.truncated,
            "{name}: the client must see the body cut off, got {:?}",
            r.text()
        );
        assert!(c.closed_within(Duration::from_secs(5)).await, "{name}");
        // A second client is served normally.
        let mut d = RawConn::connect(weir.addr()).await;
        assert!(served(&mut d, "/y").await, "{name}");
    }
}

/// Bytes a server sends beyond its response (a short Content-Length, a body after a HEAD answer)
/// must never be read as the answer to someone else's request: the pooled connection is discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_server_bytes_never_reach_another_request() {
    for (name, method, reply) in [
        (
            "short-content-length",
            "GET",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello{SMUGGLED}"),
        ),
        (
            "head-with-body",
            "HEAD",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello{SMUGGLED}"),
        ),
        (
            "long-content-length",
            "GET",
            "HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello".to_string(),
        ),
    ] {
        let first = std::sync::atomic::AtomicBool::new(true);
        let long = name == "long-content-length";
        let (rec, weir) = broken(move |r, _| {
            if first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                if long {
                    Act::SendClose(reply.clone().into_bytes())
                } else {
                    Act::Send(reply.clone().into_bytes())
                }
            } else {
                Act::Send(ok_naming(r))
            }
        })
        .await;
        let mut c = RawConn::connect(weir.addr()).await;
        c.send(format!("{method} /first HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .await;
        let r = c.response(method == "HEAD").await;
        assert_eq!(r.status, 200, "{name}");
        if long {
            assert!(
                r.truncated,
                "{name}: a short body must reach the client cut off"
            );
            c = RawConn::connect(weir.addr()).await;
        } else if method == "GET" {
            assert_eq!(r.text(), "hello", "{name}");
        }
        let mut others = Vec::new();
        for i in 0..3 {
            c.send(format!("GET /same-{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
                .await;
            others.push(c.response(false).await);
            let mut d = RawConn::connect(weir.addr()).await;
            d.send(format!("GET /other-{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
                .await;
            others.push(d.response(false).await);
        }
        for o in &others {
            assert_eq!(o.status, 200, "{name}: {:?}", o.text());
            assert!(
                o.text().starts_with("ok GET /"),
                "{name}: a client got leftover bytes: {:?}",
                o.text()
            );
        }
        assert!(
            rec.connections() >= 2,
            "{name}: the tainted connection must not be reused"
        );
    }
}

/// The same slowloris guard behind TLS: a begun head that does not complete in time gets its 408
/// through the TLS session (the reply is written by the framing tap, under rustls), then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_over_tls_gets_408_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rec = Recorder::start().await;
    let (cert, key) = support::tls_client::dev_cert_paths();
    let tls = format!(
        "    header_read_timeout: 500ms\n    tls:\n      certificates:\n        - cert: \"{cert}\"\n          key: \"{key}\"\n"
    );
    let weir = Weir::start(&config(&rec, &tls, "")).await;
    let mut s = support::tls_client::tls_connect(weir.addr(), "localhost", "http/1.1")
        .await
        .unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: local")
        .await
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "no answer and no close within 10s");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text:?}"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "answered before the timeout"
    );
    weir.expect_access_log(408, None).await;
    assert_eq!(rec.raw().len(), 0, "nothing may reach the server");
}
