//! Clients that stop taking their responses (`send_timeout`): an HTTP/1.1 client that never reads,
//! an HTTP/2 client that never opens its flow-control window. Each is closed within a few seconds
//! of the timeout, its server connection is broken off, and other clients are served meanwhile; a
//! client that reads in steps, and a server that takes its time, are not cut.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use support::config::LISTENER;
use support::rawconn::RawConn;
use support::{empty, h2c_send, servers, Backend, Weir, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// Far more than every socket buffer between the server and the client holds.
const BIG: u64 = 64 << 20;
const SEND_TIMEOUT: Duration = Duration::from_millis(500);
/// "Within a few seconds" of the timeout, on a busy machine.
const CUT_WITHIN: Duration = Duration::from_secs(10);

fn config(b: &Backend) -> String {
    format!(
        "{LISTENER}    send_timeout: 500ms\npools:\n  p:\n    servers:\n{}\
         routes:\n  - name: all\n    pool: p\n",
        servers(&[b])
    )
}

async fn expect_send_timeout_logged(weir: &Weir) -> String {
    weir.wait_log("an access line with reason=send_timeout", |l| {
        l.contains("weir::access") && l.contains("reason=send_timeout")
    })
    .await
}

async fn expect_server_connection_broken(b: &Backend) {
    support::eventually("the server's connection to be broken off", WAIT, || async {
        b.broken_connections() >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_stops_reading_is_cut_and_its_server_connection_closed() {
    let b = Backend::start("b").await;
    let weir = Weir::start(&config(&b)).await;
    let mut stuck = RawConn::connect(weir.addr()).await;
    let start = Instant::now();
    let get = format!("GET /big?bytes={BIG} HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(stuck.send(get.as_bytes()).await);

    assert_eq!(
        weir.get("h", "/other").await.status,
        200,
        "served meanwhile"
    );
    let line = expect_send_timeout_logged(&weir).await;
    let took = start.elapsed();
    assert!(
        took >= SEND_TIMEOUT && took < CUT_WITHIN,
        "cut after {took:?}"
    );
    assert!(line.contains("status=200"), "{line}");
    expect_server_connection_broken(&b).await;
    // Reading now drains what was already in flight, then the end: the response was cut short.
    let r = stuck.response(false).await;
    assert_eq!(r.status, 200);
    assert!(
        r.truncated && (r.body.len() as u64) < BIG,
        "{} bytes",
        r.body.len()
    );
}

/// Reads whatever has arrived every 100 ms (4 MiB at most): far below the timeout between reads,
/// while weir's writes find the socket full in between. (Like nginx's `send_timeout`, progress
/// is seen when the kernel reports room in the socket's send buffer, which it does once about a
/// third of that buffer has drained; a reader must take that much per `send_timeout`, which at
/// the 60s default is a few KiB/s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_in_steps_is_not_cut() {
    let b = Backend::start("b").await;
    let weir = Weir::start(&config(&b)).await;
    let len: usize = 32 << 20;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2 << 20).unwrap();
    let mut s = timeout(WAIT, socket.connect(weir.addr()))
        .await
        .unwrap()
        .unwrap();
    let get = format!("GET /big?bytes={len} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    s.write_all(get.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let (mut first, mut total) = (Vec::new(), 0);
    let start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                if first.is_empty() {
                    first = buf[..n].to_vec();
                }
                total += n;
            }
            other => panic!("read failed: {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(120), "too slow");
    }
    let head_end = first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(first.starts_with(b"HTTP/1.1 200"));
    assert_eq!(total - head_end, len, "the whole body arrived");
    assert!(!weir.stderr().contains("reason=send_timeout"));
}

/// A server that answers after 1.5 s (three send timeouts): waiting for it is not the client's
/// fault, on either protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_is_not_cut() {
    let b = Backend::builder("slow")
        .delay(Duration::from_millis(1500))
        .start()
        .await;
    let weir = Weir::start(&config(&b)).await;
    let h2 = Request::builder()
        .uri(format!("http://{}/poll", weir.addr()))
        .body(empty())
        .unwrap();
    let (h1, h2) = tokio::join!(weir.get("h", "/poll"), h2c_send(weir.addr(), h2));
    assert_eq!(h1.status, 200);
    assert_eq!(h1.seen().uri, "/poll");
    let h2 = h2.expect("the HTTP/2 long poll is answered");
    assert_eq!(h2.status, 200);
    assert_eq!(h2.seen().uri, "/poll");
    assert!(!weir.stderr().contains("reason=send_timeout"));
}

/// SETTINGS_INITIAL_WINDOW_SIZE 0 and never a WINDOW_UPDATE: the response head arrives (HEADERS
/// are not flow-controlled), no DATA can, and the socket is idle, not full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_never_opens_its_window_is_closed() {
    let b = Backend::start("b").await;
    let weir = Weir::start(&config(&b)).await;
    let tcp = tokio::net::TcpStream::connect(weir.addr()).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = Request::builder()
        .uri(format!("http://{}/big?bytes={BIG}", weir.addr()))
        .body(())
        .unwrap();
    let start = Instant::now();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = timeout(WAIT, resp).await.unwrap().expect("response head");
    assert_eq!(resp.status(), 200);

    let other = Request::builder()
        .uri(format!("http://{}/other", weir.addr()))
        .body(empty())
        .unwrap();
    let other = h2c_send(weir.addr(), other).await;
    assert_eq!(other.expect("served meanwhile").status, 200);

    let ended = timeout(CUT_WITHIN, conn)
        .await
        .expect("weir must close a connection that takes no response bytes")
        .unwrap();
    let took = start.elapsed();
    assert!(took >= SEND_TIMEOUT, "closed after {took:?}");
    if let Err(e) = &ended {
        assert!(
            e.is_go_away() || e.is_io(),
            "expected GOAWAY or EOF, got {e:?}"
        );
    }
    expect_send_timeout_logged(&weir).await;
    expect_server_connection_broken(&b).await;
    drop(client);
}
