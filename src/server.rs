//! One client connection: optional TLS handshake, then hyper-util's auto builder (HTTP/1.1, HTTP/2 by
//! ALPN, or h2c with prior knowledge on the same port), with the listener's limits and timeouts.
//!
//! Every HTTP/2 limit hyper and h2 offer is set here explicitly rather than left to library
//! defaults, so an upgrade cannot loosen them: concurrent streams, header list size, frame size,
//! streams reset by the client before they were served (rapid reset, CVE-2023-44487: beyond the cap
//! the connection gets GOAWAY ENHANCE_YOUR_CALM), streams weir itself had to reset, the per-stream
//! send buffer, and PING keep-alive. h2 also bounds CONTINUATION floods by the header list size.
//! The header-read, idle and send timers are weir's own ([`crate::conn::watchdog`]).

use crate::config::ListenerLimits;
use crate::conn::{ConnState, Expired, SendWatch, Timeouts};
use crate::framing::Tap;
use crate::proxy::{self, ConnInfo, TlsInfo};
use crate::runtime::{ListenerRuntime, Shared};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// How long a draining connection keeps being served (with `Connection: close` on HTTP/1.1
/// responses) before an idle one is closed.
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The HTTP server settings of one listener, built once per reload.
pub struct Http {
    builder: auto::Builder<TokioExecutor>,
    timeouts: Timeouts,
    max_head: usize,
}

/// Streams a client may reset before weir has served them, per connection (rapid reset).
const MAX_PENDING_ACCEPT_RESETS: usize = 50;
/// Streams weir may reset for protocol errors before it closes the connection.
const MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Response bytes buffered per HTTP/2 stream before backpressure reaches the server.
const H2_SEND_BUFFER: usize = 256 * 1024;

impl Http {
    pub fn new(limits: &ListenerLimits) -> Http {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_size)
            .max_headers(limits.max_headers)
            .keep_alive(true)
            .half_close(false);
        b.http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(limits.max_header_size as u32)
            .max_frame_size(limits.http2_max_frame_size)
            .max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS))
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .max_send_buf_size(H2_SEND_BUFFER)
            .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
            .keep_alive_timeout(std::time::Duration::from_secs(20))
            .enable_connect_protocol();
        Http {
            builder: b,
            timeouts: Timeouts {
                header_read: limits.header_read_timeout,
                idle: limits.idle_timeout,
                send: limits.send_timeout,
            },
            max_head: limits.max_header_size,
        }
    }
}

/// How long a connection the watchdog ended may take to say goodbye: it has nothing to finish,
/// or nothing it will finish.
const GOODBYE: std::time::Duration = std::time::Duration::from_secs(1);

/// How a connection the watchdog ended goes.
enum Farewell {
    /// Dropped at once.
    Close,
    /// hyper's graceful shutdown (GOAWAY on HTTP/2), bounded by [`GOODBYE`].
    Graceful,
    /// hyper is driven on (bounded by [`GOODBYE`]) so the tap writes the reply set in the state.
    Reply,
}

/// Logs and counts the watchdog's verdict and chooses the goodbye.
fn farewell(expired: Expired, conn: &ConnInfo, shared: &Arc<Shared>) -> Farewell {
    let (peer, listener) = (conn.peer, &conn.listener.name);
    match expired {
        Expired::Idle => {
            tracing::debug!(%peer, %listener, "idle timeout");
            Farewell::Graceful
        }
        // Nothing was asked: a silent close, as nginx and HAProxy do for an idle pre-request socket.
        Expired::Head { started: false } => Farewell::Close,
        Expired::Head { started: true } => {
            tracing::debug!(%peer, %listener, "header read timeout");
            let e = proxy::error::ProxyError::HeaderTimeout;
            proxy::log_refused(conn, shared, e.status().as_u16(), e.reason());
            if conn.state.answer(e.raw_reply(conn.listener.hsts.as_ref())) {
                Farewell::Reply
            } else {
                Farewell::Close
            }
        }
        Expired::Send => {
            tracing::debug!(%peer, %listener, reason = "send_timeout", "the client took no response bytes for send_timeout; closing");
            if !conn.state.cut_by_send_timeout() {
                // The last response was handed over and logged already; count the cut here.
                shared.metrics.local_reply("send_timeout");
            }
            // GOAWAY if the socket takes it; the streams it would wait for are stalled.
            if conn.state.h2.load(Relaxed) {
                Farewell::Graceful
            } else {
                Farewell::Close
            }
        }
    }
}

/// Serves one accepted TCP connection until it closes or a drain finishes it.
pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerRuntime>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let state = Arc::new(ConnState::default());
    let conn = |tls| {
        Arc::new(ConnInfo {
            peer,
            listener: listener.clone(),
            tls,
            state: state.clone(),
        })
    };
    let max_head = listener.http.max_head;
    let tcp = SendWatch::new(tcp, state.clone());
    let Some(tls) = &listener.tls else {
        let io = Tap::new(tcp, state.clone(), max_head);
        return serve_http(io, conn(None), shared, shutdown).await;
    };
    // Boxed: the TLS half of this future (rustls state, the handshake) is large, and an unboxed
    // branch would make every plain-HTTP connection's task that large too.
    let tls = Tls {
        tcp,
        peer,
        config: tls,
        state: state.clone(),
    };
    Box::pin(serve_tls(tls, conn, listener.clone(), shared, shutdown)).await
}

/// A TCP connection on a TLS listener, before its handshake.
struct Tls<'a> {
    tcp: SendWatch<TcpStream>,
    peer: SocketAddr,
    config: &'a crate::tls::ServerTls,
    state: Arc<ConnState>,
}

async fn serve_tls(
    Tls {
        tcp,
        peer,
        config: tls,
        state,
    }: Tls<'_>,
    conn: impl Fn(Option<TlsInfo>) -> Arc<ConnInfo>,
    listener: Arc<ListenerRuntime>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let max_head = listener.http.max_head;
    let Some(stream) = handshake(tcp, peer, &listener, tls, &shared).await else {
        return;
    };
    let (_, sc) = stream.get_ref();
    let info = TlsInfo {
        sni: sc.server_name().map(str::to_owned),
        alpn: sc
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        client_subject: sc
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| crate::tls::subject(c)),
        version: match sc.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "unknown",
        },
    };
    // HTTP/2 framing has no Content-Length/Transfer-Encoding ambiguity to watch for.
    if info.alpn.as_deref() == Some("h2") {
        state.h2.store(true, Relaxed);
        let io = Tap::passive(stream, state.clone());
        serve_http(io, conn(Some(info)), shared, shutdown).await
    } else {
        let io = Tap::new(stream, state.clone(), max_head);
        serve_http(io, conn(Some(info)), shared, shutdown).await
    }
}

/// The TLS handshake, bounded by the listener's `handshake_timeout` so a silent client cannot hold a
/// socket; counted by outcome.
async fn handshake(
    tcp: SendWatch<TcpStream>,
    peer: SocketAddr,
    listener: &ListenerRuntime,
    tls: &crate::tls::ServerTls,
    shared: &Shared,
) -> Option<tokio_rustls::server::TlsStream<SendWatch<TcpStream>>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let timeout = listener
        .config
        .tls
        .as_ref()
        .map_or(std::time::Duration::from_secs(10), |t| t.handshake_timeout);
    let (outcome, stream) = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => ("ok", Some(s)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, listener = %listener.name, error = %e, "TLS handshake failed");
            ("failed", None)
        }
        Err(_) => {
            tracing::debug!(%peer, listener = %listener.name, "TLS handshake timed out");
            ("timeout", None)
        }
    };
    let label = crate::metrics::OutcomeLabels { outcome };
    shared.metrics.tls_handshakes.get_or_create(&label).inc();
    stream
}

async fn serve_http<IO>(
    io: IO,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let listener = conn.listener.clone();
    let svc_conn = conn.clone();
    let svc_shared = shared.clone();
    // hyper keeps one allocation the size of the service future for the connection's whole life,
    // idle or not; boxing the (large) request future per request instead keeps an idle keep-alive
    // connection small.
    let service = service_fn(move |req| {
        let conn = svc_conn.clone();
        let shared = svc_shared.clone();
        // Counted from the moment hyper hands the request over until its response body is gone.
        let busy = conn.state.enter();
        let fut = Box::pin(async move { proxy::handle(req, &conn, &shared, busy).await });
        async move { Ok::<_, Infallible>(fut.await) }
    });
    let http = listener
        .http
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(http);
    let watchdog = std::pin::pin!(crate::conn::watchdog(&conn.state, listener.http.timeouts));
    let drain = std::pin::pin!(crate::listener::until_set(&mut shutdown));
    let result = tokio::select! {
        biased;
        r = http.as_mut() => r,
        _ = crate::conn::Gated::new(drain) => {
            // Closing an idle HTTP/1.1 connection at once races a request the client may be
            // sending on it (or one just accepted whose request is still on its way). First let
            // responses carry `Connection: close` (see `proxy::handle`) for a grace period, so busy
            // clients move on by themselves; only then close what is left (HTTP/2 gets GOAWAY).
            tokio::select! {
                r = http.as_mut() => r,
                _ = tokio::time::sleep(DRAIN_GRACE) => {
                    http.as_mut().graceful_shutdown();
                    http.await
                }
            }
        }
        expired = crate::conn::Gated::new(watchdog) => {
            match farewell(expired, &conn, &shared) {
                Farewell::Close => {}
                Farewell::Graceful => {
                    http.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(GOODBYE, http).await;
                }
                Farewell::Reply => {
                    let _ = tokio::time::timeout(GOODBYE, http).await;
                }
            }
            return; // dropping the connection closes it
        }
    };
    if let Err(e) = result {
        // hyper answers unparsable heads itself (400, or 431 when too large); log them like any
        // other request weir refused, so no limit fails silently.
        match e.downcast_ref::<hyper::Error>() {
            // hyper's kinds are private; its message tells a long URI (414) from a large head.
            Some(he) if he.is_parse_too_large() && he.to_string().contains("URI too long") => {
                proxy::log_refused(&conn, &shared, 414, "uri_too_long")
            }
            Some(he) if he.is_parse_too_large() => {
                proxy::log_refused(&conn, &shared, 431, "header_too_large")
            }
            Some(he) if he.is_parse() => proxy::log_refused(&conn, &shared, 400, "bad_request"),
            _ => {}
        }
        tracing::debug!(peer = %conn.peer, listener = %listener.name, error = %e, "connection ended with an error");
    }
}
