//! What the pieces of one client connection share, and the timers that bound an idle or slow one.
//!
//! The framing tap writes its verdict here (the index of the first message it found ambiguous), the
//! proxy counts requests and reads that verdict, and the [`watchdog`] closes a connection that sits
//! idle between requests (`idle_timeout`) or takes too long to send a request head
//! (`header_read_timeout`, counted from connect for the first request, from the first byte after
//! that). hyper's own header-read timer starts as soon as a keep-alive connection goes idle, which
//! would make it an idle timeout too, so weir keeps both timers here instead.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

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
    in_flight: AtomicUsize,
    /// Armed by the watchdog while idle; the tap disarms it on the next read and wakes the watchdog.
    read_armed: AtomicBool,
    wake: Notify,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState {
            bad_from: AtomicU64::new(CLEAN),
            upgraded: AtomicBool::new(false),
            h2: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            read_armed: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }
}

/// One request being served; dropping it (with the response body) ends it.
pub struct Busy {
    state: Arc<ConnState>,
    /// This request's index among the connection's requests.
    pub index: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.state.in_flight.fetch_sub(1, Relaxed) == 1 {
            self.state.wake.notify_one();
        }
    }
}

impl ConnState {
    pub fn enter(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Relaxed);
        let index = self.requests.fetch_add(1, Relaxed);
        Busy {
            state: self.clone(),
            index,
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

    /// Called by the tap on every read: wakes a watchdog waiting for a head to start.
    pub fn on_read(&self) {
        if self.read_armed.load(Relaxed) && self.read_armed.swap(false, Relaxed) {
            self.wake.notify_one();
        }
    }
}

#[derive(Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request in flight for `idle_timeout`: close gracefully (GOAWAY on HTTP/2).
    Idle,
    /// A request head did not complete in time; `started` if any byte of it arrived.
    Head { started: bool },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Busy,
    Idle { since: Instant },
    Head { since: Instant, started: bool },
}

/// Resolves when the connection has been idle, or slow to send a head, for too long.
pub async fn watchdog(state: &ConnState, t: Timeouts) -> Expired {
    let opened = Instant::now();
    state.read_armed.store(true, Relaxed);
    let mut phase = Phase::Head {
        since: opened,
        started: false,
    };
    let mut seen = 0;
    loop {
        phase = next_phase(state, phase, &mut seen);
        let deadline = match phase {
            Phase::Busy => None,
            Phase::Idle { since } => Some(since + t.idle),
            Phase::Head { since, .. } if state.h2.load(Relaxed) => Some(since + t.idle),
            Phase::Head { since, .. } => Some(since + t.header_read),
        };
        let notified = state.wake.notified();
        let Some(deadline) = deadline else {
            notified.await;
            continue;
        };
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => {
                let mut s = seen;
                if next_phase(state, phase, &mut s) == phase {
                    return match phase {
                        Phase::Head { started, .. } if !state.h2.load(Relaxed) => Expired::Head { started },
                        _ => Expired::Idle,
                    };
                }
            }
        }
    }
}

fn next_phase(state: &ConnState, phase: Phase, seen: &mut u64) -> Phase {
    let now = Instant::now();
    let requests = state.requests.load(Relaxed);
    if state.in_flight.load(Relaxed) > 0 {
        *seen = requests;
        return Phase::Busy;
    }
    if phase == Phase::Busy || requests != *seen {
        // A request finished: idle from now until the next head starts.
        *seen = requests;
        state.read_armed.store(true, Relaxed);
        return Phase::Idle { since: now };
    }
    let read = !state.read_armed.load(Relaxed);
    match phase {
        Phase::Idle { .. } if read && !state.h2.load(Relaxed) => Phase::Head {
            since: now,
            started: true,
        },
        Phase::Head { since, .. } if read => Phase::Head {
            since,
            started: true,
        },
        p => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn t() -> Timeouts {
        Timeouts {
            header_read: 100 * MS,
            idle: 400 * MS,
        }
    }

    #[tokio::test]
    async fn silent_connection_gets_the_header_timeout() {
        let s = ConnState::default();
        let start = Instant::now();
        assert_eq!(watchdog(&s, t()).await, Expired::Head { started: false });
        assert!(start.elapsed() >= 100 * MS);
    }

    #[tokio::test]
    async fn idle_after_a_request_gets_the_idle_timeout() {
        let s = Arc::new(ConnState::default());
        let s2 = s.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(10 * MS).await;
            let busy = s2.enter();
            tokio::time::sleep(300 * MS).await; // longer than the header timeout: busy, not slow
            drop(busy);
        });
        assert_eq!(watchdog(&s, t()).await, Expired::Idle);
        assert!(start.elapsed() >= 710 * MS);
    }

    #[tokio::test]
    async fn a_head_started_while_idle_gets_the_header_timeout() {
        let s = Arc::new(ConnState::default());
        let s2 = s.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            drop(s2.enter());
            tokio::time::sleep(200 * MS).await;
            s2.on_read();
        });
        assert_eq!(watchdog(&s, t()).await, Expired::Head { started: true });
        assert!(start.elapsed() >= 300 * MS);
    }
}
