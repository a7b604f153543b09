//! HTTP/1.1 upgrades (WebSocket): forward the handshake, then splice the two connections.
//!
//! An `Upgrade: h2c` from a client is never forwarded: it would let a client speak HTTP/2 to the
//! server past every rule weir applies (h2c smuggling).
//!
//! WebSocket over HTTP/2 (RFC 8441: `CONNECT` with `:protocol websocket`) is bridged: the server
//! gets an ordinary HTTP/1.1 `GET` + `Upgrade: websocket` (with a fresh `Sec-WebSocket-Key`), and
//! its 101 becomes the 200 that opens the client's stream. WebSocket frames are the same bytes on
//! both, so the splice copies them unchanged.

use crate::listener::TrackGuard;
use crate::runtime::Shared;
use http::header::{self, HeaderValue};
use http::Method;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A client upgrade waiting for the server's 101.
pub struct Pending {
    client: OnUpgrade,
    /// The client asked by RFC 8441 extended CONNECT over HTTP/2.
    extended_connect: bool,
    protocol: HeaderValue,
    idle: Duration,
    shared: Arc<Shared>,
}

/// Takes the client's upgrade handle when the request asks for one we forward.
pub fn take(
    parts: &mut http::request::Parts,
    idle: Duration,
    shared: &Arc<Shared>,
) -> Option<Pending> {
    if parts.version == http::Version::HTTP_2 {
        return take_extended_connect(parts, idle, shared);
    }
    if parts.version != http::Version::HTTP_11 {
        return None;
    }
    let h = &parts.headers;
    // `Upgrade` first: most requests have none, and then `Connection` need not be read.
    let protocol = h.get(header::UPGRADE)?.clone();
    let asks = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks
        || protocol
            .to_str()
            .map_or(true, |p| p.to_ascii_lowercase().contains("h2c"))
    {
        return None;
    }
    let client = parts.extensions.remove::<OnUpgrade>()?;
    Some(Pending {
        client,
        extended_connect: false,
        protocol,
        idle,
        shared: shared.clone(),
    })
}

/// An RFC 8441 extended CONNECT asking for a WebSocket: the one `CONNECT` weir serves (as the
/// HTTP/1.1 upgrade it stands for); `proxy::check_request` refuses every other.
pub fn is_websocket_connect(method: &Method, extensions: &http::Extensions) -> bool {
    method == Method::CONNECT
        && extensions
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

fn take_extended_connect(
    parts: &mut http::request::Parts,
    idle: Duration,
    shared: &Arc<Shared>,
) -> Option<Pending> {
    if !is_websocket_connect(&parts.method, &parts.extensions) {
        return None;
    }
    let client = parts.extensions.remove::<OnUpgrade>()?;
    Some(Pending {
        client,
        extended_connect: true,
        protocol: HeaderValue::from_static("websocket"),
        idle,
        shared: shared.clone(),
    })
}

impl Pending {
    /// Puts back the headers that hop-by-hop removal took, for the server to see the upgrade; an
    /// extended CONNECT becomes the HTTP/1.1 handshake it stands for.
    pub fn restore(&self, parts: &mut http::request::Parts) {
        let h = &mut parts.headers;
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, self.protocol.clone());
        if self.extended_connect {
            parts.method = Method::GET;
            if let Ok(key) = HeaderValue::from_str(&websocket_key()) {
                h.insert(header::SEC_WEBSOCKET_KEY, key);
            }
            h.entry(header::SEC_WEBSOCKET_VERSION)
                .or_insert(HeaderValue::from_static("13"));
        }
    }

    /// The server's 101, as the client must see it: unchanged for HTTP/1.1; for an extended
    /// CONNECT a 200 without the HTTP/1.1 handshake headers (connection-specific in HTTP/2).
    pub fn answer(&self, parts: &mut http::response::Parts) {
        if self.extended_connect {
            parts.status = http::StatusCode::OK;
            for n in [
                header::CONNECTION,
                header::UPGRADE,
                header::SEC_WEBSOCKET_ACCEPT,
                header::CONTENT_LENGTH,
                header::TRANSFER_ENCODING,
            ] {
                parts.headers.remove(n);
            }
            parts.headers.remove("keep-alive");
        }
    }

    /// Once both sides have switched protocols, copies bytes both ways until both sides have closed
    /// (each half-close is passed on) or nothing has moved either way for the idle timeout.
    ///
    /// Counted from the 101 on, while the client's HTTP connection is still tracked, so a drain
    /// that starts meanwhile cannot miss it; the count ends only when the splice does.
    pub fn splice(self, upstream: OnUpgrade) {
        let guard = Active::enter(&self.shared);
        tokio::spawn(async move {
            let _guard = guard;
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
            match splice_idle(TokioIo::new(client), TokioIo::new(server), self.idle).await {
                Ok((up, down)) => tracing::debug!(up, down, "upgraded connection closed"),
                Err(e) => tracing::debug!(error = %e, "upgraded connection ended"),
            }
        });
    }
}

/// One open upgraded connection in the drain tracker and the gauge.
struct Active {
    _track: TrackGuard,
    shared: Arc<Shared>,
}

impl Active {
    fn enter(shared: &Arc<Shared>) -> Active {
        shared.metrics.upgraded.inc();
        Active {
            _track: shared.upgrades.enter(),
            shared: shared.clone(),
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.shared.metrics.upgraded.dec();
    }
}

/// Copies both ways; fails with `TimedOut` when neither direction moved a byte for `idle`.
pub async fn splice_idle<A, B>(a: A, b: B, idle: Duration) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Send + Unpin,
    B: AsyncRead + AsyncWrite + Send + Unpin,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    let both = async { tokio::try_join!(pipe(ar, bw, &last, start), pipe(br, aw, &last, start)) };
    let watchdog = async {
        loop {
            let seen = Duration::from_millis(last.load(Relaxed));
            let deadline = start + seen + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    };
    tokio::select! {
        r = both => r,
        () = watchdog => Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")),
    }
}

/// One direction: each read is written on at once (no batching) and marks the pair active; EOF is
/// passed on as a write shutdown, leaving the other direction open (half-close).
async fn pipe<R, W>(mut r: R, mut w: W, last: &AtomicU64, start: Instant) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        last.store(start.elapsed().as_millis() as u64, Relaxed);
        if n == 0 {
            w.shutdown().await?;
            return Ok(total);
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        total += n as u64;
        last.store(start.elapsed().as_millis() as u64, Relaxed);
    }
}

/// A fresh `Sec-WebSocket-Key`: base64 of 16 random bytes (RFC 6455 §4.1).
fn websocket_key() -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut raw = [0u8; 18];
    fastrand::fill(&mut raw[..16]);
    let mut out = String::with_capacity(24);
    for c in raw.chunks(3) {
        let n = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        for shift in [18, 12, 6, 0] {
            out.push(char::from(ABC[(n >> shift) as usize & 63]));
        }
    }
    // 16 bytes are 22 base64 digits and "==".
    out.truncate(22);
    out.push_str("==");
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn websocket_key_is_16_bytes_of_base64() {
        let k = super::websocket_key();
        assert_eq!(k.len(), 24);
        assert!(k.ends_with("=="));
        assert_ne!(k, super::websocket_key());
    }
}
