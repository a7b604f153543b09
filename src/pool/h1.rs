//! HTTP/1.1 upstream connections driven by the request that uses them.
//!
//! hyper-util's pooled client runs each upstream connection as a task of its own, so every request
//! hops from the client connection's task to the upstream connection's task and back (two wake-ups
//! through channels), checks a connection out of a map keyed by a hashed (scheme, authority) behind
//! one mutex, and spawns a task per response to put the connection back. Here an idle connection is
//! a plain value in its server's idle list; the request that takes one polls hyper's `Connection`
//! itself, first while it waits for the response head and then, through the response body
//! ([`Lease`]), while the body streams. An idle connection costs no task at all, and the request's
//! bytes never leave the task that serves the client.
//!
//! Used for plain-HTTP pools and `protocol: http1` pools. HTTP/2 (which multiplexes one connection
//! across requests, so it needs a task of its own), ALPN-chosen protocols and upgrades keep
//! hyper-util's client.

use super::client::{ConnectTiming, Connector};
use crate::proxy::body::ForwardBody;
use http::uri::Authority;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::MaybeHttpsStream::{Http as IoHttp, Https as IoHttps};
use hyper_util::rt::TokioIo;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower_service::Service;

type Io = hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
type Driver = http1::Connection<Io, ForwardBody>;

/// A failed send, sorted the way the retry policy needs.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: the request never left.
    #[error("{0}")]
    Connect(String),
    /// The connection broke or the server answered with something hyper could not parse.
    /// `reused`: on a pooled keep-alive connection (which the server may have closed as the
    /// request went out), not on one opened for this request.
    #[error("{error}")]
    Request { error: String, reused: bool },
    /// No response head by the route's deadline.
    #[error("no response head within the route's timeout")]
    TimedOut,
}

/// One upstream connection: hyper's handle to send on it and the future that does its IO.
struct Conn {
    sender: http1::SendRequest<ForwardBody>,
    /// `None` once it has completed: hyper's dispatcher and its buffers go at once, and a drop is
    /// the one place hyper hands back (`take_message`) any request still queued in it.
    driver: Option<Driver>,
    /// The response-head deadline of the request on this connection, kept from one request to
    /// the next: moving a registered tokio timer to a later deadline is one atomic store, where
    /// a timer per request was inserted into and removed from the runtime's wheel under its lock
    /// (~1.2k instructions per request with tokio's `timeout`). It stays registered while the
    /// body streams and the connection waits idle, so a deadline shorter than that wakes the last
    /// request's task once for nothing; dropped with the connection, so a parked one holds none.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Conn {
    /// Runs the connection's IO; false once the connection is over.
    fn poll_driver(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(driver) = &mut self.driver else {
            return false;
        };
        if let Poll::Ready(r) = Pin::new(driver).poll(cx) {
            if let Err(e) = r {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            self.driver = None;
            return false;
        }
        true
    }

    /// Arms this connection's response-head timer for `at`.
    fn arm(&mut self, at: tokio::time::Instant) {
        match &mut self.deadline {
            Some(t) => t.as_mut().reset(at),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Whether the connection can take another request now. It gets two turns of its IO to finish
    /// the last exchange; one that needs longer is dropped rather than waited for.
    fn poll_reusable(&mut self, cx: &mut Context<'_>) -> bool {
        for _ in 0..2 {
            if !self.poll_driver(cx) {
                return false;
            }
            match self.sender.poll_ready(cx) {
                Poll::Ready(Ok(())) => return true,
                Poll::Ready(Err(_)) => return false,
                Poll::Pending => {}
            }
        }
        false
    }
}

struct Idle {
    conn: Slot,
    since: Instant,
}

/// An idle connection, as hyper's connection or, once it has sat idle for [`PARK_AFTER`], as the
/// bare socket (hyper's read and write buffers, 8 KiB or more each, dropped; a fresh hyper
/// connection is built over the socket when a request takes it, which costs no IO).
enum Slot {
    /// Boxed: hyper's connection state is about 1.8 KB, and it moves in and out of the idle list
    /// and through the response on every request.
    Live(Box<Conn>),
    Parked(Box<Io>),
}

/// How long an idle server connection keeps hyper's state.
const PARK_AFTER: Duration = Duration::from_millis(500);

/// The HTTP/1.1 connections of one pool, one idle list per server and worker (see [`H1::list`]).
/// Each list has its own lock, held only to push or pop.
pub struct H1 {
    connector: Connector,
    builder: http1::Builder,
    https: bool,
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// Workers the lists are split over: a connection goes back to the list of the worker whose
    /// event loop watches its socket, so it is only ever used there.
    workers: usize,
    /// Per list, so per worker (as nginx's `keepalive` is per worker process): a cap shared out
    /// over the workers closed connections a busy worker was about to reuse (measured: the first
    /// wave of `wrk -c1000` over two workers had p99 140-190 ms against 60-65 ms).
    max_idle: usize,
    idle_timeout: Duration,
}

impl std::fmt::Debug for H1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1")
            .field("servers", &(self.idle.len() / self.workers))
            .finish()
    }
}

impl H1 {
    pub fn new(
        connector: Connector,
        https: bool,
        servers: usize,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Arc<H1> {
        let mut builder = http1::Builder::new();
        builder
            .preserve_header_case(false)
            .title_case_headers(false);
        let workers = crate::workers::count();
        let h1 = Arc::new(H1 {
            connector,
            builder,
            https,
            idle: (0..servers * workers)
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            workers,
            max_idle,
            idle_timeout,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(reap(Arc::downgrade(&h1)));
        }
        h1
    }

    /// Sends the request `request` makes (origin-form, with its `Host`) to `server` on an idle
    /// connection or a new one, and drives that connection until the response head arrives, or
    /// fails with [`SendError::TimedOut`] at `deadline`. A pooled connection found closed before
    /// the request could be written is replaced without the caller noticing, with the request made
    /// again (its body is still the client's: a streaming body is only taken when first polled).
    ///
    /// The request is made here, at the last moment, rather than passed in: every async fn it
    /// passed through would keep a copy of it (304 bytes) in its future, and each future is
    /// copied whole into its box and about the task on every request.
    ///
    /// A plain function returning a block, not an async fn, for the same reason: an async fn keeps
    /// its arguments twice (as arguments, and as the locals they are moved into).
    #[allow(clippy::manual_async_fn)]
    pub fn send<'a>(
        self: &'a Arc<Self>,
        server: usize,
        authority: &'a Authority,
        request: impl Fn() -> Request<ForwardBody> + Send + 'a,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<(Response<Incoming>, Lease), SendError>> + Send + 'a {
        async move {
            loop {
                let (mut conn, timing) = match self.checkout(server).await {
                    Some(c) => (c, None),
                    None => {
                        let start = Instant::now();
                        // Boxed, like the unpark below: a socket (with TLS state) and its handshake
                        // would otherwise take room in every request's future.
                        let connect = crate::boxed(self.connect(authority));
                        let c = tokio::time::timeout_at(deadline, connect)
                            .await
                            .map_err(|_| SendError::TimedOut)??;
                        let done_at = Instant::now();
                        let took = done_at - start;
                        (c, Some(ConnectTiming { took, done_at }))
                    }
                };
                conn.arm(deadline);
                let mut sending = std::pin::pin!(conn.sender.try_send_request(request()));
                let Some(sent) = exchange(&mut conn, sending.as_mut()).await else {
                    return Err(SendError::TimedOut);
                };
                match sent {
                    Ok(mut resp) => {
                        if let Some(t) = timing {
                            resp.extensions_mut().insert(t);
                        }
                        let lease = Lease {
                            conn: Some(conn),
                            h1: self.clone(),
                            server,
                        };
                        return Ok((resp, lease));
                    }
                    // Never written: a pooled connection the server had closed. Another one.
                    Err(e) if timing.is_none() && e.message().is_some() => {}
                    Err(e) => {
                        return Err(SendError::Request {
                            error: error_chain(&e.into_error()),
                            reused: timing.is_none(),
                        })
                    }
                }
            }
        }
    }

    /// The most recently used idle connection that is still open and ready (LIFO keeps the
    /// fewest connections warm).
    async fn checkout(&self, server: usize) -> Option<Box<Conn>> {
        loop {
            let idle = self.list(server).lock().ok()?.pop()?;
            if crate::clock::now().saturating_duration_since(idle.since) >= self.idle_timeout {
                continue;
            }
            let mut conn = match idle.conn {
                Slot::Live(conn) => conn,
                Slot::Parked(io) => match crate::boxed(self.unpark(io)).await {
                    Some(conn) => conn,
                    None => continue,
                },
            };
            // With no waker: see [`unwoken`]. `send` polls the connection with the task's own
            // context before it waits.
            if conn.poll_reusable(&mut unwoken()) {
                return Some(conn);
            }
        }
    }

    /// A fresh hyper connection over a parked socket, unless the server closed it (or sent
    /// something unasked) meanwhile.
    /// The calling worker's idle list for `server`.
    fn list(&self, server: usize) -> &Mutex<Vec<Idle>> {
        &self.idle[server * self.workers + crate::workers::index() % self.workers]
    }

    async fn unpark(&self, io: Box<Io>) -> Option<Box<Conn>> {
        if !quiet(&io) {
            return None;
        }
        let (sender, driver) = self.builder.handshake(*io).await.ok()?;
        Some(Box::new(Conn {
            sender,
            driver: Some(driver),
            deadline: None,
        }))
    }

    async fn connect(&self, authority: &Authority) -> Result<Box<Conn>, SendError> {
        let scheme = if self.https { "https" } else { "http" };
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.to_string()))?;
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(|e| SendError::Connect(error_chain(&*e)))?;
        let (sender, driver) = self
            .builder
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(error_chain(&e)))?;
        Ok(Box::new(Conn {
            sender,
            driver: Some(driver),
            deadline: None,
        }))
    }

    fn put(&self, server: usize, conn: Box<Conn>) {
        if conn.driver.is_none() || self.max_idle == 0 {
            return;
        }
        if let Ok(mut list) = self.list(server).lock() {
            if list.len() < self.max_idle {
                list.push(Idle {
                    conn: Slot::Live(conn),
                    since: crate::clock::now(),
                });
            }
        }
    }
}

/// Closes idle connections past the pool's `idle_timeout` and those the server has closed, so
/// neither holds a socket once traffic stops, and parks those idle for [`PARK_AFTER`]. Ends with
/// the pool.
async fn reap(h1: Weak<H1>) {
    let period = h1
        .upgrade()
        .map_or(Duration::from_secs(1), |h| h.idle_timeout / 2)
        .clamp(Duration::from_millis(250), PARK_AFTER / 2);
    loop {
        tokio::time::sleep(period).await;
        let Some(h1) = h1.upgrade() else { return };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for list in h1.idle.iter() {
            let Ok(mut list) = list.lock() else { continue };
            let idle = std::mem::take(&mut *list);
            let kept = idle
                .into_iter()
                .filter_map(|i| tend(i, h1.idle_timeout, &mut cx));
            list.extend(kept);
        }
    }
}

/// An idle connection still worth keeping, parked once it has sat idle for [`PARK_AFTER`].
fn tend(i: Idle, idle_timeout: Duration, cx: &mut Context<'_>) -> Option<Idle> {
    if i.since.elapsed() >= idle_timeout {
        return None;
    }
    let mut conn = match i.conn {
        Slot::Parked(io) => {
            return quiet(&io).then_some(Idle {
                conn: Slot::Parked(io),
                since: i.since,
            })
        }
        Slot::Live(conn) => conn,
    };
    if !conn.poll_reusable(cx) {
        return None;
    }
    if i.since.elapsed() < PARK_AFTER {
        return Some(Idle {
            conn: Slot::Live(conn),
            since: i.since,
        });
    }
    // Taken apart only when idle and ready for a request, so nothing of an exchange is lost.
    // Bytes read and not used would be the server speaking unasked: not reusable then.
    let parts = conn.driver.take()?.into_parts();
    parts.read_buf.is_empty().then(|| Idle {
        conn: Slot::Parked(Box::new(parts.io)),
        since: i.since,
    })
}

/// Whether a parked socket has nothing to read: the server has not closed it or sent anything
/// (over TLS, a record may be rustls's own, a session ticket say: hyper is left to judge it).
fn quiet(io: &Io) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    match io {
        IoHttp(tcp) => tcp.inner().poll_peek(&mut cx, &mut buf).is_pending(),
        IoHttps(tls) => {
            let tcp = tls.inner().get_ref().0.inner().inner();
            match tcp.poll_peek(&mut cx, &mut buf) {
                Poll::Pending => true,
                Poll::Ready(Ok(n)) => n > 0,
                Poll::Ready(Err(_)) => false,
            }
        }
    }
}

/// Drives `conn` until `sending`, the request sent on it, has its response head, or until the
/// deadline `conn` is armed with (`None`). A plain function over borrowed parts: the future that
/// owns the request's sending future is the caller's, and this one adds 16 bytes to it. The
/// request may also come back unsent (the connection was closed under it).
fn exchange<'a, F: Future>(
    conn: &'a mut Conn,
    mut sending: Pin<&'a mut F>,
) -> impl Future<Output = Option<F::Output>> + 'a {
    poll_fn(move |cx| {
        // The answer can only come while this task polls the connection: see [`unwoken`].
        if let Poll::Ready(r) = sending.as_mut().poll(&mut unwoken()) {
            return Poll::Ready(Some(r));
        }
        conn.poll_driver(cx);
        if let Poll::Ready(r) = sending.as_mut().poll(&mut unwoken()) {
            return Poll::Ready(Some(r));
        }
        // Armed by the caller, and polled with the task's waker: should tokio's cooperative budget
        // have run out in the polls above, this poll too schedules the task again.
        match &mut conn.deadline {
            Some(t) => t.as_mut().poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    })
}

/// A context whose waker does nothing, for polling the parts of a connection's exchange that
/// only move while this task polls the connection itself ([`Conn::poll_driver`]): the response
/// (a oneshot), the response body (a channel), the request queue (an mpsc). hyper wakes whoever
/// polled them last when it fills them, and with the task's own waker each such wake-up, made
/// while the task is running anyway, turned into another full poll of the connection's task that
/// found nothing new: two of every request's four. The socket is always polled with the task's
/// waker, after the parts and before the task waits, so no wake-up that matters is lost.
pub(crate) fn unwoken() -> Context<'static> {
    Context::from_waker(std::task::Waker::noop())
}

/// The connection a response came on, held by the response body: polling it keeps the body
/// flowing, and a body read to its end gives the connection back to its server's idle list. A
/// body dropped before its end drops the connection, which closes it.
pub struct Lease {
    conn: Option<Box<Conn>>,
    h1: Arc<H1>,
    server: usize,
}

impl Lease {
    /// Runs the connection's IO so the response body can make progress.
    pub fn poll(&mut self, cx: &mut Context<'_>) {
        if let Some(c) = &mut self.conn {
            if !c.poll_driver(cx) {
                self.conn = None;
            }
        }
    }

    /// Whether the connection is still there to be driven: the response body only moves when
    /// [`Lease::poll`] runs it.
    pub fn live(&self) -> bool {
        self.conn.is_some()
    }

    /// The response is complete: the connection may serve another request, once hyper has
    /// finished writing this one. A server may answer before it has read the whole request body
    /// (a 413, a 401 to an upload); hyper then still holds the client's body and goes on writing
    /// it whenever the connection is polled, and an idle connection is polled only at a checkout
    /// or the reaper's next turn, so the client's upload would stall until then. Such a
    /// connection is closed instead, as nginx does with an upstream connection whose request was
    /// not sent whole; the client's body is then let go with the response.
    pub fn release(&mut self) {
        if let Some(mut c) = self.conn.take() {
            if c.sender.is_ready() || c.poll_reusable(&mut unwoken()) {
                self.h1.put(self.server, c);
            }
        }
    }
}

/// An error with its sources, for logs (hyper's own message is often just "client error").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The black-box tests' server that answers before reading the body, shared by path.
#[cfg(test)]
#[path = "../../tests/support/early.rs"]
mod early;

#[cfg(test)]
mod tests {
    use super::*;

    /// A client socket as the pool holds one, and the server's end of it.
    async fn connected() -> (Io, tokio::net::TcpStream) {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(server.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = server.accept().await.unwrap();
        (IoHttp(TokioIo::new(client)), accepted)
    }

    /// The server closes an idle connection just after the pool judged it reusable: hyper finds
    /// the end before it takes the request, which must come back at once (for `send` to try
    /// another connection), not wait for the response-head deadline.
    #[tokio::test]
    async fn a_request_on_a_connection_closed_under_it_comes_back_unsent() {
        let (io, accepted) = connected().await;
        let (sender, driver) = http1::Builder::new().handshake(io).await.unwrap();
        let mut conn = Conn {
            sender,
            driver: Some(driver),
            deadline: None,
        };
        assert!(conn.poll_reusable(&mut unwoken()));
        drop(accepted);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let req = Request::get("/").body(ForwardBody::Empty).unwrap();
        conn.arm(tokio::time::Instant::now() + Duration::from_secs(60));
        let mut sending = std::pin::pin!(conn.sender.try_send_request(req));
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            exchange(&mut conn, sending.as_mut()),
        )
        .await
        .expect("the request waited for its deadline");
        match sent {
            Some(Err(mut e)) => assert!(e.take_message().is_some(), "not handed back: {e:?}"),
            Some(Ok(r)) => panic!("a response from a closed connection: {r:?}"),
            None => panic!("timed out"),
        }
    }

    /// The HTTP/1.1 connections of a one-server pool at `addr`, as `weir run` configures it.
    fn one_server_pool(addr: std::net::SocketAddr) -> (Arc<H1>, Authority) {
        let pool = crate::pool::tests::pool_at(&[addr.to_string()], "");
        let h1 = pool
            .h1
            .clone()
            .expect("a plain-HTTP pool drives its own connections");
        (h1, pool.servers[0].authority.clone())
    }

    /// Sends the request `request` makes through the pool and reads the response the way a
    /// client's response body does (`ResponseBody` with the lease), to its end; its status.
    async fn exchange_whole(
        h1: &Arc<H1>,
        authority: &Authority,
        request: impl Fn() -> Request<ForwardBody> + Send,
    ) -> u16 {
        use http_body_util::BodyExt;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            h1.send(0, authority, request, deadline),
        );
        let (resp, lease) = sent.await.expect("no response head").expect("send failed");
        let status = resp.status().as_u16();
        let mut body = crate::proxy::body::ResponseBody::upstream(resp.into_body());
        body.drive(lease);
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame());
            if frame.await.expect("body stalled").is_none() {
                return status;
            }
        }
    }

    /// A server may answer before it has read the request body (a 413 to an upload). hyper then
    /// still holds the body and writes it only while the connection is polled; pooled, the
    /// connection would sit with the client's upload stalled until the reaper's next turn.
    #[tokio::test]
    async fn a_connection_still_writing_its_request_goes_back_to_no_pool() {
        let reply = b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 4\r\n\r\nbig!";
        let addr = early::answering_before_the_body(reply).await;
        let (h1, authority) = one_server_pool(addr);
        // More than loopback's socket buffers hold, so hyper is still writing it.
        let upload = || ForwardBody::full(vec![b'x'; 32 << 20]);
        let req = || Request::post("/upload").body(upload()).unwrap();
        assert_eq!(exchange_whole(&h1, &authority, req).await, 413);
        assert_eq!(h1.list(0).lock().unwrap().len(), 0, "pooled mid-request");

        // The same exchange with its request written whole keeps its connection.
        let req = || Request::get("/").body(ForwardBody::Empty).unwrap();
        assert_eq!(exchange_whole(&h1, &authority, req).await, 413);
        assert_eq!(
            h1.list(0).lock().unwrap().len(),
            1,
            "a finished exchange not pooled"
        );
    }

    #[tokio::test]
    async fn a_parked_socket_is_quiet_until_the_server_closes_it() {
        let (io, accepted) = connected().await;
        assert!(quiet(&io));
        drop(accepted);
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while quiet(&io) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(closed.is_ok(), "a closed socket still looks quiet");
    }
}
