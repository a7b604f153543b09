//! `weir demo`: three in-process backends, the proxy on 127.0.0.1:8080 and :8443 (a certificate made
//! on the spot), and the curl commands to try. Uses `routes/demo.yaml` (compiled into the binary).

use crate::app::AppError;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use tokio::net::TcpListener;

const DEMO_YAML: &str = include_str!("../routes/demo.yaml");

pub async fn run() -> Result<(), AppError> {
    let mut yaml = DEMO_YAML.to_string();
    for (i, port) in [9001u16, 9002, 9003].into_iter().enumerate() {
        let name = format!("demo-{}", i + 1);
        let sock = match TcpListener::bind(("127.0.0.1", port)).await {
            Ok(s) => s,
            Err(_) => TcpListener::bind(("127.0.0.1", 0)).await?,
        };
        let addr = sock.local_addr()?;
        yaml = yaml.replace(&format!("127.0.0.1:{port}\""), &format!("{addr}\""));
        tokio::spawn(backend(sock, name));
    }
    let dir = std::env::temp_dir().join(format!("weir-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = crate::tls::self_signed(&["localhost", "127.0.0.1", "demo.weir.test"])
        .map_err(|e| AppError::Bind(format!("demo certificate: {e}")))?;
    let (cert_path, key_path) = (dir.join("demo.pem"), dir.join("demo.key"));
    std::fs::write(&cert_path, cert)?;
    std::fs::write(&key_path, key)?;
    let yaml = yaml
        .replace("certs/dev.pem", &cert_path.display().to_string())
        .replace("certs/dev.key", &key_path.display().to_string());
    let config_path = dir.join("demo.yaml");
    std::fs::write(&config_path, yaml)?;
    let cfg = crate::app::load(&config_path)?;
    let rt = crate::runtime::Runtime::compile(cfg, None, 1)?;
    print_help(&cert_path.display().to_string());
    let result = crate::app::serve(rt, Some(config_path), Default::default()).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn print_help(cert: &str) {
    println!(
        r#"
weir demo is running: HTTP on http://127.0.0.1:8080, HTTPS on https://127.0.0.1:8443
Three demo backends (demo-1, demo-2, demo-3) answer with their name. Try:

  curl -s http://127.0.0.1:8080/api/hello          # round robin over demo-1 and demo-2 (run it twice)
  curl -s http://127.0.0.1:8080/                   # the static pool: demo-3
  curl -si -c /tmp/weir-jar -b /tmp/weir-jar http://127.0.0.1:8080/app    # sticky: same server every time
  curl -s -H 'x-canary: 1' http://127.0.0.1:8080/  # header-based canary routing to the api pool
  curl -s --http2-prior-knowledge http://127.0.0.1:8080/api/h2c            # HTTP/2 cleartext
  curl -s --cacert {cert} https://localhost:8443/api/tls   # HTTPS with ALPN h2
  curl -sk https://127.0.0.1:8443/api/tls          # the same, without checking the certificate

Press Ctrl-C to stop (in-flight requests finish first).
"#
    );
}

async fn backend(sock: TcpListener, name: String) {
    loop {
        let Ok((tcp, peer)) = sock.accept().await else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let body = answer(&name, peer, &req);
                async move {
                    // Read what the client sent, as a real service does, a frame at a time. A server
                    // that answers an upload unread closes the connection under the proxy, whose
                    // write of the rest then fails: a 502 for a POST to the demo, at random.
                    let mut sent = req.into_body();
                    while let Some(Ok(_)) = sent.frame().await {}
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(body))))
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn answer(name: &str, _peer: SocketAddr, req: &Request<Incoming>) -> String {
    if req.uri().path() == "/healthz" {
        return "ok\n".into();
    }
    let h = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    format!(
        "hello from {name}: {} {} (host {}, x-forwarded-for {}, x-forwarded-proto {}, x-request-id {})\n",
        req.method(),
        req.uri(),
        h("host"),
        h("x-forwarded-for"),
        h("x-forwarded-proto"),
        h("x-request-id")
    )
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::{timeout, Duration};

    /// The status line of the next response on `tcp`, whose body is `hello from ...` (read whole).
    async fn next_status(tcp: &mut tokio::net::TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("hello from") {
            let n = timeout(Duration::from_secs(10), tcp.read(&mut buf))
                .await
                .expect("response in time")
                .expect("read");
            assert!(
                n > 0,
                "connection closed: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        text.lines().next().unwrap_or_default().to_string()
    }

    /// A demo backend reads an upload before it answers, so the connection stays open for the
    /// next request (answered unread, hyper closes it, and a proxy writing the rest fails).
    #[tokio::test]
    async fn a_demo_backend_reads_an_upload_and_keeps_the_connection() {
        let sock = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(super::backend(sock, "demo-t".into()));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = vec![b'x'; 1 << 20];
        let head = format!(
            "POST /api/up HTTP/1.1\r\nhost: demo\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&body).await.unwrap();
        assert!(next_status(&mut tcp).await.contains("200"));
        tcp.write_all(b"GET /again HTTP/1.1\r\nhost: demo\r\n\r\n")
            .await
            .unwrap();
        assert!(next_status(&mut tcp).await.contains("200"));
    }
}
