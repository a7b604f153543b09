//! The pooled HTTP client of one pool: keep-alive reuse with bounded idle connections per server.
//!
//! Each pool owns its own client, so connections are never shared between pools whose TLS identity
//! (CA, SNI) differs, which keying hyper-util's pool by host:port alone would otherwise allow.

use crate::config::{PoolConfig, UpstreamProtocol};
use crate::proxy::body::ForwardBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
pub type UpstreamClient = Client<Connector, ForwardBody>;

pub fn build(cfg: &PoolConfig) -> Result<UpstreamClient, crate::tls::TlsError> {
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
    let http2 = cfg.protocol == UpstreamProtocol::Http2;
    let connector = match (cfg.protocol, cfg.tls.is_some()) {
        (UpstreamProtocol::Http1, _) | (UpstreamProtocol::Auto, false) => {
            builder.enable_http1().wrap_connector(http)
        }
        (UpstreamProtocol::Http2, _) => builder.enable_http2().wrap_connector(http),
        (UpstreamProtocol::Auto, true) => builder.enable_all_versions().wrap_connector(http),
    };
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(cfg.idle_timeout)
        .pool_max_idle_per_host(cfg.max_idle_per_server)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(http2)
        .http1_preserve_header_case(false)
        .set_host(false)
        .build(connector);
    Ok(client)
}
