//! Streaming through weir: server-sent events arrive one by one as they are produced, long-lived
//! and slow responses outlive the route's `timeout`, `stream_idle_timeout` cuts a silent stream
//! (and bounds any response whose server goes quiet mid-body, streaming or not, on HTTP/1.1 and
//! HTTP/2), and HTTP/2 to a server multiplexes 100 concurrent client requests over one connection.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::grpc::{self, GrpcBackend};
use support::rawconn::RawConn;
use support::recorder::{ok_naming, Act, Recorder};
use support::{Weir, WAIT};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// A plain HTTP/1.1 backend whose every response body is fed by the test through a channel:
/// each accepted request hands its sender to the test.
async fn channel_backend() -> (std::net::SocketAddr, mpsc::Receiver<mpsc::Sender<Bytes>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let tx = tx.clone();
                    async move {
                        let (btx, brx) = mpsc::channel::<Bytes>(16);
                        let _ = tx.send(btx).await;
                        let frames = tokio_stream::wrappers::ReceiverStream::new(brx)
                            .map(|b| Ok::<_, Infallible>(Frame::data(b)));
                        let body = StreamBody::new(frames);
                        let resp = http::Response::builder()
                            .header("content-type", "text/event-stream")
                            .header("cache-control", "no-cache")
                            .body(body)
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

use tokio_stream::StreamExt as _;

fn config(addr: std::net::SocketAddr, route_extra: &str) -> String {
    format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n\
         pools:\n  p:\n    servers:\n      - address: \"{addr}\"\n\
         routes:\n  - name: s\n    pool: p\n{route_extra}"
    )
}

async fn open_stream(weir: &Weir) -> hyper::body::Incoming {
    let c = support::client::client();
    let req = weir
        .request("GET", "h", "/events")
        .body(support::empty())
        .unwrap();
    let resp = timeout(WAIT, c.request(req)).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    resp.into_body()
}

/// Next data chunk, or `None` at the end (`Err` text on an error).
async fn next_chunk(body: &mut hyper::body::Incoming) -> Result<Option<Bytes>, String> {
    loop {
        match timeout(WAIT, body.frame())
            .await
            .map_err(|_| "no frame in time".to_string())?
        {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    return Ok(Some(d));
                }
            }
        }
    }
}

/// Each event is read by the client before the server produces the next one (the server waits
/// for that), every 200 ms, for 3 s: far past the route's 1 s `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_one_by_one_past_the_route_timeout() {
    let (addr, mut bodies) = channel_backend().await;
    let weir = Weir::start(&config(addr, "    timeout: 1s\n")).await;
    let mut body = open_stream(&weir).await;
    let tx = timeout(WAIT, bodies.recv()).await.unwrap().unwrap();
    for i in 0..15 {
        let event = format!("id: {i}\ndata: event {i}\n\n");
        tx.send(Bytes::from(event.clone())).await.unwrap();
        let mut got = String::new();
        while got.len() < event.len() {
            let chunk = next_chunk(&mut body)
                .await
                .unwrap_or_else(|e| panic!("event {i}: {e}"))
                .unwrap_or_else(|| panic!("stream ended before event {i}"));
            got.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert_eq!(got, event, "event {i} arrived alone and whole");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(tx);
    assert_eq!(next_chunk(&mut body).await, Ok(None));
}

/// A download of one byte every 300 ms for 3 s lives past `timeout: 1s` and
/// `stream_idle_timeout: 1s`; a silent stream is cut after `stream_idle_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_live_download_survives_and_a_silent_one_is_cut() {
    let (addr, mut bodies) = channel_backend().await;
    let weir = Weir::start(&config(
        addr,
        "    timeout: 1s\n    stream_idle_timeout: 1s\n",
    ))
    .await;

    let mut body = open_stream(&weir).await;
    let tx = timeout(WAIT, bodies.recv()).await.unwrap().unwrap();
    let feeder = tokio::spawn(async move {
        for _ in 0..10 {
            tx.send(Bytes::from_static(b"x")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut n = 0;
    while let Some(c) = next_chunk(&mut body).await.expect("slow download not cut") {
        n += c.len();
    }
    assert_eq!(n, 10);
    feeder.await.unwrap();

    let mut body = open_stream(&weir).await;
    let tx = timeout(WAIT, bodies.recv()).await.unwrap().unwrap();
    tx.send(Bytes::from_static(b"data: one\n\n")).await.unwrap();
    assert!(next_chunk(&mut body).await.unwrap().is_some());
    // Silence (the sender is kept open): weir ends the response with an error.
    let end = next_chunk(&mut body).await;
    assert!(
        end.as_ref().is_err_and(|e| e != "no frame in time"),
        "a silent stream is cut by weir, not ended cleanly nor left hanging: {end:?}"
    );
    drop(tx);
}

/// An ordinary download whose server sends the head and 5 bytes, then nothing (its connection
/// left open): `stream_idle_timeout` is the bound on every route. The HTTP/1.1 client sees the
/// body cut short (before its `Content-Length`, or before the last chunk) and the connection
/// closed, the HTTP/2 client a reset stream, and no server connection is used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_silent_mid_body_is_cut_on_every_protocol() {
    let rec = Recorder::script(|r, _| {
        let head = if r.line.contains("/chunked") {
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        } else if r.line.contains("/partial") {
            "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello"
        } else {
            return Act::Send(ok_naming(r));
        };
        Act::Send(head.as_bytes().to_vec())
    })
    .await;
    let weir = Weir::start(&config(rec.addr, "    stream_idle_timeout: 500ms\n")).await;
    for path in ["/partial", "/chunked"] {
        let mut c = RawConn::connect(weir.addr()).await;
        let start = std::time::Instant::now();
        c.send(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .await;
        let r = c.response(false).await;
        assert_eq!(r.status, 200, "{path}");
        assert!(r.truncated, "{path}: the body must end cut short");
        assert_eq!(r.body, b"hello", "{path}");
        assert!(start.elapsed() >= Duration::from_millis(500), "{path}");
        assert!(c.closed_within(WAIT).await, "{path}");
    }
    let req = http::Request::builder()
        .uri(format!("http://{}/partial", weir.addr()))
        .body(support::empty())
        .unwrap();
    let e = support::h2c_send(weir.addr(), req)
        .await
        .expect_err("an HTTP/2 client sees the stream reset");
    assert!(e.contains("body error"), "{e}");
    weir.wait_log("an access line with reason=stream_idle_timeout", |l| {
        l.contains("weir::access") && l.contains("reason=stream_idle_timeout")
    })
    .await;

    assert_eq!(fresh_get(&weir, "/after").await, 200);
    let conns: Vec<usize> = rec.requests().iter().map(|r| r.conn).collect();
    assert_eq!(
        conns,
        [0, 1, 2, 3],
        "each request on a fresh server connection"
    );
}

/// 100 concurrent gRPC calls from 10 client connections share one h2c connection to the server.
///
/// weir runs on one worker here. With two, hyper-util's pool has a narrow window in which a
/// second HTTP/2 connection is opened and then thrown away: a request registers as a waiter just
/// before the first connection lands, then takes the freed connecting lock and dials, while the
/// connection it waited for arrives too (seen about once in five runs on a busy 2-core machine).
/// Every request is still multiplexed on the first connection; the count would not be exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_upstream_multiplexes_100_requests_on_one_connection() {
    let b = GrpcBackend::start().await;
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n\
         pools:\n  p:\n    protocol: http2\n    servers:\n      - address: \"{}\"\n\
         routes:\n  - name: g\n    pool: p\n",
        b.addr
    );
    let weir = Weir::start_args(&yaml, &["web"], &["--workers", "1"]).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let c = grpc::h2c_client(weir.addr()).await;
        for _ in 0..10 {
            let mut c = c.clone();
            tasks.push(tokio::spawn(async move {
                // Count(4) takes about 200 ms, so the calls overlap.
                let mut s = grpc::count(&mut c, 4).await.expect("call").into_inner();
                let mut n = 0;
                while s.message().await.expect("item").is_some() {
                    n += 1;
                }
                n
            }));
        }
    }
    for t in tasks {
        assert_eq!(timeout(WAIT * 2, t).await.unwrap().unwrap(), 4);
    }
    assert_eq!(
        b.accepted(),
        1,
        "one upstream connection for 100 concurrent requests"
    );
}

/// A server that sends the head and part of its body, then closes: the client sees the body cut
/// short, and the access log says why (`reason=upstream_body_error`, not `ok`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_breaks_off_mid_body_is_logged_as_such() {
    let rec = Recorder::script(|r, _| {
        if r.line.contains("/broken") {
            Act::SendClose(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello".to_vec())
        } else {
            Act::Send(ok_naming(r))
        }
    })
    .await;
    let weir = Weir::start(&config(rec.addr, "")).await;
    let mut c = RawConn::connect(weir.addr()).await;
    c.send(b"GET /broken HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let r = c.response(false).await;
    assert_eq!(r.status, 200);
    assert!(r.truncated, "the body must end cut short");
    assert!(c.closed_within(WAIT).await);
    let line = weir
        .wait_log("the access line of the broken response", |l| {
            l.contains("weir::access") && l.contains("path=/broken")
        })
        .await;
    assert!(line.contains("reason=upstream_body_error"), "{line}");
    assert_eq!(fresh_get(&weir, "/fine").await, 200);
    let line = weir
        .wait_log("the access line of the whole response", |l| {
            l.contains("weir::access") && l.contains("path=/fine")
        })
        .await;
    assert!(line.contains("reason=ok"), "{line}");
}

/// The status of a GET for `path` on a new connection: what a later client gets once an earlier
/// exchange went wrong.
async fn fresh_get(weir: &Weir, path: &str) -> u16 {
    let req = format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n");
    support::raw_request(weir.addr(), req.into_bytes(), false)
        .await
        .status
}

/// The server refuses an upload before reading it: the client gets the answer whole, its
/// connection is closed (the rest of its body is not wanted; nginx does the same), and the
/// server connection that still held the unsent body is not reused for the next request.
#[tokio::test]
async fn an_early_answer_to_an_upload_reaches_the_client_and_ends_the_upload() {
    let reply = b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nbig!";
    let addr = support::early::answering_before_the_body(reply).await;
    let weir = Weir::start(&config(addr, "")).await;
    let mut c = RawConn::connect(weir.addr()).await;
    let head = "POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 33554432\r\n\r\n";
    assert!(c.send(head.as_bytes()).await);
    // Some of the body, the rest never comes: the connection is cut, not left waiting for it.
    assert!(c.send(&vec![b'x'; 256 * 1024]).await);
    let r = c.response(false).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.text(), "big!");
    let answered = std::time::Instant::now();
    assert!(
        c.closed_within(WAIT).await,
        "the client's connection stayed open"
    );
    eprintln!("closed {:?} after the answer", answered.elapsed());
    assert_eq!(fresh_get(&weir, "/after").await, 413);
}
