//! A future polled only when its own waker fired.
//!
//! A connection's task waits on several things at once (hyper's connection, the drain signal, the
//! watchdog), and `select!` polls every branch each time the task wakes: several times per request,
//! for socket readiness alone. The drain signal takes a lock when polled (tokio's `Notify` keeps
//! its waiters under a mutex) and the watchdog reads the clock and its stamps, so polling them for
//! nothing cost ~5% of the instructions of a small proxied request. Behind a [`Gated`], they are
//! polled only when something they wait on woke them.

use atomic_waker::AtomicWaker;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::AcqRel, Ordering::Acquire, Ordering::Release};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

pub struct Gated<F> {
    fut: F,
    flag: Arc<Flag>,
    waker: Waker,
    /// The task's waker as last registered in `flag.parent`, to tell when it must be registered
    /// again: registering is two atomic read-modify-writes (~20 cycles each on x86, a locked
    /// instruction), and a connection's task polls each of its gated futures several times per
    /// request for nothing.
    registered: Option<Waker>,
}

struct Flag {
    woken: AtomicBool,
    parent: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    /// Takes the parent's waker before it raises `woken`, and wakes it only after: a poll that
    /// still sees `woken` down may then trust that the waker it registered is in place, or that a
    /// wake is on its way that will show `woken` raised to the poll it causes.
    fn wake_by_ref(self: &Arc<Self>) {
        let parent = self.parent.take();
        self.woken.store(true, Release);
        if let Some(w) = parent {
            w.wake();
        }
    }
}

impl<F: Future + Unpin> Gated<F> {
    pub fn new(fut: F) -> Self {
        let flag = Arc::new(Flag {
            // The first poll must reach the future, so it can register what it waits on.
            woken: AtomicBool::new(true),
            parent: AtomicWaker::new(),
        });
        Gated {
            fut,
            waker: Waker::from(flag.clone()),
            flag,
            registered: None,
        }
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let same = this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        // Not woken: the waker registered is still there (a wake takes it only before it raises
        // `woken`), so there is nothing to do, and no locked instruction to do it with.
        if same && !this.flag.woken.load(Acquire) {
            return Poll::Pending;
        }
        if !same {
            this.registered = Some(cx.waker().clone());
        }
        // The flag goes down before the waker is registered: a wake that takes this registration
        // raises it again after, so the next poll comes this way and registers anew. A wake
        // between the two is seen by the load, which leaves the flag up for the same reason.
        let woken = this.flag.woken.swap(false, AcqRel);
        this.flag.parent.register(cx.waker());
        if !woken && !this.flag.woken.load(Acquire) {
            return Poll::Pending;
        }
        Pin::new(&mut this.fut).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn gated_future_still_completes_when_woken() {
        let notify = Arc::new(tokio::sync::Notify::new());
        let n = notify.clone();
        let waiting = std::pin::pin!(async move { n.notified().await });
        let mut gated = Gated::new(waiting);
        // Pending at first, and on a poll its waker did not ask for.
        assert!(futures_poll(&mut gated).is_pending());
        assert!(futures_poll(&mut gated).is_pending());
        notify.notify_one();
        let done = tokio::time::timeout(Duration::from_secs(5), gated).await;
        assert!(done.is_ok());
    }

    /// Wakes from another thread while the task is also polled for other reasons (as a
    /// connection's task is, by its socket): no wake may be lost between the two. Each of the
    /// pings needs a wake of its own: the next is sent only once the last was answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_wake_from_another_thread_is_lost() {
        const PINGS: u32 = 5_000;
        let (tx, mut rx) = tokio::sync::watch::channel(0u32);
        let (ack, acks) = std::sync::mpsc::channel();
        let waiting = Box::pin(async move {
            while rx.changed().await.is_ok() {
                let _ = ack.send(*rx.borrow_and_update());
            }
        });
        let mut gated = Gated::new(waiting);
        let sender = std::thread::spawn(move || {
            for i in 1..=PINGS {
                tx.send_replace(i);
                match acks.recv_timeout(Duration::from_secs(5)) {
                    Ok(_) => {}
                    Err(_) => return Err(i),
                }
            }
            Ok(())
        });
        let polled_for_other_reasons = async {
            loop {
                tokio::select! {
                    _ = &mut gated => return,
                    _ = tokio::task::yield_now() => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), polled_for_other_reasons).await;
        let sent = tokio::task::spawn_blocking(move || sender.join().unwrap());
        assert_eq!(sent.await.unwrap(), Ok(()), "a wake was lost at this ping");
    }

    fn futures_poll<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        Pin::new(f).poll(&mut Context::from_waker(Waker::noop()))
    }
}
