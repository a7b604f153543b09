//! What the pieces of one client connection share, and the timers that bound an idle or slow one.
//!
//! The framing tap writes its verdict here (the index of the first message it found ambiguous), the
//! proxy counts requests and reads that verdict, and the [`watchdog`] closes a connection that sits
//! idle between requests (`idle_timeout`), takes too long to send a request head
//! (`header_read_timeout`, counted from connect for the first request, from the first byte after
//! that), or stops taking its responses (`send_timeout`). hyper's own header-read timer starts as
//! soon as a keep-alive connection goes idle, which would make it an idle timeout too, so weir keeps
//! both timers here instead.
//!
//! A send stall has two faces. On the socket, a write that finds it full ([`SendWatch`], under TLS,
//! so TLS buffering cannot hide it) with no progress since: what a client that stops reading
//! looks like on HTTP/1.1, and on HTTP/2 too. On HTTP/2 alone, a stream's flow-control window:
//! hyper takes a response frame and asks for the next only once the client's window has let the
//! last one go ([`Busy::handed`]), so a client that never sends WINDOW_UPDATE stalls with an idle
//! socket. Any socket write counts as progress on the first (HTTP/1.1 writes only responses), but
//! not on the second: weir's own PINGs would keep a starved HTTP/2 connection alive forever.
//! Waiting for the server is neither: hyper is then asking for a frame that has not come.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

mod gate;
mod watchdog;
pub use gate::Gated;
pub use watchdog::{watchdog, Expired, Start, Timeouts};

/// No ambiguous message seen.
const CLEAN: u64 = u64::MAX;

#[derive(Debug)]
pub struct ConnState {
    /// Index of the first HTTP/1 message whose framing the tap found ambiguous ([`CLEAN`] if none).
    bad_from: AtomicU64,
    /// Set once the connection is no longer HTTP/1 requests (a WebSocket splice); the tap stops.
    pub upgraded: AtomicBool,
    /// HTTP/2 (ALPN or prior knowledge): bytes between streams are not a request head.
    pub h2: AtomicBool,
    requests: AtomicU64,
    in_flight: AtomicU32,
    /// Armed when an HTTP/1 request ends (and by the watchdog before the first head); the tap
    /// disarms it on the next read and stamps [`ConnState::head_at`].
    read_armed: AtomicBool,
    /// Set by the framing tap while the bytes it has seen end inside a request head: a head
    /// pipelined behind a request (in the same read) that has not arrived whole.
    pub head_pending: AtomicBool,
    /// Set by the tap: the number of whole messages it has seen while the bytes end exactly at a
    /// message boundary ([`CLEAN`] when they end inside one, or it stopped looking).
    boundary: AtomicU64,
    /// Set by the tap: the last thing asked of the write side was a flush, and it finished (hyper
    /// flushes only once its own write buffer is empty).
    flushed: AtomicBool,
    // The stamps below are nanoseconds after [`crate::epoch`] plus one (0: none). The watchdog reads
    // them when its timer fires; nothing wakes it (a wake-up per request would cost the
    // connection's task an extra turn per request).
    /// When the last request ended (stamped by every request as it ends).
    idle_at: AtomicU64,
    /// When the first byte after the last request's end arrived, or that end, for a head
    /// already pipelined behind it.
    head_at: AtomicU64,
    /// When a socket write first found the socket full, with no write making progress since.
    blocked_at: AtomicU64,
    /// HTTP/2 responses whose last frame hyper holds until the client's window lets it go.
    held: AtomicU32,
    /// When the latest of those frames was handed over.
    handed_at: AtomicU64,
    /// Set when `send_timeout` closed the connection: the requests it cut are logged with it.
    send_timed_out: AtomicBool,
    /// Once set, the tap writes this instead of reading on, then ends the connection.
    reply: OnceLock<Box<[u8]>>,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState {
            bad_from: AtomicU64::new(CLEAN),
            upgraded: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            read_armed: AtomicBool::new(false),
            head_pending: AtomicBool::new(false),
            boundary: AtomicU64::new(0),
            flushed: AtomicBool::new(true),
            idle_at: AtomicU64::new(0),
            head_at: AtomicU64::new(0),
            blocked_at: AtomicU64::new(0),
            held: AtomicU32::new(0),
            handed_at: AtomicU64::new(0),
            send_timed_out: AtomicBool::new(false),
            reply: OnceLock::new(),
        }
    }
}

/// One request being served; dropping it (with the response body) ends it.
pub struct Busy {
    state: Arc<ConnState>,
    /// This request's index among the connection's requests.
    pub index: u64,
    /// HTTP/2, where the client's flow-control window can stall a response with an idle socket.
    h2: bool,
    /// hyper holds a frame of this response and has not asked for the next yet.
    holding: bool,
}

impl Busy {
    /// A response data frame went to hyper. On HTTP/2 hyper asks for the next only once the
    /// client's window has let this one go, so from now until [`Busy::asked`] the client holds the
    /// response up. (On HTTP/1.1 hyper writes at once, and a full socket is [`SendWatch`]'s to see.)
    pub fn handed(&mut self) {
        if !self.h2 {
            return;
        }
        let s = &self.state;
        s.handed_at.store(s.stamp(), Relaxed);
        if !self.holding {
            self.holding = true;
            // Release: a watchdog that sees the count sees a stamp at least this new.
            s.held.fetch_add(1, Release);
        }
    }

    /// hyper asks for the next frame: the client has taken the last one.
    pub fn asked(&mut self) {
        if self.holding {
            self.holding = false;
            self.state.held.fetch_sub(1, Relaxed);
        }
    }

    /// Whether `send_timeout` closed the connection while this request was being answered.
    pub fn send_timed_out(&self) -> bool {
        self.state.send_timed_out.load(Relaxed)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.asked();
        let s = &self.state;
        // Stamped before the count drops (Release): a watchdog that sees no request in flight
        // sees when the last one ended.
        let now = s.stamp();
        // `fetch_max`: HTTP/2 streams end on other threads, and one that took its stamp earlier may
        // store it later; the idle clock must not go back.
        s.idle_at.fetch_max(now, Relaxed);
        if !self.h2 {
            if s.head_pending.load(Relaxed) {
                s.head_at.store(now, Relaxed);
            } else {
                s.read_armed.store(true, Relaxed);
            }
        }
        s.in_flight.fetch_sub(1, Release);
    }
}

impl ConnState {
    pub fn enter(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Relaxed);
        let index = self.requests.fetch_add(1, Relaxed);
        Busy {
            state: self.clone(),
            index,
            h2: self.h2.load(Relaxed),
            holding: false,
        }
    }

    /// Records that message `index` (and so every later one) has ambiguous framing.
    pub fn flag(&self, index: u64) {
        self.bad_from.fetch_min(index, Relaxed);
    }

    /// Whether message `index` must be refused.
    pub fn is_bad(&self, index: u64) -> bool {
        self.bad_from.load(Relaxed) <= index
    }

    /// Called by the tap on every read: the first read after a request ended starts the next
    /// head's clock.
    pub fn on_read(&self) {
        if self.read_armed.load(Relaxed) && self.read_armed.swap(false, Relaxed) {
            self.head_at.store(self.stamp(), Relaxed);
        }
    }

    /// Called by [`SendWatch`] after each write to the socket (only ever from the connection's
    /// task, so a load and a store suffice): a full socket starts the stall clock, progress stops it.
    fn on_write(&self, progressed: bool) {
        let blocked = self.blocked_at.load(Relaxed) != 0;
        if progressed && blocked {
            self.blocked_at.store(0, Relaxed);
        } else if !progressed && !blocked {
            self.blocked_at.store(self.stamp(), Relaxed);
        }
    }

    /// A fresh reading, not [`crate::clock::now`]'s per-poll one: the watchdog orders these stamps
    /// (a head that started after the last request ended), and two taken in one poll must differ.
    fn stamp(&self) -> u64 {
        crate::epoch().elapsed().as_nanos() as u64 + 1
    }

    /// The instant a stamp stands for.
    fn instant(stamp: u64) -> Option<Instant> {
        (stamp != 0).then(|| crate::epoch() + Duration::from_nanos(stamp - 1))
    }

    /// When the last request ended, if one has.
    fn idle_since(&self) -> Option<Instant> {
        Self::instant(self.idle_at.load(Relaxed))
    }

    /// When the latest head started (see [`ConnState::head_at`]).
    fn head_started(&self) -> Option<Instant> {
        Self::instant(self.head_at.load(Relaxed))
    }

    /// Since when the client has taken none of the response bytes weir has ready, if it has not.
    fn send_stalled_since(&self) -> Option<Instant> {
        let blocked = Some(self.blocked_at.load(Relaxed)).filter(|&b| b != 0);
        let held = (self.held.load(Acquire) > 0).then(|| self.handed_at.load(Relaxed));
        let since = blocked.into_iter().chain(held).min()?;
        Self::instant(since)
    }

    /// Marks the connection as closed by `send_timeout`; true if a request was being answered (it
    /// is then logged with that reason).
    pub fn cut_by_send_timeout(&self) -> bool {
        self.send_timed_out.store(true, Relaxed);
        self.in_flight.load(Relaxed) > 0
    }

    /// Makes the tap write `reply` and end the connection instead of reading on. Refused (false)
    /// while a response is still stuck in a full socket: the reply would land in its middle.
    pub fn answer(&self, reply: Box<[u8]>) -> bool {
        self.blocked_at.load(Relaxed) == 0 && self.reply.set(reply).is_ok()
    }

    /// Called by the tap after each read it scanned: `Some(n)` when the bytes so far end right
    /// after message `n - 1`, `None` when they end inside a message (or the scan stopped).
    pub fn on_scanned(&self, boundary: Option<u64>) {
        self.boundary.store(boundary.unwrap_or(CLEAN), Relaxed);
    }

    /// Whether the client's bytes read so far end inside a request (its body still on its way),
    /// on a connection still made of plain HTTP/1 messages.
    pub fn mid_message(&self) -> bool {
        self.boundary.load(Relaxed) == CLEAN
            && self.bad_from.load(Relaxed) == CLEAN
            && !self.upgraded.load(Relaxed)
            && !self.h2.load(Relaxed)
    }

    /// Called by the tap on each write (false) and each finished flush (true).
    pub fn on_flush(&self, done: bool) {
        self.flushed.store(done, Relaxed);
    }

    /// Whether hyper's HTTP/1 state can be dropped and rebuilt later without losing a byte either
    /// way: no request is being served, every byte read belongs to a request already handed over
    /// (and served), every response byte left hyper's buffer, and nothing else owns the
    /// connection (an upgrade, HTTP/2, a reply of the tap's, an ambiguous message).
    pub fn parkable(&self) -> bool {
        self.in_flight.load(Relaxed) == 0
            && self.boundary.load(Relaxed) == self.requests.load(Relaxed)
            && self.flushed.load(Relaxed)
            && self.blocked_at.load(Relaxed) == 0
            && !self.upgraded.load(Relaxed)
            && !self.h2.load(Relaxed)
            && self.bad_from.load(Relaxed) == CLEAN
            && self.reply.get().is_none()
    }

    /// The reply set by [`ConnState::answer`], for the tap.
    pub fn reply(&self) -> Option<&[u8]> {
        self.reply.get().map(|r| &**r)
    }
}

/// The client's socket, below TLS, reporting whether each write made progress: the one place that
/// sees a full socket whatever TLS or hyper buffer above it.
///
/// It also spares a connection that lives for one response two system calls that nginx does not
/// make either (`Connection: close` is one request per connection, so they are a tenth of its
/// calls):
/// - `TCP_NODELAY` is set before the connection's second write, not at accept. Nagle holds a write
///   back only while an earlier small one is unacknowledged, and before the first write nothing is.
/// - `shutdown(SHUT_WR)` is skipped when hyper ends the connection: the `close` that follows at
///   once sends the same FIN. An upgraded (WebSocket) connection and the framing tap's own reply
///   still get it, since there the half-close is the point.
pub struct SendWatch {
    io: TcpStream,
    state: Arc<ConnState>,
    writes: Writes,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Writes {
    None,
    One,
    /// `TCP_NODELAY` is on.
    NoDelay,
}

impl SendWatch {
    pub fn new(io: TcpStream, state: Arc<ConnState>) -> Self {
        SendWatch {
            io,
            state,
            writes: Writes::None,
        }
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.io
    }

    fn before_write(&mut self) {
        if self.writes == Writes::One {
            // A failure leaves Nagle on, which only delays: not worth failing the write for.
            let _ = self.io.set_nodelay(true);
            self.writes = Writes::NoDelay;
        }
    }

    fn seen(&mut self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match &r {
            Poll::Ready(Ok(n)) if *n > 0 => {
                if self.writes == Writes::None {
                    self.writes = Writes::One;
                }
                self.state.on_write(true)
            }
            Poll::Pending => self.state.on_write(false),
            _ => {}
        }
        r
    }

    /// Whether ending the connection needs its own `shutdown` rather than the FIN of `close`.
    fn half_close_matters(&self) -> bool {
        self.state.upgraded.load(Relaxed) || self.state.reply().is_some()
    }
}

impl AsyncRead for SendWatch {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendWatch {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.before_write();
        let r = Pin::new(&mut self.io).poll_write(cx, data);
        self.seen(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.before_write();
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.seen(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.half_close_matters() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_reply_over_a_response_stuck_in_the_socket() {
        let s = ConnState::default();
        s.on_write(false);
        assert!(!s.answer(b"x".to_vec().into()));
        s.on_write(true);
        assert!(s.answer(b"x".to_vec().into()));
        assert_eq!(s.reply(), Some(&b"x"[..]));
    }

    /// How long a test waits for bytes that are surely coming (a loopback write is delivered at
    /// once; this only bounds a stuck test).
    const LONG: Duration = Duration::from_secs(5);

    /// A loopback pair: weir's end wrapped in a [`SendWatch`], and the peer's.
    async fn pair() -> (SendWatch, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = tokio::net::TcpStream::connect(l.local_addr().unwrap());
        let (peer, accepted) = tokio::join!(peer, l.accept());
        let ours = SendWatch::new(accepted.unwrap().0, Arc::new(ConnState::default()));
        (ours, peer.unwrap())
    }

    /// What the peer sees within `wait`: `Some(0)` is the FIN, `None` nothing yet.
    async fn peer_reads(peer: &mut tokio::net::TcpStream, wait: Duration) -> Option<usize> {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        let read = peer.read(&mut buf);
        tokio::time::timeout(wait, read)
            .await
            .ok()
            .map(|r| r.unwrap())
    }

    #[tokio::test]
    async fn nagle_goes_off_before_the_second_write_not_at_accept() {
        use tokio::io::AsyncWriteExt;
        let (mut ours, _peer) = pair().await;
        assert!(!ours.get_ref().nodelay().unwrap());
        ours.write_all(b"first").await.unwrap();
        assert!(!ours.get_ref().nodelay().unwrap());
        ours.write_all(b"second").await.unwrap();
        assert!(ours.get_ref().nodelay().unwrap());
    }

    #[tokio::test]
    async fn an_http_connection_ends_with_the_fin_of_close_not_a_shutdown() {
        use tokio::io::AsyncWriteExt;
        let (mut ours, mut peer) = pair().await;
        ours.write_all(b"response").await.unwrap();
        ours.shutdown().await.unwrap();
        assert_eq!(peer_reads(&mut peer, LONG).await, Some(8));
        let short = Duration::from_millis(200);
        assert_eq!(
            peer_reads(&mut peer, short).await,
            None,
            "no FIN before close"
        );
        drop(ours);
        assert_eq!(peer_reads(&mut peer, LONG).await, Some(0));
    }

    #[tokio::test]
    async fn an_upgraded_connection_half_closes_on_shutdown() {
        use tokio::io::AsyncWriteExt;
        let (mut ours, mut peer) = pair().await;
        ours.state.upgraded.store(true, Relaxed);
        ours.shutdown().await.unwrap();
        assert_eq!(peer_reads(&mut peer, LONG).await, Some(0));
        // Half-closed, not closed: the peer can still send.
        peer.write_all(b"more").await.unwrap();
        let mut buf = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut ours, &mut buf)
            .await
            .unwrap();
        assert_eq!(&buf, b"more");
    }
}
