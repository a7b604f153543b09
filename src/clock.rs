//! The time, read once per poll of a connection's task.
//!
//! A proxied request asked the clock about ten times (its start, the attempt's send and the head
//! deadline, the idle list's stamps, the watchdog's stamps, the access log's duration), each a
//! `clock_gettime` in the vDSO at ~19 ns on this VM: about 4% of weir's user time per keep-alive
//! request, where nginx reads the clock once per turn of its event loop. Inside a connection task's
//! poll ([`PerPoll`]) [`now`] reads it once and hands out that instant until the poll ends, which
//! is as fresh as any of those uses needs (a poll lasts microseconds); outside one (other tasks,
//! tests) it reads the clock every time.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

#[derive(Clone, Copy)]
enum Cached {
    /// Not inside a [`PerPoll`] poll on this thread.
    Off,
    /// Inside one, and nothing has asked yet.
    Unread,
    Read(Instant),
}

thread_local! {
    static NOW: Cell<Cached> = const { Cell::new(Cached::Off) };
}

/// The current instant: the one this poll of a connection's task already read, if any.
pub fn now() -> Instant {
    NOW.with(|c| match c.get() {
        Cached::Read(t) => t,
        Cached::Unread => {
            let t = Instant::now();
            c.set(Cached::Read(t));
            t
        }
        Cached::Off => Instant::now(),
    })
}

/// [`now`] as tokio's instant, for timers.
pub fn tokio_now() -> tokio::time::Instant {
    tokio::time::Instant::from_std(now())
}

pin_project_lite::pin_project! {
    /// A future whose every poll shares one reading of the clock ([`now`]).
    pub struct PerPoll<F> {
        #[pin]
        inner: F,
    }
}

impl<F> PerPoll<F> {
    pub fn new(inner: F) -> Self {
        PerPoll { inner }
    }
}

impl<F: Future> Future for PerPoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _scope = Scope::enter();
        self.project().inner.poll(cx)
    }
}

/// Restores what was cached before this poll, panic or not: a stale instant must never outlive the
/// poll that read it.
struct Scope(Cached);

impl Scope {
    fn enter() -> Scope {
        Scope(NOW.with(|c| c.replace(Cached::Unread)))
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        NOW.with(|c| c.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_reads_the_clock_once_and_outside_one_every_call_reads_it() {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut seen = Vec::new();
        let mut fut = std::pin::pin!(PerPoll::new(std::future::poll_fn(|_| {
            let a = now();
            std::thread::sleep(std::time::Duration::from_millis(2));
            seen.push((a, now()));
            Poll::<()>::Pending
        })));
        let _ = fut.as_mut().poll(&mut cx);
        let _ = fut.as_mut().poll(&mut cx);
        let (a1, b1) = seen[0];
        let (a2, b2) = seen[1];
        assert_eq!(a1, b1, "one reading per poll");
        assert_eq!(a2, b2);
        assert!(a2 > a1, "each poll reads anew");
        let outside = now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(
            now() > outside,
            "outside a poll, every call reads the clock"
        );
    }

    #[test]
    fn a_panicking_poll_leaves_no_cached_instant_behind() {
        let r = std::panic::catch_unwind(|| {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            let mut fut = std::pin::pin!(PerPoll::new(std::future::poll_fn(|_| {
                let _ = now();
                panic!("in the poll");
                #[allow(unreachable_code)]
                Poll::<()>::Pending
            })));
            let _ = fut.as_mut().poll(&mut cx);
        });
        assert!(r.is_err());
        let before = now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(now() > before);
    }
}
