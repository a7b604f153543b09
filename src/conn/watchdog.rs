//! The per-connection timers: `idle_timeout` between requests, `header_read_timeout` for a head,
//! `send_timeout` for responses the client does not take (see the parent module for what counts
//! as a send stall). One timer per connection: the watchdog sleeps until the nearest deadline and is
//! woken by the connection's parts only when a request starts or ends, or a head starts.

use super::ConnState;
use std::sync::atomic::Ordering::Relaxed;
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
pub async fn watchdog(
    state: &ConnState,
    t: Timeouts,
    start: Start,
    park_after: Option<Duration>,
) -> Expired {
    let (mut phase, at) = match start {
        Start::Head { at, started } => {
            if !started {
                state.read_armed.store(true, Relaxed);
            }
            (Phase::Head { since: at, started }, at)
        }
        Start::Idle { since } => (Phase::Idle { since }, since),
    };
    let mut seen = state.requests.load(Relaxed);
    // One timer for the connection's life. A later deadline leaves it where it is (it then fires
    // early once and is moved on), so a request costs no timer update, only an earlier deadline
    // does.
    let sleep = tokio::time::sleep_until(at);
    tokio::pin!(sleep);
    loop {
        phase = next_phase(state, phase, &mut seen);
        let now = Instant::now();
        let stalled = state.send_stalled_since();
        if stalled.is_some_and(|s| now >= s + t.send) {
            return Expired::Send;
        }
        let send_check = stalled.unwrap_or(now) + t.send;
        let due = phase_deadline(state, phase, t);
        let park = match (phase, park_after) {
            (Phase::Idle { since }, Some(after)) => Some(since + after),
            _ => None,
        };
        let target = [due, park]
            .into_iter()
            .flatten()
            .fold(send_check, Instant::min);
        if sleep.is_elapsed() || target < sleep.deadline() {
            sleep.as_mut().reset(target);
        }
        let notified = state.wake.notified();
        tokio::select! {
            _ = notified => {}
            _ = sleep.as_mut() => {
                let mut s = seen;
                let now = Instant::now();
                if next_phase(state, phase, &mut s) != phase {
                    continue;
                }
                if due.is_some_and(|d| now >= d) {
                    return match phase {
                        Phase::Head { started, .. } if !state.h2.load(Relaxed) => Expired::Head { started },
                        _ => Expired::Idle,
                    };
                }
                if let (Phase::Idle { since }, Some(p)) = (phase, park) {
                    if now >= p {
                        return Expired::Park { since };
                    }
                }
            }
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

fn next_phase(state: &ConnState, phase: Phase, seen: &mut u64) -> Phase {
    let now = Instant::now();
    let requests = state.requests.load(Relaxed);
    if state.in_flight.load(Relaxed) > 0 {
        *seen = requests;
        return Phase::Busy;
    }
    if phase == Phase::Busy || requests != *seen {
        // A request finished: idle from now until the next head starts, or, when part of the
        // next head already came with this one (pipelined in the same read, so no later read
        // will start its clock), that head's time starts now.
        *seen = requests;
        state.read_armed.store(true, Relaxed);
        if state.head_pending.load(Relaxed) && !state.h2.load(Relaxed) {
            return Phase::Head {
                since: now,
                started: true,
            };
        }
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
