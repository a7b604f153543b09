//! HTTP/1.x details through weir, on raw sockets so every byte is visible: `Expect: 100-continue`,
//! HTTP/1.0 clients, `Connection: close`, HEAD and 304 without a body, Content-Length kept when
//! known, and chunked trailers passed on.

mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use support::raw_request;
use support::{Weir, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

type B = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// `/len`: "hello" with a Content-Length; `/304`: Not Modified; `/stream`: two chunks of unknown
/// length; `/trailers`: a chunked body with an `x-checksum` trailer; `/count`: the request body's
/// length.
async fn backend() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let r = http::Response::builder();
                        let resp: Result<http::Response<B>, http::Error> = match req.uri().path() {
                            "/len" => r.body(Full::new(Bytes::from_static(b"hello")).boxed()),
                            "/304" => r
                                .status(304)
                                .header("etag", "\"v1\"")
                                .body(Full::new(Bytes::new()).boxed()),
                            "/stream" => {
                                let frames = tokio_stream::iter([
                                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"part1 "))),
                                    Ok(Frame::data(Bytes::from_static(b"part2"))),
                                ]);
                                r.body(StreamBody::new(frames).boxed())
                            }
                            "/trailers" => {
                                let mut t = http::HeaderMap::new();
                                t.insert("x-checksum", "abc123".parse().unwrap());
                                let frames = tokio_stream::iter([
                                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(
                                        b"payload",
                                    ))),
                                    Ok(Frame::trailers(t)),
                                ]);
                                r.header("trailer", "x-checksum")
                                    .body(StreamBody::new(frames).boxed())
                            }
                            _ => {
                                let n = req
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes().len())
                                    .unwrap_or(0);
                                r.body(Full::new(Bytes::from(format!("got {n}"))).boxed())
                            }
                        };
                        Ok::<_, Infallible>(resp.unwrap())
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

async fn setup() -> Weir {
    let addr = backend().await;
    Weir::start(&format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n\
         pools:\n  p:\n    servers:\n      - address: \"{addr}\"\n\
         routes:\n  - name: r\n    pool: p\n"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_100_before_the_body() {
    let weir = setup().await;
    let mut s = tokio::net::TcpStream::connect(weir.addr()).await.unwrap();
    s.write_all(
        b"POST /count HTTP/1.1\r\nhost: h\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 256];
    let n = timeout(WAIT, s.read(&mut buf))
        .await
        .expect("100 Continue without the body")
        .unwrap();
    let interim = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim:?}");
    s.write_all(b"abcde").await.unwrap();
    let mut got = String::new();
    while !got.contains("got 5") {
        let n = timeout(WAIT, s.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before the answer: {got:?}");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(got.contains("200 OK"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_client_gets_a_close_delimited_or_sized_body() {
    let weir = setup().await;
    let r = raw_request(weir.addr(), b"GET /len HTTP/1.0\r\n\r\n".to_vec(), true).await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("content-length"), Some("5"));
    assert_eq!(
        r.closed,
        Some(true),
        "HTTP/1.0 without keep-alive is closed"
    );

    // A body of unknown length cannot be chunked for HTTP/1.0: it ends with the connection.
    let r = raw_request(
        weir.addr(),
        b"GET /stream HTTP/1.0\r\nhost: h\r\n\r\n".to_vec(),
        true,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    assert!(r.header("transfer-encoding").is_none(), "{}", r.raw);
    assert_eq!(r.text(), "part1 part2");
    assert_eq!(r.closed, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_honoured() {
    let weir = setup().await;
    let r = raw_request(
        weir.addr(),
        b"GET /len HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n".to_vec(),
        true,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.closed, Some(true));
    // Without it, the connection stays open.
    let r = raw_request(
        weir.addr(),
        b"GET /len HTTP/1.1\r\nhost: h\r\n\r\n".to_vec(),
        true,
    )
    .await;
    assert_eq!(r.closed, Some(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_and_304_carry_no_body_and_content_length_is_kept() {
    let weir = setup().await;
    let r = raw_request(
        weir.addr(),
        b"GET /len HTTP/1.1\r\nhost: h\r\n\r\n".to_vec(),
        false,
    )
    .await;
    assert_eq!(
        r.header("content-length"),
        Some("5"),
        "known length kept: {}",
        r.raw
    );
    assert!(r.header("transfer-encoding").is_none());

    // HEAD, then a GET on the same connection: any stray body bytes would corrupt the second.
    let two = b"HEAD /len HTTP/1.1\r\nhost: h\r\n\r\nGET /304 HTTP/1.1\r\nhost: h\r\n\r\nGET /len HTTP/1.1\r\nhost: h\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(weir.addr()).await.unwrap();
    s.write_all(two).await.unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&all).ends_with("\r\n\r\nhello") {
        let n = timeout(WAIT, s.read(&mut buf))
            .await
            .expect("three answers")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&all));
        all.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&all).to_string();
    let answers: Vec<&str> = text.split("HTTP/1.1 ").filter(|a| !a.is_empty()).collect();
    assert_eq!(answers.len(), 3, "{text}");
    assert!(answers[0].starts_with("200"), "{text}");
    assert!(
        answers[0]
            .to_ascii_lowercase()
            .contains("content-length: 5"),
        "HEAD keeps the length: {text}"
    );
    assert!(answers[0].ends_with("\r\n\r\n"), "HEAD has no body: {text}");
    assert!(answers[1].starts_with("304"), "{text}");
    assert!(answers[1].ends_with("\r\n\r\n"), "304 has no body: {text}");
    assert!(answers[1].contains("\"v1\""), "{text}");
    assert!(answers[2].ends_with("hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_trailers_pass_through() {
    let weir = setup().await;
    let mut s = tokio::net::TcpStream::connect(weir.addr()).await.unwrap();
    s.write_all(b"GET /trailers HTTP/1.1\r\nhost: h\r\nte: trailers\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    timeout(WAIT, s.read_to_end(&mut all))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&all).to_ascii_lowercase();
    assert!(text.contains("transfer-encoding: chunked"), "{text}");
    assert!(text.contains("payload"), "{text}");
    let tail = &text[text.find("payload").unwrap()..];
    assert!(
        tail.contains("\r\n0\r\nx-checksum: abc123\r\n\r\n"),
        "trailer after the last chunk: {text:?}"
    );
}
