//! One client connection: optional TLS handshake, then hyper-util's auto builder (HTTP/1.1, HTTP/2 by
//! ALPN, or h2c with prior knowledge on the same port), with the listener's limits and timeouts.
//!
//! Every HTTP/2 limit hyper and h2 offer is set here explicitly rather than left to library
//! defaults, so an upgrade cannot loosen them: concurrent streams, header list size, frame size,
//! streams reset by the client before they were served (rapid reset, CVE-2023-44487: beyond the cap
//! the connection gets GOAWAY ENHANCE_YOUR_CALM), streams weir itself had to reset, the per-stream
//! send buffer, and PING keep-alive. h2 also bounds CONTINUATION floods by the header list size.
//! The header-read, idle and send timers are weir's own ([`crate::conn::watchdog`]).

mod idle;
mod parked;

pub use parked::wake_all as wake_parked;

use crate::boxed;
use crate::config::ListenerLimits;
use crate::conn::{ConnState, Expired, SendWatch, Start, Timeouts};
use crate::framing::Tap;
use crate::proxy::{self, ConnInfo, TlsInfo};
use crate::runtime::{ListenerRuntime, Shared};
use bytes::Bytes;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use idle::{Prefixed, Socket, Speaks};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a draining connection keeps being served (with `Connection: close` on HTTP/1.1
/// responses) before an idle one is closed.
pub const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// The HTTP server settings of one listener, built once per reload.
pub struct Http {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
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
        let mut h1 = http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_size)
            .max_headers(limits.max_headers)
            .keep_alive(true)
            .half_close(false);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
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
            h1,
            h2,
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
        Expired::Idle | Expired::Park { .. } => {
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

/// The parts of one client connection, kept together on the heap for its whole life. An async
/// fn keeps every argument for as long as it runs, and a value moved into the next one is kept
/// again; passing this box down instead keeps an idle connection's task small.
struct Client<IO> {
    /// `None` while hyper holds it.
    io: Option<Prefixed<IO>>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    /// Where the next request head's clock starts: when the connection was ready for HTTP, then
    /// when its client sent again after a park. Kept here rather than in the task, which holds
    /// it while parked.
    head_from: Instant,
}

/// The socket for hyper, with the parts it is served with.
type Lent<'a, IO> = (
    Prefixed<IO>,
    &'a Arc<ConnInfo>,
    &'a Arc<Shared>,
    &'a mut watch::Receiver<bool>,
);

impl<IO> Client<IO> {
    /// Lends the socket out (to hyper), with the rest borrowed beside it.
    fn take_io(&mut self) -> Option<Lent<'_, IO>> {
        let io = self.io.take()?;
        Some((io, &self.conn, &self.shared, &mut self.shutdown))
    }
}

/// A connection as accepted.
enum Accepted {
    Plain(Box<Client<Tap<SendWatch>>>),
    Tls(Box<Tls>),
}

/// A TCP connection on a TLS listener, before its handshake.
struct Tls {
    tcp: SendWatch,
    parts: Parts,
}

/// What a connection is served with besides its socket.
struct Parts {
    peer: SocketAddr,
    listener: Arc<ListenerRuntime>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    state: Arc<ConnState>,
}

impl Parts {
    /// The connection's parts put together around its (HTTP-ready) stream.
    fn client<IO>(self, io: Tap<IO>, tls: Option<TlsInfo>) -> Box<Client<Tap<IO>>> {
        Box::new(Client {
            io: Some(Prefixed::new(io, Bytes::new())),
            conn: Arc::new(ConnInfo {
                peer: self.peer,
                listener: self.listener,
                tls: tls.map(Box::new),
                state: self.state,
            }),
            shared: self.shared,
            shutdown: self.shutdown,
            head_from: Instant::now(),
        })
    }
}

/// Serves one accepted TCP connection until it closes or a drain finishes it; `guards` are
/// dropped with it. The parts are put together here, outside any async fn, so that each is
/// kept once.
pub fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerRuntime>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    guards: impl Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let state = Arc::new(ConnState::default());
    let tcp = SendWatch::new(tcp, state.clone());
    let plain = listener.tls.is_none();
    let max_head = listener.http.max_head;
    let parts = Parts {
        peer,
        listener,
        shared,
        shutdown,
        state: state.clone(),
    };
    let accepted = if plain {
        Accepted::Plain(parts.client(Tap::new(tcp, state, max_head), None))
    } else {
        Accepted::Tls(Box::new(Tls { tcp, parts }))
    };
    // A block, not an async fn: an async fn keeps its arguments twice for as long as it runs.
    // Each poll reads the clock once, however often the request path asks (`clock`).
    crate::clock::PerPoll::new(async move {
        let _guards = &guards;
        match accepted {
            Accepted::Plain(client) => serve_http(client).await,
            // Boxed: the TLS half (rustls state, the handshake) is large, and an unboxed branch
            // would make every plain-HTTP connection's task that large too.
            Accepted::Tls(tls) => boxed(serve_tls(tls)).await,
        }
    })
}

async fn serve_tls(t: Box<Tls>) {
    let Tls { tcp, parts } = *t;
    let Some(config) = &parts.listener.tls else {
        return;
    };
    let Some(stream) = handshake(tcp, parts.peer, &parts.listener, config, &parts.shared).await
    else {
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
    let state = parts.state.clone();
    let io = if info.alpn.as_deref() == Some("h2") {
        state.h2.store(true, Relaxed);
        Tap::passive(stream, state)
    } else {
        Tap::new(stream, state, parts.listener.http.max_head)
    };
    serve_http(parts.client(io, Some(info))).await
}

/// The TLS handshake, bounded by the listener's `handshake_timeout` so a silent client cannot hold a
/// socket; counted by outcome.
async fn handshake(
    tcp: SendWatch,
    peer: SocketAddr,
    listener: &ListenerRuntime,
    tls: &crate::tls::ServerTls,
    shared: &Shared,
) -> Option<tokio_rustls::server::TlsStream<SendWatch>> {
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

/// Everything that is not a parked HTTP/1.1 connection is boxed here, so that what an idle
/// connection's task holds is its wait alone.
#[allow(clippy::manual_async_fn)] // an async fn would keep `c` twice
fn serve_http<IO>(mut c: Box<Client<IO>>) -> impl Future<Output = ()>
where
    IO: AsyncRead + AsyncWrite + Socket + Unpin + Send + 'static,
{
    async move {
        c.head_from = crate::clock::tokio_now();
        // HTTP/2 by ALPN is known already; otherwise the first bytes tell (h2c with prior
        // knowledge).
        let started = !c.conn.state.h2.load(Relaxed);
        if started {
            let deadline = c.head_from + c.conn.listener.http.timeouts.header_read;
            match boxed(first_bytes(&mut c, deadline)).await {
                Speaks::Http1 => return serve_h1(c).await,
                Speaks::Http2 => {}
                // Nothing was asked: a silent close, as nginx and HAProxy do for an idle
                // pre-request socket.
                Speaks::Nothing => return,
            }
        }
        let start = Start::Head {
            at: c.head_from,
            started,
        };
        boxed(serve_h2(c, start)).await
    }
}

/// The connection's first bytes, read within the first head's deadline (or a drain's grace).
async fn first_bytes<IO: AsyncRead + Unpin>(c: &mut Client<IO>, deadline: Instant) -> Speaks {
    let Some(io) = c.io.as_mut() else {
        return Speaks::Nothing;
    };
    // The read first: a client's first bytes are usually there when its connection is accepted,
    // and the drain wait is then never set up (registering it costs two lock round trips).
    tokio::select! {
        biased;
        r = tokio::time::timeout_at(deadline, idle::sniff(io)) => r.unwrap_or(Speaks::Nothing),
        _ = drained(&mut c.shutdown) => Speaks::Nothing,
    }
}

async fn serve_h2<IO>(mut c: Box<Client<IO>>, start: Start)
where
    IO: AsyncRead + AsyncWrite + Socket + Unpin + Send + 'static,
{
    let Some((io, conn, shared, shutdown)) = c.take_io() else {
        return;
    };
    let service = service(conn, shared);
    let mut http = Box::pin(
        conn.listener
            .http
            .h2
            .serve_connection(TokioIo::new(io), service),
    );
    let shut = |h: &mut Pin<Box<http2::Connection<_, _, _>>>| h.as_mut().graceful_shutdown();
    run(&mut http, shut, conn, shared, shutdown, start, Park::Never).await;
}

/// When an idle HTTP/1.1 connection gives up hyper's state.
///
/// A connection parks as soon as it goes idle, until its client shows it sends again quickly (it
/// came back within [`PARK_AFTER`] of a park): from then on, it parks only after sitting idle
/// that long. So a client that goes quiet after its requests (most idle keep-alive connections)
/// costs a few hundred bytes at once, and a busy one pays for one rebuild (~1-2 µs), not one per
/// request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Park {
    Never,
    Now,
    /// After [`PARK_AFTER`] idle.
    After,
}

/// How long a connection that has shown it comes back quickly sits idle before it parks.
const PARK_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves HTTP/1.1 requests, parking the connection whenever it sits idle. A block, not an async
/// fn, and nothing but `park` kept from one request to the next: while parked, this future is
/// what the connection's task holds.
#[allow(clippy::manual_async_fn)] // an async fn would keep `c` twice
fn serve_h1<IO>(mut c: Box<Client<IO>>) -> impl Future<Output = ()>
where
    IO: AsyncRead + AsyncWrite + Socket + Unpin + Send + 'static,
{
    async move {
        let mut park = Park::Now;
        loop {
            let start = Start::Head {
                at: c.head_from,
                started: true,
            };
            let Some((io, conn, shared, shutdown)) = c.take_io() else {
                return;
            };
            // Boxed: while parked, only the wait below is left of this connection's task.
            let active = boxed(serve_until_idle(io, conn, shared, shutdown, start, park));
            let Some((io, since)) = active.await else {
                return;
            };
            // Bytes hyper held can only be blank lines before a head (a whole message would have
            // been handed over), so hyper needs more from the socket either way.
            c.io = Some(io);
            let Some(since) = parked::wait(&*c, since).await else {
                tracing::debug!(peer = %c.conn.peer, listener = %c.conn.listener.name, "idle timeout");
                return;
            };
            let now = crate::clock::tokio_now();
            if now.saturating_duration_since(since) < PARK_AFTER {
                park = Park::After;
            }
            c.head_from = now;
        }
    }
}

impl<IO: Socket> parked::Parkable for Client<IO> {
    type Socket = Prefixed<IO>;

    fn socket(&self) -> Option<&Prefixed<IO>> {
        self.io.as_ref()
    }

    fn draining(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn idle_timeout(&self) -> std::time::Duration {
        self.conn.listener.http.timeouts.idle
    }
}

/// One hyper HTTP/1.1 connection over `io`, until the connection ends (`None`) or goes idle in a
/// state it can be rebuilt from, as `park` says: then the socket, with any bytes hyper had read
/// but not used, and the instant it went idle.
async fn serve_until_idle<IO>(
    io: Prefixed<IO>,
    conn: &Arc<ConnInfo>,
    shared: &Arc<Shared>,
    shutdown: &mut watch::Receiver<bool>,
    start: Start,
    park: Park,
) -> Option<(Prefixed<IO>, Instant)>
where
    IO: AsyncRead + AsyncWrite + Socket + Unpin + Send + 'static,
{
    let mut http = conn
        .listener
        .http
        .h1
        .serve_connection(TokioIo::new(io), service(conn, shared))
        .with_upgrades();
    let shut = |h: &mut http1::UpgradeableConnection<_, _>| Pin::new(h).graceful_shutdown();
    let since = match run(&mut http, shut, conn, shared, shutdown, start, park).await {
        Ran::Idle(since) => since,
        Ran::Ended if conn.state.mid_message() => {
            if let Some(parts) = http.into_parts() {
                boxed(linger(parts.io.into_inner())).await;
            }
            return None;
        }
        Ran::Ended | Ran::Cut => return None,
    };
    let parts = http.into_parts()?;
    let mut io = parts.io.into_inner();
    io.unread(parts.read_buf);
    Some((io, since))
}

/// Resolves [`DRAIN_GRACE`] after a drain began.
async fn drained(shutdown: &mut watch::Receiver<bool>) {
    crate::listener::until_set(shutdown).await;
    tokio::time::sleep(DRAIN_GRACE).await;
}

/// The service hyper calls for each request on a connection.
fn service(conn: &Arc<ConnInfo>, shared: &Arc<Shared>) -> Service {
    Service {
        conn: conn.clone(),
        shared: shared.clone(),
    }
}

#[derive(Clone)]
struct Service {
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
}

type Response = hyper::Response<proxy::body::ResponseBody>;

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Service {
    type Response = Response;
    type Error = Infallible;
    // Boxed: hyper keeps one allocation the size of the service future for the connection's
    // whole life, idle or not; boxing the (large) request future per request instead keeps an
    // idle keep-alive connection small.
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        // Counted from the moment hyper hands the request over until its response body is gone.
        let busy = self.conn.state.enter();
        Box::pin(proxy::handle(
            req,
            self.conn.clone(),
            self.shared.clone(),
            busy,
        ))
    }
}

/// Drives a hyper connection (`shut` starts its graceful shutdown) beside the drain signal and
/// the watchdog, until it ends (`None`) or goes idle, as `park` says, in a state it can be parked
/// in: then the instant it went idle.
async fn run<F>(
    http: &mut F,
    shut: impl Fn(&mut F),
    conn: &Arc<ConnInfo>,
    shared: &Arc<Shared>,
    shutdown: &mut watch::Receiver<bool>,
    mut start: Start,
    mut park: Park,
) -> Ran
where
    F: Future<Output = hyper::Result<()>> + Unpin,
{
    let timeouts = conn.listener.http.timeouts;
    let result = loop {
        let park_after = match park {
            Park::After => Some(PARK_AFTER),
            _ => None,
        };
        let watchdog = std::pin::pin!(crate::conn::watchdog(
            &conn.state,
            timeouts,
            start,
            park_after
        ));
        // hyper, or `None` as soon as it waits in a state the connection can park in.
        let served = std::future::poll_fn(|cx| match Pin::new(&mut *http).poll(cx) {
            Poll::Ready(r) => Poll::Ready(Some(r)),
            Poll::Pending if park == Park::Now && conn.state.parkable() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        });
        let drain = std::pin::pin!(crate::listener::until_set(shutdown));
        tokio::select! {
            biased;
            r = served => match r {
                Some(r) => break r,
                None => return Ran::Idle(Instant::now()),
            },
            _ = crate::conn::Gated::new(drain) => {
                // Closing an idle HTTP/1.1 connection at once races a request the client may be
                // sending on it (or one just accepted whose request is still on its way). First let
                // responses carry `Connection: close` (see `proxy::handle`) for a grace period, so busy
                // clients move on by themselves; only then close what is left (HTTP/2 gets GOAWAY).
                tokio::select! {
                    r = &mut *http => break r,
                    _ = tokio::time::sleep(DRAIN_GRACE) => {
                        shut(http);
                        break http.await;
                    }
                }
            }
            expired = crate::conn::Gated::new(watchdog) => {
                if let Expired::Park { since } = expired {
                    if conn.state.parkable() {
                        return Ran::Idle(since);
                    }
                    // Not now (a response still in the socket, say); not again on this one.
                    (start, park) = (Start::Idle { since }, Park::Never);
                    continue;
                }
                match farewell(expired, conn, shared) {
                    Farewell::Close => {}
                    Farewell::Graceful => {
                        shut(http);
                        let _ = tokio::time::timeout(GOODBYE, http).await;
                    }
                    Farewell::Reply => {
                        let _ = tokio::time::timeout(GOODBYE, http).await;
                    }
                }
                return Ran::Cut; // dropping the connection closes it
            }
        }
    };
    if let Err(e) = result {
        log_error(&e, conn, shared);
    }
    Ran::Ended
}

/// How [`run`] left a connection.
enum Ran {
    /// Idle, in a state hyper's connection can be rebuilt from, since then.
    Idle(Instant),
    /// hyper ended it: the client closed, or a response closed it.
    Ended,
    /// The watchdog ended it (a timeout).
    Cut,
}

/// How long a connection that ends while its client is still sending a request (a body weir
/// answered without reading: a 413, a 404 to an upload) goes on reading and dropping what comes,
/// with its own side shut. Closing a socket with unread bytes sends a reset, which can destroy
/// the response still on its way to the client; nginx does the same (`lingering_close`, for up
/// to 30 s by default).
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

/// Shuts the write side, then reads and drops what the client sends until it closes, for at
/// most [`LINGER`].
async fn linger<IO: Socket>(io: Prefixed<IO>) {
    let tcp = io.tcp();
    let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write);
    let mut scratch = vec![0u8; 16 * 1024];
    let drain = async {
        loop {
            if tcp.readable().await.is_err() {
                return;
            }
            match tcp.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// hyper answers unparsable heads itself (400, or 431 when too large); they are logged like any
/// other request weir refused, so no limit fails silently.
fn log_error(e: &hyper::Error, conn: &ConnInfo, shared: &Arc<Shared>) {
    // hyper's kinds are private; its message tells a long URI (414) from a large head.
    if e.is_parse_too_large() && e.to_string().contains("URI too long") {
        proxy::log_refused(conn, shared, 414, "uri_too_long")
    } else if e.is_parse_too_large() {
        proxy::log_refused(conn, shared, 431, "header_too_large")
    } else if e.is_parse() {
        proxy::log_refused(conn, shared, 400, "bad_request")
    }
    tracing::debug!(peer = %conn.peer, listener = %conn.listener.name, error = %e, "connection ended with an error");
}
