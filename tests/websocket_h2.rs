//! RFC 8441: a WebSocket over an HTTP/2 extended CONNECT from the client (the `h2` crate, raw
//! WebSocket frames on the stream), bridged by weir to an HTTP/1.1 upgrade towards a
//! tokio-tungstenite server; over h2c and over TLS with ALPN h2.

mod support;

use bytes::{Buf, Bytes, BytesMut};
use support::tlsutil::TestCert;
use support::ws::WsBackend;
use support::{Weir, WAIT};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;

fn config(listener_extra: &str, b: &WsBackend) -> String {
    format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n{listener_extra}\
         pools:\n  p:\n    sticky:\n      cookie: wsid\n    servers:\n      - address: \"{}\"\n\
         routes:\n  - name: ws\n    match:\n      path_prefix: \"/\"\n    pool: p\n",
        b.addr
    )
}

/// A masked client frame (RFC 6455 §5.2), payload < 126 bytes.
fn client_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f.into()
}

/// Reads one unmasked server frame: (opcode, payload).
async fn server_frame(recv: &mut h2::RecvStream, buf: &mut BytesMut) -> Option<(u8, Vec<u8>)> {
    loop {
        if buf.len() >= 2 {
            let (op, len7) = (buf[0] & 0x0f, (buf[1] & 0x7f) as usize);
            let (hdr, len) = match len7 {
                126 if buf.len() >= 4 => (4, u16::from_be_bytes([buf[2], buf[3]]) as usize),
                126 => (usize::MAX, 0),
                127 => panic!("unexpectedly large frame"),
                n => (2, n),
            };
            if hdr != usize::MAX && buf.len() >= hdr + len {
                buf.advance(hdr);
                let payload = buf.split_to(len).to_vec();
                return Some((op, payload));
            }
        }
        let chunk = timeout(WAIT, recv.data())
            .await
            .expect("frame in time")?
            .ok()?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
    }
}

async fn exercise<IO>(io: IO, authority: &str, b: &WsBackend)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (client, conn) = h2::client::handshake(io).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    support::eventually("SETTINGS_ENABLE_CONNECT_PROTOCOL from weir", WAIT, || {
        let on = client.is_extended_connect_protocol_enabled();
        async move { on }
    })
    .await;
    let req = http::Request::builder()
        .method("CONNECT")
        .uri(format!("https://{authority}/chat"))
        .header("sec-websocket-version", "13")
        .extension(h2::ext::Protocol::from("websocket"))
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false).expect("send CONNECT");
    let resp = timeout(WAIT, resp).await.unwrap().expect("response");
    assert_eq!(resp.status(), 200, "extended CONNECT accepted");
    assert!(resp.headers().get("upgrade").is_none());
    assert!(resp.headers().get("sec-websocket-accept").is_none());
    assert!(
        resp.headers().get("set-cookie").is_some(),
        "sticky cookie on the 200"
    );
    let mut recv = resp.into_body();
    let mut buf = BytesMut::new();

    let (op, greeting) = server_frame(&mut recv, &mut buf).await.expect("greeting");
    assert_eq!((op, &greeting[..]), (1, &b"hello from a"[..]));
    for i in 0..3 {
        let msg = format!("over h2 {i}");
        send.send_data(client_frame(1, msg.as_bytes()), false)
            .unwrap();
        let (op, echo) = server_frame(&mut recv, &mut buf).await.expect("echo");
        assert_eq!((op, String::from_utf8(echo).unwrap()), (1, msg));
    }
    // Close handshake: the server answers 1000 and the stream ends.
    send.send_data(client_frame(8, &1000u16.to_be_bytes()), false)
        .unwrap();
    let (op, code) = server_frame(&mut recv, &mut buf)
        .await
        .expect("close reply");
    assert_eq!((op, &code[..2]), (8, &1000u16.to_be_bytes()[..]));
    send.send_data(Bytes::new(), true).unwrap();
    assert!(
        server_frame(&mut recv, &mut buf).await.is_none(),
        "stream ends"
    );

    let hs = b.handshakes.lock().unwrap()[0].clone();
    let get = |n: &str| hs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(get("upgrade").as_deref(), Some("websocket"));
    assert_eq!(get("sec-websocket-key").map(|k| k.len()), Some(24));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_connect_over_h2c_bridged_to_http1_upgrade() {
    let b = WsBackend::start("a").await;
    let weir = Weir::start(&config("", &b)).await;
    let tcp = tokio::net::TcpStream::connect(weir.addr()).await.unwrap();
    exercise(tcp, &weir.addr().to_string(), &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_connect_over_tls_alpn_h2() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::new(dir.path());
    let b = WsBackend::start("a").await;
    let weir = Weir::start(&config(&cert.listener_tls(), &b)).await;
    let tls = cert.connect(weir.addr(), &["h2"]).await;
    exercise(tls, "localhost", &b).await;
}
