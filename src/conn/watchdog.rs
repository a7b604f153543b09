//! The per-connection timers: `idle_timeout` between requests, `header_read_timeout` for a head,
//! `send_timeout` for responses the client does not take (see the parent module for what counts
//! as a send stall). One timer per connection, and nothing wakes the watchdog but that timer: the
//! connection's parts stamp when a request ends and when the next head starts, and the watchdog
//! reads the stamps when it fires. It fires at the nearest deadline it knows of, and no later than
//! the shortest timeout from now (10 ms at the least), which is the soonest any deadline the
//! stamps could set after now can fall. So deadlines hold to the timer's precision, and a request
//! costs no wake-up: a watchdog woken each time a request ended and each time a head started cost
//! the connection's task two extra turns per request.

use super::ConnState;
use std::future::Future;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub send: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No request in flight for `idle_timeout`: close gracefully (GOAWAY on HTTP/2).
    Idle,
    /// A request head did not complete in time; `started` if any byte of it arrived.
    Head { started: bool },
    /// The client took none of the response bytes weir had ready for `send_timeout`.
    Send,
    /// Idle (no request in flight, no byte read) since `since`, for the `park_after` asked for:
    /// the connection's HTTP state may be set aside until the client sends again.
    Park { since: Instant },
}

/// Where a watchdog starts: a connection's first head, or a later one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Start {
    /// Just opened: the first head's clock runs from `at`; `started` once a byte of it came.
    Head { at: Instant, started: bool },
    /// Idle since `since` with no byte read since (a park that did not happen).
    Idle { since: Instant },
}

impl Start {
    fn at(self) -> Instant {
        match self {
            Start::Head { at, .. } => at,
            Start::Idle { since } => since,
        }
    }
}

/// The shortest the watchdog sleeps between looks at the stamps (see [`watchdog`]).
const MIN_HORIZON: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Busy,
    Idle { since: Instant },
    Head { since: Instant, started: bool },
}

/// Resolves when the connection has been idle, slow to send a head, or slow to take its
/// responses, for too long. The send check runs whatever the phase (a response may still sit in
/// a full socket after its body is done), re-armed every `send_timeout` while nothing is stalled:
/// one timer per period, no work per write.
///
/// With `park_after`, it also resolves ([`Expired::Park`]) once the connection has been idle that
/// long; the caller then either parks it or starts a new watchdog without `park_after`.
pub fn watchdog(
    state: &ConnState,
    t: Timeouts,
    start: Start,
    park_after: Option<Duration>,
) -> impl Future<Output = Expired> + '_ {
    if let Start::Head { started: false, .. } = start {
        state.read_armed.store(true, Relaxed);
    }
    // The soonest a deadline set after now can fall (a request that ends now, a head that
    // starts now): the longest the watchdog may sleep without looking at the stamps again.
    // HTTP/2 has no head deadline of its own (see `phase_deadline`). The floor keeps a zero
    // timeout from waking the connection's task at every timer tick while a request is in
    // flight; such a deadline may then pass up to that much late.
    let mut horizon = t.idle;
    if let Some(p) = park_after {
        horizon = horizon.min(p);
    }
    if !state.h2.load(Relaxed) {
        horizon = horizon.min(t.header_read);
    }
    let horizon = horizon.max(MIN_HORIZON);
    async move {
        let sleep = tokio::time::sleep_until(start.at());
        tokio::pin!(sleep);
        loop {
            let phase = phase(state, start);
            let now = Instant::now();
            let stalled = state.send_stalled_since();
            if stalled.is_some_and(|s| now >= s + t.send) {
                return Expired::Send;
            }
            let due = phase_deadline(state, phase, t);
            if due.is_some_and(|d| now >= d) {
                return match phase {
                    Phase::Head { started, .. } if !state.h2.load(Relaxed) => {
                        Expired::Head { started }
                    }
                    _ => Expired::Idle,
                };
            }
            let park = match (phase, park_after) {
                (Phase::Idle { since }, Some(after)) if now >= since + after => {
                    return Expired::Park { since };
                }
                (Phase::Idle { since }, Some(after)) => Some(since + after),
                _ => None,
            };
            let send_check = stalled.unwrap_or(now) + t.send;
            let target = [due, park]
                .into_iter()
                .flatten()
                .fold(send_check.min(now + horizon), Instant::min);
            sleep.as_mut().reset(target);
            sleep.as_mut().await;
        }
    }
}

fn phase_deadline(state: &ConnState, phase: Phase, t: Timeouts) -> Option<Instant> {
    match phase {
        Phase::Busy => None,
        Phase::Idle { since } => Some(since + t.idle),
        Phase::Head { since, .. } if state.h2.load(Relaxed) => Some(since + t.idle),
        Phase::Head { since, .. } => Some(since + t.header_read),
    }
}

/// The phase the stamps tell of: busy while a request is in flight; after the last request's end
/// (if it ended after `start`), idle, or in a head once a byte came (HTTP/1 only: on HTTP/2,
/// bytes between streams are not a head); before, what `start` says.
fn phase(state: &ConnState, start: Start) -> Phase {
    if state.in_flight.load(Acquire) > 0 {
        return Phase::Busy;
    }
    let head = state.head_started();
    let since = match (state.idle_since().filter(|&i| i > start.at()), start) {
        (Some(ended), _) => ended,
        (None, Start::Head { at, started }) => {
            return Phase::Head {
                since: at,
                started: started || head.is_some_and(|h| h >= at),
            }
        }
        (None, Start::Idle { since }) => since,
    };
    match head {
        Some(h) if h >= since && !state.h2.load(Relaxed) => Phase::Head {
            since: h,
            started: true,
        },
        _ => Phase::Idle { since },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const MS: Duration = Duration::from_millis(1);

    fn opened() -> Start {
        Start::Head {
            at: Instant::now(),
            started: false,
        }
    }

    fn t() -> Timeouts {
        Timeouts {
            header_read: 100 * MS,
            idle: 400 * MS,
            send: 10_000 * MS,
        }
    }

    /// Only the send timer can fire (while a request is in flight, nothing else runs).
    fn send_only() -> Timeouts {
        Timeouts {
            header_read: 60_000 * MS,
            idle: 60_000 * MS,
            send: 500 * MS,
        }
    }

    #[tokio::test]
    async fn silent_connection_gets_the_header_timeout() {
        let s = ConnState::default();
        let start = Instant::now();
        assert_eq!(
            watchdog(&s, t(), opened(), None).await,
            Expired::Head { started: false }
        );
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
        assert_eq!(watchdog(&s, t(), opened(), None).await, Expired::Idle);
        assert!(start.elapsed() >= 710 * MS);
    }

    #[tokio::test]
    async fn idle_connection_is_offered_for_parking_then_times_out() {
        let s = Arc::new(ConnState::default());
        let s2 = s.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(10 * MS).await;
            drop(s2.enter());
        });
        let Expired::Park { since } = watchdog(&s, t(), opened(), Some(50 * MS)).await else {
            panic!("not offered for parking");
        };
        assert!(since >= start + 10 * MS && start.elapsed() >= 60 * MS);
        // Not parked: the idle clock goes on from the same instant.
        let w = watchdog(&s, t(), Start::Idle { since }, None).await;
        assert_eq!(w, Expired::Idle);
        assert!(start.elapsed() >= 410 * MS);
    }

    /// Nothing wakes the watchdog when a request ends or a head starts: these deadlines are far
    /// shorter than any the watchdog knew of when it last went to sleep, and still hold.
    #[tokio::test]
    async fn deadlines_set_while_the_watchdog_sleeps_still_hold() {
        let long = Timeouts {
            header_read: 60_000 * MS,
            idle: 200 * MS,
            send: 60_000 * MS,
        };
        let s = Arc::new(ConnState::default());
        let busy = s.enter();
        let s2 = s.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(50 * MS).await;
            drop(busy);
        });
        let w = tokio::time::timeout(10_000 * MS, watchdog(&s, long, opened(), None)).await;
        assert_eq!(w, Ok(Expired::Idle));
        assert!(start.elapsed() >= 250 * MS, "{:?}", start.elapsed());

        let short_head = Timeouts {
            header_read: 100 * MS,
            idle: 60_000 * MS,
            send: 60_000 * MS,
        };
        let start = Instant::now();
        tokio::spawn(async move {
            drop(s2.enter());
            tokio::time::sleep(50 * MS).await;
            s2.on_read();
        });
        let w = tokio::time::timeout(10_000 * MS, watchdog(&s, short_head, opened(), None)).await;
        assert_eq!(w, Ok(Expired::Head { started: true }));
        assert!(start.elapsed() >= 150 * MS, "{:?}", start.elapsed());
    }

    /// A zero timeout (accepted by the config) must not wake the connection's task at every timer
    /// tick while a request is in flight.
    #[tokio::test]
    async fn a_zero_timeout_does_not_spin_the_watchdog() {
        let s = Arc::new(ConnState::default());
        let _busy = s.enter();
        let zero = Timeouts {
            header_read: Duration::ZERO,
            idle: Duration::ZERO,
            send: 60_000 * MS,
        };
        let mut polls = 0u32;
        let mut w = std::pin::pin!(watchdog(&s, zero, opened(), None));
        let counted = std::future::poll_fn(|cx| {
            polls += 1;
            w.as_mut().poll(cx)
        });
        let r = tokio::time::timeout(500 * MS, counted).await;
        assert!(r.is_err(), "busy: nothing may expire, got {r:?}");
        assert!(polls < 150, "{polls} polls in 500 ms");
    }

    #[tokio::test]
    async fn busy_connection_is_not_offered_for_parking() {
        let s = Arc::new(ConnState::default());
        let _busy = s.enter();
        let w = tokio::time::timeout(300 * MS, watchdog(&s, t(), opened(), Some(10 * MS))).await;
        assert!(w.is_err(), "{w:?}");
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
        assert_eq!(
            watchdog(&s, t(), opened(), None).await,
            Expired::Head { started: true }
        );
        assert!(start.elapsed() >= 300 * MS);
    }

    #[tokio::test]
    async fn a_full_socket_gets_the_send_timeout_and_progress_resets_it() {
        let s = Arc::new(ConnState::default());
        let _busy = s.enter();
        let s2 = s.clone();
        let start = Instant::now();
        tokio::spawn(async move {
            // A slow reader: the socket fills and drains again every 20 ms, for 200 ms.
            for _ in 0..10 {
                s2.on_write(false);
                tokio::time::sleep(20 * MS).await;
                s2.on_write(true);
            }
            s2.on_write(false);
        });
        assert_eq!(
            watchdog(&s, send_only(), opened(), None).await,
            Expired::Send
        );
        assert!(start.elapsed() >= 700 * MS, "{:?}", start.elapsed());
    }

    #[tokio::test]
    async fn an_http2_frame_held_by_the_window_gets_the_send_timeout() {
        let s = Arc::new(ConnState::default());
        s.h2.store(true, Relaxed);
        let mut busy = s.enter();
        let start = Instant::now();
        busy.handed();
        assert_eq!(
            watchdog(&s, send_only(), opened(), None).await,
            Expired::Send
        );
        assert!(start.elapsed() >= 500 * MS);
        // Asked for the next frame: no longer held.
        busy.asked();
        assert_eq!(s.send_stalled_since(), None);
    }

    #[tokio::test]
    async fn waiting_for_the_server_is_not_a_send_stall() {
        let s = Arc::new(ConnState::default());
        let mut busy = s.enter();
        // HTTP/1.1 hand-outs are not held (hyper writes them at once), and nothing is blocked.
        busy.handed();
        let w = tokio::time::timeout(1500 * MS, watchdog(&s, send_only(), opened(), None)).await;
        assert!(w.is_err(), "{w:?}");
    }
}
