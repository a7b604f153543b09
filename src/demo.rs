//! `weir demo`: three in-process backends, the proxy on 127.0.0.1:8080 and :8443 (a certificate made
//! on the spot), and the curl commands to try. Uses `routes/demo.yaml` (compiled into the binary).

use crate::app::AppError;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
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
