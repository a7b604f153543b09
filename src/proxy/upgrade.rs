//! HTTP/1.1 upgrades (WebSocket): forward the handshake, then splice the two connections.
//!
//! An `Upgrade: h2c` from a client is never forwarded: it would let a client speak HTTP/2 to the
//! server past every rule weir applies (h2c smuggling).

use http::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// A client upgrade waiting for the server's 101.
pub struct Pending {
    client: OnUpgrade,
    protocol: HeaderValue,
}

/// Takes the client's upgrade handle when the request asks for one we forward.
pub fn take(parts: &mut http::request::Parts) -> Option<Pending> {
    if parts.version != http::Version::HTTP_11 {
        return None;
    }
    let h = &parts.headers;
    let asks = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let protocol = h.get(header::UPGRADE)?.clone();
    if !asks
        || protocol
            .to_str()
            .map_or(true, |p| p.to_ascii_lowercase().contains("h2c"))
    {
        return None;
    }
    let client = parts.extensions.remove::<OnUpgrade>()?;
    Some(Pending { client, protocol })
}

impl Pending {
    /// Puts back the headers that hop-by-hop removal took, for the server to see the upgrade.
    pub fn restore(&self, h: &mut HeaderMap) {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, self.protocol.clone());
    }

    /// Once both sides have switched protocols, copies bytes both ways until either side closes.
    pub fn splice(self, upstream: OnUpgrade) {
        tokio::spawn(async move {
            let (client, server) = match tokio::join!(self.client, upstream) {
                (Ok(c), Ok(s)) => (c, s),
                (c, s) => {
                    tracing::debug!(
                        client_ok = c.is_ok(),
                        server_ok = s.is_ok(),
                        "upgrade failed"
                    );
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut server = TokioIo::new(server);
            match tokio::io::copy_bidirectional(&mut client, &mut server).await {
                Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
                Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
            }
        });
    }
}
