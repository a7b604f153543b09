//! WebSocket through weir: a tokio-tungstenite echo backend and client over plain and TLS
//! listeners (both directions, a 10 MiB message, the close handshake), half-close, sticky pools,
//! the upgraded-connection gauge, reloads, graceful drain and the route's `stream_idle_timeout`.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::tlsutil::TestCert;
use support::ws::WsBackend;
use support::{Weir, WAIT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

fn config(
    listener_extra: &str,
    pool_extra: &str,
    route_extra: &str,
    backends: &[&WsBackend],
) -> String {
    let servers: String = backends
        .iter()
        .map(|b| format!("      - address: \"{}\"\n", b.addr))
        .collect();
    format!(
        "admin:\n  bind: \"127.0.0.1:0\"\nshutdown_timeout: 3s\n\
         listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n{listener_extra}\
         pools:\n  p:\n    balance: round_robin\n{pool_extra}    servers:\n{servers}\
         routes:\n  - name: ws\n    match:\n      path_prefix: \"/\"\n    pool: p\n{route_extra}"
    )
}

async fn next_text<S>(ws: &mut WebSocketStream<S>) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match timeout(WAIT, ws.next()).await.expect("message in time") {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Greeting from the server, echoes both ways, a 10 MiB binary message, then the close handshake.
async fn exercise<S>(mut ws: WebSocketStream<S>, backend: &str)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    assert_eq!(next_text(&mut ws).await, format!("hello from {backend}"));
    for i in 0..5 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(next_text(&mut ws).await, format!("m{i}"));
    }
    let big: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    match timeout(WAIT, ws.next())
        .await
        .expect("echo of 10 MiB in time")
    {
        Some(Ok(Message::Binary(b))) => assert!(b[..] == big[..], "10 MiB echo differs"),
        other => panic!("expected the binary echo, got {other:?}"),
    }
    ws.close(None).await.unwrap();
    // The server's close frame comes back, then the stream ends.
    loop {
        match timeout(WAIT, ws.next()).await.expect("close in time") {
            Some(Ok(Message::Close(_))) => {}
            Some(Ok(m)) => panic!("unexpected message after close: {m:?}"),
            None | Some(Err(_)) => break,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_plain_listener() {
    let b = WsBackend::start("a").await;
    let weir = Weir::start(&config("", "", "", &[&b])).await;
    let (ws, resp) = tokio_tungstenite::connect_async(format!("ws://{}/chat", weir.addr()))
        .await
        .expect("handshake through weir");
    assert_eq!(resp.status(), 101);
    exercise(ws, "a").await;
    let hs = b.handshakes.lock().unwrap()[0].clone();
    let get = |n: &str| hs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert!(
        get("x-forwarded-for").is_some(),
        "forwarded headers added: {hs:?}"
    );
    assert_eq!(get("upgrade").as_deref(), Some("websocket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::new(dir.path());
    let b = WsBackend::start("a").await;
    let weir = Weir::start(&config(&cert.listener_tls(), "", "", &[&b])).await;
    let tls = cert.connect(weir.addr(), &["http/1.1"]).await;
    let req = "wss://localhost/chat".into_client_request().unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, tls)
        .await
        .expect("handshake over TLS");
    assert_eq!(resp.status(), 101);
    exercise(ws, "a").await;
}

/// A raw upgrade backend: after the 101 it reads until the client's EOF, then answers how many
/// bytes it got and closes. It sees EOF only if weir passes the client's half-close on.
async fn half_close_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_is_passed_on() {
    let (addr, _task) = half_close_backend().await;
    let yaml = format!(
        "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\n\
         pools:\n  p:\n    servers:\n      - address: \"{addr}\"\n\
         routes:\n  - name: ws\n    pool: p\n"
    );
    let weir = Weir::start(&yaml).await;
    let mut s = tokio::net::TcpStream::connect(weir.addr()).await.unwrap();
    s.write_all(
        b"GET /x HTTP/1.1\r\nhost: h\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
          sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        timeout(WAIT, s.read_exact(&mut byte))
            .await
            .unwrap()
            .unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(&[7u8; 1000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    timeout(WAIT, s.read_to_end(&mut rest))
        .await
        .expect("answer after half-close")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), "got 1000 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_is_set_on_the_101_and_routes_reconnects() {
    let a = WsBackend::start("a").await;
    let b = WsBackend::start("b").await;
    let weir = Weir::start(&config(
        "",
        "    sticky:\n      cookie: wsid\n",
        "",
        &[&a, &b],
    ))
    .await;
    let url = format!("ws://{}/chat", weir.addr());
    let (mut ws, resp) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let cookie = resp
        .headers()
        .get("set-cookie")
        .expect("sticky cookie on the 101")
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(cookie.starts_with("wsid="), "{cookie}");
    let first = next_text(&mut ws).await;
    for _ in 0..6 {
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert!(resp.headers().get("set-cookie").is_none(), "already pinned");
        assert_eq!(next_text(&mut ws).await, first, "pinned to the same server");
    }
    let hs = a.handshakes.lock().unwrap().clone();
    let hs2 = b.handshakes.lock().unwrap().clone();
    assert!(
        hs.iter()
            .chain(hs2.iter())
            .flatten()
            .all(|(k, v)| k != "cookie" || !v.contains("wsid=")),
        "weir's cookie is stripped before the server"
    );
}

async fn metric(admin: std::net::SocketAddr, name: &str) -> Option<f64> {
    let c = support::client::client();
    let req = http::Request::get(format!("http://{admin}/metrics"))
        .body(support::empty())
        .unwrap();
    let text = support::send(&c, req).await.text();
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counted_survive_reload_and_closed_at_the_end_of_the_drain() {
    let b = WsBackend::start("a").await;
    let mut weir = Weir::start(&config("", "", "", &[&b])).await;
    let admin = support::control::Admin::of(&weir).await.addr;
    let gauge = "weir_active_upgraded_connections";
    assert_eq!(metric(admin, gauge).await, Some(0.0));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/chat", weir.addr()))
        .await
        .unwrap();
    next_text(&mut ws).await;
    assert_eq!(metric(admin, gauge).await, Some(1.0));

    // A reload (with a changed route) leaves the spliced connection alone.
    let path = weir.dir().unwrap().join("weir.yaml");
    std::fs::write(&path, config("", "", "    timeout: 5s\n", &[&b])).unwrap();
    weir.signal("HUP");
    weir.wait_log("configuration reloaded", |l| {
        l.contains("configuration reloaded")
    })
    .await;
    ws.send(Message::text("after reload")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "after reload");
    assert_eq!(metric(admin, gauge).await, Some(1.0));

    // Draining: still open (and working) while the drain runs, closed when it ends (3 s).
    weir.signal("TERM");
    weir.wait_log("draining", |l| l.contains("draining")).await;
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        ws.send(Message::text(format!("draining {i}")))
            .await
            .unwrap();
        assert_eq!(next_text(&mut ws).await, format!("draining {i}"));
    }
    let status = weir
        .wait_exit(WAIT)
        .await
        .expect("weir exits at the end of the drain");
    assert!(status.success());
    let end = timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the WebSocket is closed once weir has exited");
    assert!(
        weir.stderr().contains("shutdown_timeout reached"),
        "{}",
        weir.stderr()
    );
}

/// With `stream_idle_timeout: 1s`: client-only and server-only activity each keep the connection
/// open well past 1 s; silence closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_counts_both_directions() {
    let b = WsBackend::start("a").await;
    let weir = Weir::start(&config("", "", "    stream_idle_timeout: 1s\n", &[&b])).await;

    // Client → server only (the backend swallows messages).
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/sink", weir.addr()))
        .await
        .unwrap();
    next_text(&mut ws).await;
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ws.send(Message::text(format!("{i}")))
            .await
            .expect("still open");
    }
    // Silence: closed by weir after about 1 s.
    let closed = timeout(WAIT, async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle upgraded connection is closed");

    // Server → client only.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/tick", weir.addr()))
        .await
        .unwrap();
    next_text(&mut ws).await;
    for i in 0..10 {
        assert_eq!(next_text(&mut ws).await, format!("tick {i}"));
    }
}
