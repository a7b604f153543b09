//! Parked HTTP/1.1 connections: one idle timer per worker instead of one per connection.
//!
//! A parked connection waits for its client to send again, for its `idle_timeout`, or for a drain.
//! With a tokio `Sleep` (112 bytes) and a watch on the drain signal (160) of its own, that wait was
//! most of an idle connection's task. Here a parked connection is an entry in its thread's list
//! (its deadline and its task's waker, 32 bytes), and one sweeper task per thread wakes those
//! whose deadline passed. With that, and with what `serve_h1` keeps in the boxed `Client` rather
//! than in its future, a parked connection's task is 256 bytes (it was 768). A drain wakes every
//! parked connection once ([`wake_all`]), and each moves its own deadline in.
//!
//! The list is per thread so a worker never touches another's; it sits behind a mutex all the
//! same, as a task on a multi-threaded runtime (an embedding, a test) may move between threads.

use super::idle::Socket;
use slab::Slab;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::time::Instant;

/// Deadlines are swept at most this often, so a parked connection closes up to this long after
/// its `idle_timeout`; a sweep scans every parked connection of the thread (~2 ns each).
const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// One parked connection: 24 bytes (32 in the slab).
struct Entry {
    waker: Option<Waker>,
    /// The deadline as a [`Registry::stamp`]; [`EXPIRED`] once the sweeper found it passed.
    due: u64,
}

const EXPIRED: u64 = 0;

/// One thread's parked connections and its sweeper.
struct Registry {
    entries: Slab<Entry>,
    /// When the sweeper is due next (`None`: it waits for an entry).
    due: Option<Instant>,
    sweeper_waker: Option<Waker>,
    /// The sweeper's task; it ends with its runtime, and the next park starts another.
    sweeper: Option<tokio::task::JoinHandle<()>>,
}

type Shared = Arc<Mutex<Registry>>;

thread_local! {
    static LOCAL: Shared = new_registry();
}

/// Every thread's registry, for [`wake_all`].
static ALL: Mutex<Vec<Weak<Mutex<Registry>>>> = Mutex::new(Vec::new());

fn new_registry() -> Shared {
    let r = Arc::new(Mutex::new(Registry {
        entries: Slab::new(),
        due: None,
        sweeper_waker: None,
        sweeper: None,
    }));
    let mut all = ALL.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|w| w.strong_count() > 0);
    all.push(Arc::downgrade(&r));
    r
}

fn lock(r: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps `cx`'s waker in `slot`, cloning it only if it is not the one there already.
fn remember(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        w => *w = Some(cx.waker().clone()),
    }
}

/// Wakes every parked connection, so each sees that a drain began (call after setting the
/// drain signal).
pub fn wake_all() {
    let all: Vec<Shared> = {
        let all = ALL.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().filter_map(Weak::upgrade).collect()
    };
    for r in all {
        for (_, e) in lock(&r).entries.iter_mut() {
            if let Some(w) = e.waker.take() {
                w.wake();
            }
        }
    }
}

/// A parked connection, as its wait sees it: through one reference, so that the wait (which is
/// all a parked connection's task holds) stays small.
pub trait Parkable {
    type Socket: Socket;
    /// `None` if the connection has no socket to wait on (it is then not waited for).
    fn socket(&self) -> Option<&Self::Socket>;
    /// Whether a drain has begun.
    fn draining(&self) -> bool;
    fn idle_timeout(&self) -> Duration;
    /// How long a drain leaves it.
    fn drain_grace(&self) -> Duration {
        super::DRAIN_GRACE
    }
}

/// Resolves once the client of `conn`, idle since `since`, sends again (or closes): to `since`;
/// or to `None` at its idle timeout, or its drain grace after a drain began if that is sooner.
pub fn wait<P: Parkable>(conn: &P, since: Instant) -> Parked<'_, P> {
    Parked {
        conn,
        since,
        slot: None,
    }
}

/// See [`wait`].
pub struct Parked<'a, P> {
    conn: &'a P,
    since: Instant,
    /// The registry and entry this connection is parked in, once polled.
    slot: Option<(Shared, usize)>,
}

impl<P: Parkable> Future for Parked<'_, P> {
    type Output = Option<Instant>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Instant>> {
        let this = self.get_mut();
        let Some(socket) = this.conn.socket() else {
            return Poll::Ready(None);
        };
        if socket.tcp().poll_read_ready(cx).is_ready() {
            return Poll::Ready(Some(this.since));
        }
        let (registry, key) = this
            .slot
            .get_or_insert_with(|| (LOCAL.with(Arc::clone), usize::MAX));
        let mut reg = lock(registry);
        if *key == usize::MAX {
            let due = reg.stamp(this.since + this.conn.idle_timeout());
            *key = reg.entries.insert(Entry { waker: None, due });
        }
        // Checked after the entry is in, so a drain that `wake_all` missed is seen here.
        let grace = this
            .conn
            .draining()
            .then(|| reg.stamp(Instant::now() + this.conn.drain_grace()));
        let Some(e) = reg.entries.get_mut(*key) else {
            return Poll::Ready(None);
        };
        if e.due == EXPIRED {
            return Poll::Ready(None);
        }
        if let Some(grace) = grace {
            e.due = e.due.min(grace);
        }
        remember(&mut e.waker, cx);
        let due = e.due;
        let deadline = reg.instant(due);
        reg.ensure_sweeper(registry, deadline);
        Poll::Pending
    }
}

impl<S> Drop for Parked<'_, S> {
    fn drop(&mut self) {
        if let Some((registry, key)) = &self.slot {
            lock(registry).entries.try_remove(*key);
        }
    }
}

impl Registry {
    /// Makes sure a sweeper runs and is due by `deadline`.
    fn ensure_sweeper(&mut self, me: &Shared, deadline: Instant) {
        if self.sweeper.as_ref().is_none_or(|h| h.is_finished()) {
            self.due = None;
            self.sweeper_waker = None;
            self.sweeper = Some(tokio::spawn(sweep(Arc::downgrade(me))));
            return;
        }
        if self.due.is_none_or(|due| deadline < due) {
            self.due = Some(deadline);
            if let Some(w) = self.sweeper_waker.take() {
                w.wake();
            }
        }
    }

    /// Marks and wakes the entries whose deadline passed; the earliest deadline left.
    fn expire(&mut self, now: Instant) -> Option<Instant> {
        let now = self.stamp(now);
        let mut next = u64::MAX;
        for (_, e) in self.entries.iter_mut().filter(|(_, e)| e.due != EXPIRED) {
            if e.due <= now {
                e.due = EXPIRED;
                if let Some(w) = e.waker.take() {
                    w.wake();
                }
            } else {
                next = next.min(e.due);
            }
        }
        (next != u64::MAX).then(|| self.instant(next))
    }

    /// `t` as whole milliseconds after [`crate::epoch`], rounded up (a connection never expires before
    /// its deadline), plus one so that no deadline is [`EXPIRED`].
    fn stamp(&self, t: Instant) -> u64 {
        let micros = t.saturating_duration_since(crate::epoch()).as_micros();
        u64::try_from(micros.div_ceil(1000)).map_or(u64::MAX, |ms| ms.saturating_add(1))
    }

    /// The instant a [`Registry::stamp`] stands for.
    fn instant(&self, stamp: u64) -> Instant {
        crate::epoch() + Duration::from_millis(stamp.saturating_sub(1))
    }
}

/// How long an idle sweeper's timer is set for; an entry due sooner wakes it.
const IDLE_SLEEP: Duration = Duration::from_secs(3600);

/// One thread's sweeper: sleeps until the earliest deadline (at least [`SWEEP_EVERY`] after the
/// last sweep), then expires what is due. It ends with its runtime or its registry.
async fn sweep(registry: Weak<Mutex<Registry>>) {
    let mut sleep = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut last = Instant::now();
    std::future::poll_fn(|cx| loop {
        let Some(r) = registry.upgrade() else {
            return Poll::Ready(());
        };
        let mut reg = lock(&r);
        remember(&mut reg.sweeper_waker, cx);
        if sleep.as_mut().poll(cx).is_pending() {
            // An entry parked since the timer was set may be due before it ends.
            match reg.due.map(|d| d.max(last + SWEEP_EVERY)) {
                Some(t) if t < sleep.deadline() => {
                    sleep.as_mut().reset(t);
                    continue;
                }
                _ => return Poll::Pending,
            }
        }
        last = Instant::now();
        reg.due = reg.expire(last);
        let next = reg
            .due
            .map_or(last + IDLE_SLEEP, |d| d.max(last + SWEEP_EVERY));
        sleep.as_mut().reset(next);
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;

    impl Socket for TcpStream {
        fn tcp(&self) -> &TcpStream {
            self
        }
    }

    /// A parked connection's side of a loopback pair, with its idle timeout and drain signal.
    struct Conn {
        socket: TcpStream,
        idle: Duration,
        drain: watch::Receiver<bool>,
        grace: Duration,
    }

    impl Parkable for Conn {
        type Socket = TcpStream;
        fn socket(&self) -> Option<&TcpStream> {
            Some(&self.socket)
        }
        fn draining(&self) -> bool {
            *self.drain.borrow()
        }
        fn idle_timeout(&self) -> Duration {
            self.idle
        }
        fn drain_grace(&self) -> Duration {
            self.grace
        }
    }

    /// A connected pair over loopback: the side weir parks (read dry, as hyper leaves a socket
    /// it gives back: tokio takes a new socket for readable) and the client.
    async fn pair(idle: Duration, drain: &watch::Receiver<bool>) -> (Conn, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let socket = l.accept().await.unwrap().0;
        socket.readable().await.unwrap();
        let dry = socket.try_read(&mut [0; 1]);
        assert!(matches!(dry, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
        let drain = drain.clone();
        let grace = Duration::from_millis(100);
        (
            Conn {
                socket,
                idle,
                drain,
                grace,
            },
            client,
        )
    }

    fn parked_here() -> usize {
        LOCAL.with(|r| lock(r).entries.len())
    }

    const LONG: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn wakes_when_the_client_sends_and_leaves_no_entry() {
        let (_tx, rx) = watch::channel(false);
        let (conn, mut client) = pair(LONG, &rx).await;
        let since = Instant::now();
        let send = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(b"GET").await.unwrap();
        };
        let (woke, ()) =
            tokio::time::timeout(LONG, async { tokio::join!(wait(&conn, since), send) })
                .await
                .expect("not woken by the client's bytes");
        assert_eq!(woke, Some(since));
        assert_eq!(parked_here(), 0);
    }

    #[tokio::test]
    async fn each_connection_expires_at_its_own_deadline() {
        let (_tx, rx) = watch::channel(false);
        let (a, _ca) = pair(Duration::from_millis(100), &rx).await;
        let (b, _cb) = pair(Duration::from_millis(400), &rx).await;
        let start = Instant::now();
        let early = async { (wait(&a, start).await, start.elapsed()) };
        let ((woke_a, at_a), woke_b) =
            tokio::time::timeout(LONG, async { tokio::join!(early, wait(&b, start)) })
                .await
                .expect("an idle deadline was missed");
        assert_eq!((woke_a, woke_b), (None, None));
        assert!(
            at_a >= Duration::from_millis(100),
            "expired early: {at_a:?}"
        );
        assert!(start.elapsed() >= Duration::from_millis(400));
        assert_eq!(parked_here(), 0);
    }

    #[tokio::test]
    async fn a_drain_cuts_the_wait_to_the_grace_period() {
        let (tx, rx) = watch::channel(false);
        let (conn, _client) = pair(LONG, &rx).await;
        let start = Instant::now();
        let drain = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(true).unwrap();
            wake_all();
        };
        let (woke, ()) =
            tokio::time::timeout(LONG / 2, async { tokio::join!(wait(&conn, start), drain) })
                .await
                .expect("a drain did not end the wait");
        assert_eq!(woke, None);
        assert!(start.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn parked_after_a_drain_began_gets_only_the_grace_period() {
        let (_tx, rx) = watch::channel(true);
        let (conn, _client) = pair(LONG, &rx).await;
        let woke = tokio::time::timeout(LONG / 2, wait(&conn, Instant::now()))
            .await
            .expect("drain not seen");
        assert_eq!(woke, None);
    }

    #[tokio::test]
    async fn a_dropped_wait_leaves_no_entry() {
        let (_tx, rx) = watch::channel(false);
        let (conn, _client) = pair(LONG, &rx).await;
        let mut wait = Box::pin(wait(&conn, Instant::now()));
        let polled = std::future::poll_fn(|cx| Poll::Ready(wait.as_mut().poll(cx))).await;
        assert!(polled.is_pending());
        assert_eq!(parked_here(), 1);
        drop(wait);
        assert_eq!(parked_here(), 0);
    }
}
