//! HTTP/2 abuse against the h2c listener: rapid reset (CVE-2023-44487) with the `h2` crate's client,
//! and CONTINUATION floods, HPACK bombs, PING and SETTINGS floods as hand-written frames. Each case
//! passes when weir ends the offending connection (GOAWAY or EOF) within a timeout, nothing abusive
//! reaches the server, weir's RSS stays bounded, and a second, normal client is served afterwards.

mod support;

use std::time::Duration;

use http::{Request, StatusCode};
use support::{empty, h2c_send, servers, Backend, Weir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: weir idles at a few MiB; an unbounded buffer would blow far past this.
const MAX_RSS_KIB: u64 = 200 * 1024;

async fn setup(delay: Duration) -> (Backend, Weir) {
    let b = Backend::builder("b").delay(delay).start().await;
    let yaml = format!(
        "{}    idle_timeout: 2s\npools:\n  p:\n    balance: round_robin\n    servers:\n{}\
         routes:\n  - name: all\n    match:\n      path_prefix: \"/\"\n    pool: p\n",
        support::config::LISTENER,
        servers(&[&b])
    );
    let weir = Weir::start(&yaml).await;
    (b, weir)
}

async fn still_serves(weir: &Weir) {
    let req = Request::builder()
        .uri(format!("http://{}/after", weir.addr()))
        .body(empty())
        .unwrap();
    let r = h2c_send(weir.addr(), req)
        .await
        .expect("a second client is served");
    assert_eq!(r.status, StatusCode::OK);
    let rss = weir.proc_status_kib("VmRSS");
    assert!(rss < MAX_RSS_KIB, "weir RSS {rss} KiB");
    let peak = weir.proc_status_kib("VmHWM");
    eprintln!("weir RSS {rss} KiB, peak {peak} KiB");
    assert!(peak < MAX_RSS_KIB, "weir peak RSS {peak} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway() {
    let (backend, weir) = setup(Duration::from_millis(200)).await;
    let tcp = TcpStream::connect(weir.addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    const N: usize = 20_000;
    let mut sent = 0;
    let mut client = client;
    let flood = async {
        for _ in 0..N {
            client = match client.ready().await {
                Ok(c) => c,
                Err(_) => break,
            };
            let req = Request::builder()
                .uri(format!("http://{}/reset", weir.addr()))
                .body(())
                .unwrap();
            let Ok((_resp, mut stream)) = client.send_request(req, false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            sent += 1;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), flood)
        .await
        .expect("flood loop ended");
    let ended = tokio::time::timeout(Duration::from_secs(20), conn)
        .await
        .expect("weir must close a rapid-reset connection");
    let err = ended.unwrap().err();
    eprintln!("rapid reset: {sent} streams opened and reset; connection ended with {err:?}");
    assert!(
        sent < N,
        "weir accepted all {N} reset streams without closing the connection"
    );
    if let Some(e) = &err {
        assert!(
            e.is_go_away() || e.is_io(),
            "expected GOAWAY or EOF, got {e:?}"
        );
    }
    assert!(
        backend.requests() < sent.max(1),
        "{} of {sent} reset streams reached the server",
        backend.requests()
    );
    still_serves(&weir).await;
}

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// GET / with `:authority` h (static-table indexes plus one literal).
fn request_pseudo_headers() -> Vec<u8> {
    vec![0x82, 0x86, 0x84, 0x01, 0x01, b'h']
}

/// How an abusive connection ended, as read from the server's side of the wire.
#[derive(Debug, Default)]
struct Ending {
    goaway: Option<u32>,
    rst_stream: bool,
    headers: bool,
    eof: bool,
}

/// Reads frames until GOAWAY or EOF (or `limit`), noting what came.
async fn read_until_end(mut rd: tokio::net::tcp::OwnedReadHalf, limit: Duration) -> Ending {
    let mut e = Ending::default();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            match buf[3] {
                GOAWAY if len >= 8 => {
                    e.goaway = Some(u32::from_be_bytes([buf[13], buf[14], buf[15], buf[16]]))
                }
                RST_STREAM => e.rst_stream = true,
                HEADERS => e.headers = true,
                _ => {}
            }
            buf.drain(..9 + len);
        }
        let mut chunk = [0u8; 64 * 1024];
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                e.eof = true;
                return e;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return e,
        }
    }
}

/// Writes `frames()` batches until the peer stops taking them or `total` bytes went out.
async fn flood(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut next: impl FnMut() -> Vec<u8>,
    total: usize,
) -> usize {
    let mut sent = 0;
    while sent < total {
        let batch = next();
        match tokio::time::timeout(Duration::from_secs(5), wr.write_all(&batch)).await {
            Ok(Ok(())) => sent += batch.len(),
            _ => break,
        }
    }
    // Keep the write half open while the reader waits for the server to act.
    tokio::time::sleep(Duration::from_secs(30)).await;
    drop(wr);
    sent
}

async fn raw_h2(
    weir: &Weir,
) -> (
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
) {
    let mut s = TcpStream::connect(weir.addr()).await.unwrap();
    let mut start = PREFACE.to_vec();
    start.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&start).await.unwrap();
    s.into_split()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off() {
    let (backend, weir) = setup(Duration::ZERO).await;
    let (rd, mut wr) = raw_h2(&weir).await;
    // A HEADERS frame without END_HEADERS, then endless CONTINUATION frames of literal fields.
    wr.write_all(&frame(HEADERS, END_STREAM, 1, &request_pseudo_headers()))
        .await
        .unwrap();
    let mut field = vec![0x00, 0x01, b'x', 0x64];
    field.extend(std::iter::repeat_n(b'v', 100));
    let payload: Vec<u8> = field.iter().copied().cycle().take(16_000).collect();
    let cont = frame(CONTINUATION, 0, 1, &payload);
    const TOTAL: usize = 256 << 20;
    let writer = tokio::spawn(flood(wr, move || cont.repeat(16), TOTAL));
    let end = read_until_end(rd, Duration::from_secs(30)).await;
    eprintln!("CONTINUATION flood: {end:?}");
    assert!(
        end.goaway.is_some() || end.eof,
        "connection still open: {end:?}"
    );
    writer.abort();
    assert_eq!(
        backend.requests(),
        0,
        "the flooded request reached the server"
    );
    still_serves(&weir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_bomb_never_reaches_the_server() {
    let (backend, weir) = setup(Duration::ZERO).await;
    let (rd, mut wr) = raw_h2(&weir).await;
    // One 4000-byte field added to the dynamic table, then referenced 3000 times (1 byte each):
    // a 6 KB frame that decodes to ~12 MB of headers.
    let mut block = request_pseudo_headers();
    block.extend([0x40, 0x06]);
    block.extend(b"x-bomb");
    block.extend([0x7f, 0xa1, 0x1e]); // 4000 = 127 + 3873 as an HPACK integer
    block.extend(std::iter::repeat_n(b'a', 4000));
    block.extend(std::iter::repeat_n(0xbe, 3000));
    let mut bytes = Vec::new();
    for stream in (1..40).step_by(2) {
        bytes.extend(frame(HEADERS, END_STREAM | END_HEADERS, stream, &block));
    }
    wr.write_all(&bytes).await.unwrap();
    let writer = tokio::spawn(flood(wr, Vec::new, 0));
    let end = read_until_end(rd, Duration::from_secs(10)).await;
    eprintln!("HPACK bomb: {end:?}");
    assert!(
        end.goaway.is_some() || end.eof || end.rst_stream || end.headers,
        "no answer to an oversized header list: {end:?}"
    );
    writer.abort();
    assert_eq!(
        backend.requests(),
        0,
        "an oversized header list reached the server"
    );
    still_serves(&weir).await;
}

/// PING or SETTINGS frames in bulk, never reading the answers. h2 keeps at most one PONG and one
/// SETTINGS ACK pending and then stops reading, so the flood is held back by TCP; a connection with
/// no stream is closed by `idle_timeout` (2s here), control frames do not keep it alive.
async fn control_flood(frame_bytes: Vec<u8>) {
    let (backend, weir) = setup(Duration::ZERO).await;
    let (rd, wr) = raw_h2(&weir).await;
    let batch = frame_bytes.repeat(4096);
    let writer = tokio::spawn(flood(wr, move || batch.clone(), 64 << 20));
    let end = read_until_end(rd, Duration::from_secs(60)).await;
    eprintln!("control flood: {end:?}");
    assert!(
        end.goaway.is_some() || end.eof,
        "flooding connection still open: {end:?}"
    );
    writer.abort();
    assert_eq!(backend.requests(), 0);
    still_serves(&weir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_is_bounded_and_closed() {
    control_flood(frame(PING, 0, 0, &[7; 8])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_is_bounded_and_closed() {
    control_flood(frame(SETTINGS, 0, 0, &[0x00, 0x03, 0, 0, 0, 100])).await;
}
