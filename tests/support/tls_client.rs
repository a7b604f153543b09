//! A one-request TLS client (rustls, ALPN `h2` or `http/1.1`) for tests that only need to speak
//! HTTPS to weir, not to inspect its certificates (tests/tls.rs has the full-featured one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::time::timeout;

use super::accept_any::AcceptAny;
use super::client::{collect, Body, Resp};
use super::WAIT;

/// The repository's dev certificate and key (SANs: localhost, weir.test, *.weir.test, 127.0.0.1).
pub fn dev_cert_paths() -> (String, String) {
    let dir = env!("CARGO_MANIFEST_DIR");
    (
        format!("{dir}/certs/dev.pem"),
        format!("{dir}/certs/dev.key"),
    )
}

/// A TLS connection to `addr` for `host` (SNI), offering only `alpn`; fails if the server picks
/// anything else.
pub async fn tls_connect(
    addr: SocketAddr,
    host: &str,
    alpn: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(
            provider.signature_verification_algorithms,
        )))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.as_bytes().to_vec()];
    let tcp = timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tls = timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_string())?
    .map_err(|e| format!("TLS handshake: {e}"))?;
    let negotiated = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    if negotiated.as_deref() != Some(alpn.as_bytes()) {
        return Err(format!("ALPN: asked for {alpn}, got {negotiated:?}"));
    }
    Ok(tls)
}

/// Sends `req` (an `https://host/path` URI) over a fresh TLS connection to `addr`, offering only
/// `alpn` (`h2` or `http/1.1`); fails if the server picks anything else.
pub async fn tls_send(
    addr: SocketAddr,
    alpn: &str,
    mut req: Request<Body>,
) -> Result<Resp, String> {
    let host = req.uri().host().unwrap_or("localhost").to_string();
    let tls = tls_connect(addr, &host, alpn).await?;
    let io = TokioIo::new(tls);
    let resp = if alpn == "h2" {
        let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| format!("h2 handshake: {e:?}"))?;
        tokio::spawn(conn);
        timeout(Duration::from_secs(30), s.send_request(req)).await
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("http/1.1 handshake: {e:?}"))?;
        tokio::spawn(conn);
        req.headers_mut()
            .entry(http::header::HOST)
            .or_insert(host.parse().map_err(|_| "bad host")?);
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/".into(), |p| p.to_string());
        *req.uri_mut() = pq.parse().map_err(|_| "bad path")?;
        timeout(Duration::from_secs(30), s.send_request(req)).await
    };
    let resp = resp
        .map_err(|_| "no response head within 30s".to_string())?
        .map_err(|e| format!("request: {e:?}"))?;
    collect(resp).await
}
