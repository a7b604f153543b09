//! Body types on both sides of the proxy. Both stream frame by frame; neither buffers a whole body.
//!
//! [`ForwardBody`] carries a client's request body to a server. Until hyper first polls it, the client
//! body waits in a shared slot, so after a failed connect the proxy can take it back and retry on
//! another server: a body that was never streamed is safe to send again, whatever the method.
//! The client body is cut off (an error towards the server, so it sees an aborted body, never a
//! complete one) when the framing tap finds its chunked framing bad, or when the client sends nothing
//! for the listener's `body_timeout`.
//! [`ResponseBody`] carries the answer back and, when dropped (stream done or client gone), releases
//! the server's in-flight count and writes the access-log line with the bytes really sent, and why
//! the response was cut short if weir cut it (`stream_idle_timeout`, `send_timeout`). It also tells
//! the connection's send watch when hyper holds one of its frames ([`Busy::handed`]).

use crate::conn::{Busy, ConnState};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::time::Sleep;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route's max_body_size")]
pub struct BodyTooLarge;

#[derive(Debug, thiserror::Error)]
#[error("request body stalled longer than the listener's body_timeout")]
pub struct BodyStalled;

#[derive(Debug, thiserror::Error)]
#[error("request body framing is ambiguous")]
pub struct BodyAmbiguous;

/// What a request body is checked against while it streams.
#[derive(Debug)]
pub struct Watch {
    pub state: Arc<ConnState>,
    /// The request's index on its connection, for the framing verdict.
    pub index: u64,
    pub timeout: Duration,
}

/// Where a request body waits until the first attempt that really streams it.
#[derive(Debug)]
pub struct BodySlot {
    body: Mutex<Option<Incoming>>,
    /// When the client last sent a body frame (ms after `created`, `u64::MAX` for never), for the
    /// response's idle timeout, which counts both directions.
    last_frame_ms: AtomicU64,
    created: Instant,
    hint: SizeHint,
    watch: Watch,
    pub too_large: AtomicBool,
    pub timed_out: AtomicBool,
    /// The client's side of the body failed (bad chunk framing, reset): not the server's fault.
    pub client_failed: AtomicBool,
}

impl BodySlot {
    pub fn new(body: Incoming, watch: Watch) -> Arc<BodySlot> {
        Arc::new(BodySlot {
            hint: body.size_hint(),
            body: Mutex::new(Some(body)),
            watch,
            last_frame_ms: AtomicU64::new(u64::MAX),
            created: Instant::now(),
            too_large: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            client_failed: AtomicBool::new(false),
        })
    }

    /// Whether the client's side failed the body (the forward error is then the client's doing).
    pub fn client_fault(&self) -> bool {
        self.too_large.load(Relaxed)
            || self.timed_out.load(Relaxed)
            || self.client_failed.load(Relaxed)
    }

    fn last_frame(&self) -> Option<Instant> {
        match self.last_frame_ms.load(Relaxed) {
            u64::MAX => None,
            ms => Some(self.created + Duration::from_millis(ms)),
        }
    }

    /// Whether no attempt has started streaming the body yet.
    pub fn untouched(&self) -> bool {
        self.body.lock().map(|b| b.is_some()).unwrap_or(false)
    }
}

/// The body of a request to a server. Every variant is a pointer at most: the request it rides in
/// (304 bytes with the streaming state inline, 240 with it boxed) is moved about ten times on its
/// way through hyper's client (its dispatch queue, its oneshot, the send future), and at 1,000
/// connections each slot of that queue it lands in is a cold cache line.
#[derive(Debug)]
pub enum ForwardBody {
    Empty,
    /// A small body weir makes itself (a gRPC health probe); `Empty` once sent.
    Full(Box<Bytes>),
    Streaming(Box<Streaming>),
}

/// The client's body, streamed to the server as it arrives.
#[derive(Debug)]
pub struct Streaming {
    slot: Arc<BodySlot>,
    taken: Option<Incoming>,
    limit: u64,
    seen: u64,
    /// Armed while waiting for the client; allocated on the first wait.
    stall: Option<Pin<Box<Sleep>>>,
    waiting: bool,
}

impl ForwardBody {
    pub fn full(b: impl Into<Bytes>) -> ForwardBody {
        ForwardBody::Full(Box::new(b.into()))
    }

    pub fn streaming(slot: &Arc<BodySlot>, limit: Option<u64>) -> ForwardBody {
        ForwardBody::Streaming(Box::new(Streaming {
            slot: slot.clone(),
            taken: None,
            limit: limit.unwrap_or(u64::MAX),
            seen: 0,
            stall: None,
            waiting: false,
        }))
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let ForwardBody::Streaming(s) = this {
            return s.poll_frame(cx);
        }
        match std::mem::replace(this, ForwardBody::Empty) {
            ForwardBody::Full(b) => Poll::Ready(Some(Ok(Frame::data(*b)))),
            _ => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ForwardBody::Empty => true,
            ForwardBody::Full(_) => false,
            ForwardBody::Streaming(s) => s.taken.as_ref().is_some_and(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ForwardBody::Empty => SizeHint::with_exact(0),
            ForwardBody::Full(b) => SizeHint::with_exact(b.len() as u64),
            ForwardBody::Streaming(s) => s
                .taken
                .as_ref()
                .map_or_else(|| s.slot.hint, |b| b.size_hint()),
        }
    }
}

impl Streaming {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Streaming {
            slot,
            taken,
            limit,
            seen,
            stall,
            waiting,
        } = self;
        if taken.is_none() {
            *taken = slot.body.lock().ok().and_then(|mut b| b.take());
        }
        let Some(body) = taken else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        let w = &slot.watch;
        if matches!(polled, Poll::Ready(_)) && w.state.is_bad(w.index) {
            slot.client_failed.store(true, Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyAmbiguous))));
        }
        match polled {
            Poll::Pending => {
                // The clock starts when we start waiting, so time the server spent not reading
                // (backpressure) never counts against the client.
                let deadline = Instant::now() + w.timeout;
                let sleep = stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
                if !*waiting {
                    sleep.as_mut().reset(deadline.into());
                    *waiting = true;
                }
                if sleep.as_mut().poll(cx).is_ready() {
                    slot.timed_out.store(true, Relaxed);
                    return Poll::Ready(Some(Err(Box::new(BodyStalled))));
                }
                return Poll::Pending;
            }
            Poll::Ready(_) => *waiting = false,
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let ms = slot.created.elapsed().as_millis() as u64;
                slot.last_frame_ms.store(ms, Relaxed);
                if let Some(d) = frame.data_ref() {
                    *seen += d.len() as u64;
                    if *seen > *limit {
                        slot.too_large.store(true, Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                slot.client_failed.store(true, Relaxed);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Work to do when a response is finished: metrics, in-flight release, access log.
pub trait Finish: Send + Sync {
    /// `cut`: the reason weir cut the response short, if it did.
    fn finish(&mut self, bytes: u64, cut: Option<&'static str>);
}

pub struct ResponseBody {
    kind: Kind,
    bytes: u64,
    finish: Option<Box<dyn Finish>>,
    /// The request counts as in flight (for the idle timer) until its response body is gone.
    busy: Option<Busy>,
    idle: IdleTimer,
    /// The upstream connection this body arrives on, when the request drives it itself.
    lease: Option<crate::pool::h1::Lease>,
    /// A break in the server's body, held back for one turn (see `poll_frame`).
    broken: Option<BoxError>,
    /// Set when the idle timeout ended the stream.
    cut: Option<&'static str>,
}

/// A response's idle timeout, set up only at the first wait for the server: most responses come
/// whole with their head, and need neither its allocation nor a clock read per frame.
enum IdleTimer {
    Off,
    Set {
        timeout: Duration,
        request: Option<Arc<BodySlot>>,
    },
    Running(Box<Idle>),
}

impl IdleTimer {
    /// The running timer, started now if it was only set.
    fn start(&mut self) -> Option<&mut Idle> {
        if let IdleTimer::Set { timeout, request } = self {
            *self = IdleTimer::Running(Box::new(Idle {
                timeout: *timeout,
                last: crate::clock::now(),
                request: request.take(),
                sleep: None,
            }));
        }
        match self {
            IdleTimer::Running(idle) => Some(idle),
            _ => None,
        }
    }
}

/// The idle timeout of a streaming response: armed at the first wait for the server, re-armed
/// from the last frame either way when it fires, so it costs one timer per period, not per frame.
struct Idle {
    timeout: Duration,
    last: Instant,
    request: Option<Arc<BodySlot>>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Idle {
    /// Ready when nothing has moved either way for `timeout`.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let from_client = self.request.as_ref().and_then(|s| s.last_frame());
            let last = from_client.map_or(self.last, |c| c.max(self.last));
            let deadline = (last + self.timeout).into();
            match &mut self.sleep {
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                Some(s) if s.deadline() != deadline => s.as_mut().reset(deadline),
                Some(s) => return s.as_mut().poll(cx),
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no data either way for the route's stream_idle_timeout")]
pub struct StreamIdle;

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub fn upstream(body: Incoming) -> Self {
        ResponseBody {
            kind: Kind::Upstream(body),
            bytes: 0,
            finish: None,
            busy: None,
            idle: IdleTimer::Off,
            lease: None,
            broken: None,
            cut: None,
        }
    }

    /// Cuts a streaming response after `timeout` without a frame from the server or, through
    /// `request`, from the client.
    pub fn set_idle_timeout(&mut self, timeout: Duration, request: Option<Arc<BodySlot>>) {
        if matches!(self.kind, Kind::Upstream(_)) {
            self.idle = IdleTimer::Set { timeout, request };
        }
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        let b = b.into();
        ResponseBody {
            kind: Kind::Full((!b.is_empty()).then_some(b)),
            bytes: 0,
            finish: None,
            busy: None,
            idle: IdleTimer::Off,
            lease: None,
            broken: None,
            cut: None,
        }
    }

    /// Ends at once (`is_end_stream`), so HTTP/2 sends one HEADERS frame with END_STREAM: what a
    /// gRPC trailers-only answer needs.
    pub fn empty() -> Self {
        ResponseBody {
            kind: Kind::Full(None),
            bytes: 0,
            finish: None,
            busy: None,
            idle: IdleTimer::Off,
            lease: None,
            broken: None,
            cut: None,
        }
    }

    /// Gives the body the upstream connection it arrives on, to drive while it streams and to
    /// give back to the pool once it is complete.
    pub fn drive(&mut self, lease: crate::pool::h1::Lease) {
        self.lease = Some(lease);
    }

    pub fn on_finish(&mut self, f: Box<dyn Finish>) {
        self.finish = Some(f);
    }

    pub fn hold(&mut self, busy: Busy) {
        self.busy = Some(busy);
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body hyper never polls because it was empty (HEAD, 204, 304) is still complete.
        if let (Some(lease), Kind::Upstream(b)) = (&mut self.lease, &self.kind) {
            if b.is_end_stream() {
                lease.release();
            }
        }
        if let Some(mut f) = self.finish.take() {
            let sent_timeout = self.busy.as_ref().is_some_and(|b| b.send_timed_out());
            f.finish(
                self.bytes,
                self.cut.or(sent_timeout.then_some("send_timeout")),
            );
        }
    }
}

/// A frame of the server's response, running the upstream connection's IO in between when this
/// request drives it ([`crate::pool::h1`]).
fn poll_upstream(
    body: &mut Incoming,
    lease: &mut Option<crate::pool::h1::Lease>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    let polled = match lease {
        // The body only fills while this task drives its connection: polled without a waker
        // (see `pool::h1::unwoken`), with the connection polled with the task's own in between.
        Some(l) if l.live() => {
            let mut polled = Pin::new(&mut *body).poll_frame(&mut crate::pool::h1::unwoken());
            if polled.is_pending() {
                l.poll(cx);
                polled = Pin::new(&mut *body).poll_frame(&mut crate::pool::h1::unwoken());
            }
            polled
        }
        _ => Pin::new(&mut *body).poll_frame(cx),
    };
    match &polled {
        Poll::Ready(None) => {
            if let Some(l) = lease {
                l.release();
            }
        }
        Poll::Ready(Some(Err(_))) => *lease = None,
        _ => {}
    }
    polled.map_err(Into::into)
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(e) = this.broken.take() {
            return Poll::Ready(Some(Err(e)));
        }
        if let Some(b) = &mut this.busy {
            b.asked();
        }
        let polled = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(body) => poll_upstream(body, &mut this.lease, cx),
        };
        if let Poll::Ready(Some(Err(e))) = polled {
            // hyper drops a connection whose response body fails without writing out what it
            // had buffered. When the break arrives in the same turn as the head and the first
            // bytes (a server that sends part of a body and closes), report it one turn later,
            // so the client gets the head and the bytes that came and sees the body cut short.
            tracing::debug!(error = %e, "the server's response body broke off");
            this.cut.get_or_insert("upstream_body_error");
            this.broken = Some(e);
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.bytes += d.len() as u64;
                    if let Some(b) = &mut this.busy {
                        b.handed();
                    }
                }
                if let IdleTimer::Running(idle) = &mut this.idle {
                    idle.last = crate::clock::now();
                }
            }
            Poll::Pending => {
                if let Some(idle) = this.idle.start() {
                    if idle.poll_expired(cx).is_ready() {
                        this.cut = Some("stream_idle_timeout");
                        return Poll::Ready(Some(Err(Box::new(StreamIdle))));
                    }
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_body_is_a_pointer_wide() {
        // The request it rides in is moved about ten times per request through hyper's client.
        assert!(std::mem::size_of::<ForwardBody>() <= 16);
        assert!(std::mem::size_of::<http::Request<ForwardBody>>() <= 240);
    }
}
