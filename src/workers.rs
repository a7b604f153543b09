//! Thread-per-core event loops, the way nginx runs worker processes.
//!
//! tokio's multi-threaded scheduler moves tasks between threads and wakes one thread from another
//! (a futex or eventfd write each time), and its shared run queues and timer wheel bounce cache
//! lines between cores. A proxy connection has no reason to move: its client socket, its upstream
//! socket and its timers all belong to one request loop. So weir runs `N` single-threaded runtimes
//! instead: the main thread's (which also runs reload, health checks and the admin API) and `N-1`
//! worker threads. One worker in four accepts on each listener (each such worker polls a duplicate
//! of the listening socket; see [`ACCEPT_EVERY`]), and hands each connection it accepts to the
//! worker serving the fewest connections ([`pick`]; itself on a tie), where it is served to its
//! end. Left to the kernel, the worker that wakes first takes a whole burst of connections, and the
//! other stays idle. Measured on 2 cores (wrk -t2 -c50, keep-alive, nothing pinned), two workers
//! this way served ~44k requests/s against ~37k for tokio's work-stealing runtime with two threads;
//! two separate one-worker processes did ~47k (the rest is what the workers share: counters, the
//! balancer, pool locks).
//!
//! Upstream connections are per worker too ([`index`]): HTTP/1.1 idle lists, and hyper-util's
//! client (HTTP/2 upstreams, upgrades), so a request never waits on a socket or a connection task
//! that another thread's event loop runs.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;
use tokio::runtime::Handle;

/// The runtimes of the worker threads other than the main one.
static EXTRA: OnceLock<Vec<Handle>> = OnceLock::new();

/// Client connections each worker is serving.
static LOAD: OnceLock<Box<[AtomicUsize]>> = OnceLock::new();

thread_local! {
    /// This thread's worker number: 0 on the main thread and on any thread that is not a worker.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// What every worker runs every [`UPKEEP_EVERY`], busy or not, set by the binary, which chooses the
/// allocator: it hands the memory the allocator holds free back to the OS. mimalloc keeps the
/// free pages of a segment that is still in use until it is next called on them, which a worker
/// whose connections all went idle is not: 10,000 connections opened at once, then idle, left it
/// holding ~0.8 KB per connection of such pages until the upstream connections of the burst
/// timed out (purging on every free instead cost a quarter of the new-connection throughput).
static UPKEEP: OnceLock<fn()> = OnceLock::new();

/// How often [`UPKEEP`] runs; it took 0.1-0.5 ms with 10,000 idle connections on the worker.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Starts `n - 1` worker threads beside the calling (main) thread, each with a runtime from
/// [`runtime`] that runs whatever is spawned on it until the process exits; every worker runs
/// `upkeep` every [`UPKEEP_EVERY`]. Only the first call starts any.
pub fn start(n: usize, upkeep: Option<fn()>) -> std::io::Result<()> {
    if let Some(f) = upkeep {
        let _ = UPKEEP.set(f);
    }
    if n <= 1 || EXTRA.get().is_some() {
        return Ok(());
    }
    let mut handles = Vec::with_capacity(n - 1);
    for i in 1..n {
        let rt = runtime()?;
        handles.push(rt.handle().clone());
        std::thread::Builder::new()
            .name(format!("weir-worker-{i}"))
            .spawn(move || {
                INDEX.with(|c| c.set(i));
                rt.block_on(std::future::pending::<()>());
            })?;
    }
    let _ = LOAD.set((0..n).map(|_| AtomicUsize::new(0)).collect());
    let _ = EXTRA.set(handles);
    Ok(())
}

/// How many tasks a worker runs between two looks at its sockets and timers while it has tasks
/// queued (it always looks when it has none). Measured with wrk, pinned, each value interleaved
/// with the others and nginx in the same run (2026-12-07):
/// - tokio's default, 61, looks in the middle of a round of 50 keep-alive connections, and weir's
///   latency spread wider than nginx's at the same mean: p90 1.14-1.35 ms and p99 1.47-2.13 ms
///   against nginx's 1.02-1.13 and 1.37-1.53 (three rounds);
/// - 128 or more serves such a round whole: p90 1.05-1.21, p99 1.55-1.68 at 128; 1.04-1.23 and
///   1.37-1.75 at 200;
/// - but at 1,000 connections a long run between looks puts a connection's request and its
///   response ~1,000 tasks apart, so its state is out of the cache by the time the response is
///   read: 1,024 cost 8% of the throughput there (two sets of three rounds), 256 about as much in
///   two of three rounds, 128 nothing measurable (35.8k, 36.4k, 29.6k req/s against 35.1k, 37.2k,
///   32.5k at 61).
const EVENT_INTERVAL: u32 = 128;

/// A worker's single-threaded runtime (the main thread's too), with the upkeep task in it.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .build()?;
    if let Some(&upkeep) = UPKEEP.get() {
        rt.spawn(async move {
            let first = tokio::time::Instant::now() + UPKEEP_EVERY;
            let mut every = tokio::time::interval_at(first, UPKEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                upkeep();
            }
        });
    }
    Ok(rt)
}

/// How many workers there are (the main thread counts as one).
pub fn count() -> usize {
    EXTRA.get().map_or(1, |e| e.len() + 1)
}

/// The worker the calling thread is: `0..count()`.
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// How many workers share one accepting worker.
///
/// A listening socket polled by several event loops wakes all of them for each new connection
/// (tokio cannot register it `EPOLLEXCLUSIVE`, as nginx does), and all but one find nothing to
/// accept. Measured with two workers (wrk -t2 -c50 `Connection: close`, nothing pinned, three
/// interleaved rounds): worker 0 alone accepting served 36.6-37.2k req/s at 23.0-23.2 µs of
/// weir's CPU per request, both accepting 34.1-35.4k at 24.0-24.5 µs (worker 1 alone was between
/// the two in a three-way run); keep-alive was unchanged. The handing on is the same either way
/// ([`pick`]). With many workers one acceptor would become the bottleneck, hence one per four.
const ACCEPT_EVERY: usize = 4;

/// Whether worker `i` accepts connections: worker 0, 4, 8…
fn accepts(i: usize) -> bool {
    i % ACCEPT_EVERY == 0
}

/// Runs `make()`'s future on each worker that accepts connections ([`ACCEPT_EVERY`]), built on the
/// thread that runs it (so what it registers, sockets and timers, belongs to that worker). Called
/// on the main thread.
pub fn spawn_on_acceptors<F, Fut>(make: F)
where
    F: Fn() -> Fut + Send + Clone + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    for (i, h) in EXTRA.get().into_iter().flatten().enumerate() {
        if accepts(i + 1) {
            let make = make.clone();
            h.spawn(async move { make().await });
        }
    }
    if accepts(0) {
        tokio::spawn(make());
    }
}

/// The worker that should serve the next connection: the one serving the fewest, the calling
/// worker if it is among them.
pub fn pick() -> usize {
    let me = index();
    match LOAD.get() {
        Some(load) => least_loaded(load.iter().map(|l| l.load(Relaxed)), me),
        None => me,
    }
}

/// The index of the smallest load; `me` wins ties.
fn least_loaded(loads: impl Iterator<Item = usize>, me: usize) -> usize {
    let (mut mine, mut best) = (None, None);
    for (i, l) in loads.enumerate() {
        if i == me {
            mine = Some(l);
        }
        if best.is_none_or(|(b, _)| l < b) {
            best = Some((l, i));
        }
    }
    match (mine, best) {
        (Some(m), Some((b, i))) if b < m => i,
        (None, Some((_, i))) => i,
        _ => me,
    }
}

/// Connections each worker is serving, worker 0 first; none with a single worker, which keeps no
/// count.
pub fn loads() -> impl Iterator<Item = usize> {
    LOAD.get()
        .into_iter()
        .flat_map(|l| l.iter().map(|a| a.load(Relaxed)))
}

/// One connection in a worker's count, for as long as it lives.
pub struct Serving(usize);

impl Serving {
    pub fn new(worker: usize) -> Serving {
        if let Some(l) = LOAD.get().and_then(|l| l.get(worker)) {
            l.fetch_add(1, Relaxed);
        }
        Serving(worker)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(l) = LOAD.get().and_then(|l| l.get(self.0)) {
            l.fetch_sub(1, Relaxed);
        }
    }
}

/// Spawns the future `make` returns (if any) on worker `worker`'s runtime (the current one for
/// the calling worker). `make` runs there, and its future is spawned there as a task of its own
/// rather than awaited inside another: a task that built and then awaited it would keep the
/// closure's captures beside it (a parked connection's task was 768 bytes that way; it is 256).
pub fn spawn_on<F, Fut>(worker: usize, make: F)
where
    F: FnOnce() -> Option<Fut> + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match EXTRA.get().and_then(|e| e.get(worker.wrapping_sub(1))) {
        Some(h) if worker != index() => {
            h.spawn(async move {
                if let Some(fut) = make() {
                    tokio::spawn(fut);
                }
            });
        }
        _ => {
            if let Some(fut) = make() {
                tokio::spawn(fut);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{accepts, least_loaded};

    #[test]
    fn one_worker_in_four_accepts() {
        let acceptors = |n| (0..n).filter(|&i| accepts(i)).collect::<Vec<_>>();
        assert_eq!(acceptors(1), [0]);
        assert_eq!(acceptors(2), [0]);
        assert_eq!(acceptors(4), [0]);
        assert_eq!(acceptors(5), [0, 4]);
        assert_eq!(acceptors(16), [0, 4, 8, 12]);
    }

    #[test]
    fn the_least_loaded_worker_is_picked_and_the_caller_wins_ties() {
        assert_eq!(least_loaded([3, 1, 2].into_iter(), 0), 1);
        assert_eq!(least_loaded([1, 1, 2].into_iter(), 1), 1);
        assert_eq!(least_loaded([1, 1, 2].into_iter(), 2), 0);
        assert_eq!(least_loaded([0, 0].into_iter(), 0), 0);
        assert_eq!(least_loaded([5].into_iter(), 0), 0);
    }
}
