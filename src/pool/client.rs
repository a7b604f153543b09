//! The pooled HTTP client of one pool: keep-alive reuse with bounded idle connections per server.
//!
//! Each pool owns its own client, so connections are never shared between pools whose TLS identity
//! (CA, SNI) differs, which keying hyper-util's pool by host:port alone would otherwise allow.

use crate::config::{PoolConfig, UpstreamProtocol};
use crate::proxy::body::ForwardBody;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
pub type UpstreamClient = Client<Timed<Connector>, ForwardBody>;

/// Whether the pool's connections are always HTTP/1.1 (no HTTP/2 by ALPN or configuration), so
/// [`super::h1`] can drive them.
pub fn http1_only(cfg: &PoolConfig) -> bool {
    matches!(
        (cfg.protocol, cfg.tls.is_some()),
        (UpstreamProtocol::Http1, _) | (UpstreamProtocol::Auto, false)
    )
}

/// TCP (and, for a TLS pool, TLS with its CA and SNI) connections to the pool's servers, offering
/// by ALPN the protocols the pool's `protocol` allows.
pub fn connector(cfg: &PoolConfig) -> Result<Connector, crate::tls::TlsError> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_keepalive(Some(std::time::Duration::from_secs(60)));
    http.enforce_http(false);
    let tls = match &cfg.tls {
        Some(up) => crate::tls::client_config(up)?,
        None => crate::tls::client_config(&crate::config::UpstreamTls {
            ca: None,
            sni: None,
        })?,
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match &cfg.tls.as_ref().and_then(|t| t.sni.clone()) {
        Some(sni) => builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(
            rustls::pki_types::ServerName::try_from(sni.clone()).map_err(|e| {
                crate::tls::TlsError::File {
                    path: "sni".into(),
                    message: e.to_string(),
                }
            })?,
        )),
        None => builder,
    };
    Ok(match (cfg.protocol, http1_only(cfg)) {
        (_, true) => builder.enable_http1().wrap_connector(http),
        (UpstreamProtocol::Http2, _) => builder.enable_http2().wrap_connector(http),
        _ => builder.enable_all_versions().wrap_connector(http),
    })
}

/// hyper-util's pooled client: HTTP/2 pools, ALPN-chosen protocols, upgrades and health probes.
pub fn build(cfg: &PoolConfig, connector: Connector) -> UpstreamClient {
    let http2 = cfg.protocol == UpstreamProtocol::Http2;
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(cfg.idle_timeout)
        .pool_max_idle_per_host(cfg.max_idle_per_server)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(http2)
        .http1_preserve_header_case(false)
        .set_host(false)
        .build(Timed(connector))
}

/// How long the TCP (and TLS) setup of an upstream connection took, and when it finished.
///
/// hyper-util copies a connection's `Connected::extra` into the extensions of every response on
/// it, so the proxy can tell a request that paid for a new connection (finished after the request
/// was sent) from one that reused a pooled connection, and log the connect time of the former.
#[derive(Debug, Clone, Copy)]
pub struct ConnectTiming {
    pub took: std::time::Duration,
    pub done_at: std::time::Instant,
}

/// Wraps the pool's connector to stamp each new connection with its [`ConnectTiming`].
#[derive(Clone, Debug)]
pub struct Timed<C>(C);

impl<C> tower_service::Service<http::Uri> for Timed<C>
where
    C: tower_service::Service<http::Uri> + Clone + Send + 'static,
    C::Future: Send + 'static,
{
    type Response = TimedIo<C::Response>;
    type Error = C::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let start = std::time::Instant::now();
        let fut = self.0.call(uri);
        Box::pin(async move {
            let io = fut.await?;
            let done_at = std::time::Instant::now();
            Ok(TimedIo {
                io,
                timing: ConnectTiming {
                    took: done_at - start,
                    done_at,
                },
            })
        })
    }
}

/// An upstream connection that remembers its [`ConnectTiming`].
#[derive(Debug)]
pub struct TimedIo<T> {
    io: T,
    timing: ConnectTiming,
}

impl<T: Connection> Connection for TimedIo<T> {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.timing)
    }
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for TimedIo<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for TimedIo<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}
