//! Upstream pools: their servers, each server's live state, and the pooled client that reaches them.
//!
//! A server's state (health, ejection, in-flight count) lives in an `Arc<ServerState>` that a reload
//! hands from the old table to the new one when the pool keeps that address, so a reload forgets
//! nothing about a server that stays. All of it is atomics: the hot path never locks.

pub mod client;
pub mod h1;

use crate::balance::{Balancer, PickInput};
use crate::config::{PoolConfig, RetryBudgetConfig, ServerConfig};
use crate::sticky::Sticky;
use http::uri::Authority;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Milliseconds since the process started: a cheap monotonic clock for ejection deadlines, read
/// once per poll of a connection's task ([`crate::clock`]).
pub fn now_ms() -> u64 {
    let since = crate::clock::tokio_now().saturating_duration_since(crate::epoch());
    since.as_millis() as u64 + 1
}

/// The last active probe, for `/status` and for logging state changes.
#[derive(Debug, Clone, Default)]
pub struct ProbeStatus {
    pub at_ms: u64,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug)]
pub struct ServerState {
    pub healthy: AtomicBool,
    pub draining: AtomicBool,
    /// `now_ms()` when the current drain began, which starts the sticky `drain_timeout`.
    pub draining_since: AtomicU64,
    /// `now_ms()` until which passive detection keeps the server out; 0 = not ejected.
    pub ejected_until: AtomicU64,
    pub consecutive_failures: AtomicU32,
    pub ejections: AtomicU32,
    pub in_flight: AtomicU32,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// `now_ms()` when the server last came back up (probe or end of ejection), for slow start.
    pub up_since: AtomicU64,
    /// Cold: written by the prober once per interval, read by `/status`.
    pub last_probe: Mutex<ProbeStatus>,
}

impl ServerState {
    pub fn new(healthy: bool) -> Self {
        ServerState {
            healthy: AtomicBool::new(healthy),
            draining: AtomicBool::new(false),
            draining_since: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            up_since: AtomicU64::new(0),
            last_probe: Mutex::new(ProbeStatus::default()),
        }
    }

    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Relaxed) > now
    }

    /// Stops new clients; a drain already under way keeps its start time (and its deadline).
    pub fn start_draining(&self) {
        if !self.draining.swap(true, Relaxed) {
            self.draining_since.store(now_ms(), Relaxed);
        }
    }

    pub fn stop_draining(&self) {
        self.draining.store(false, Relaxed);
    }
}

#[derive(Debug)]
pub struct Server {
    pub address: Arc<str>,
    pub authority: Authority,
    pub weight: u32,
    pub state: Arc<ServerState>,
    /// Gone from the config but kept, draining, for the clients a sticky cookie pins to it.
    pub removed: bool,
}

impl Server {
    fn new(cfg: &ServerConfig, state: Arc<ServerState>) -> Server {
        Server {
            authority: cfg
                .address
                .parse()
                .unwrap_or(Authority::from_static("invalid:1")),
            address: cfg.address.as_str().into(),
            weight: cfg.weight,
            state,
            removed: false,
        }
    }

    #[cfg(test)]
    pub fn for_test(address: &str, weight: u32) -> Server {
        let cfg = ServerConfig {
            address: address.into(),
            weight,
        };
        Server::new(&cfg, Arc::new(ServerState::new(true)))
    }

    /// Up, not ejected: may serve requests that are pinned to it (draining included).
    pub fn serving(&self, now: u64) -> bool {
        self.state.healthy.load(Relaxed) && !self.state.ejected(now)
    }

    /// May receive new, unpinned requests.
    pub fn available(&self, now: u64) -> bool {
        self.serving(now) && !self.draining()
    }

    pub fn draining(&self) -> bool {
        self.removed || self.state.draining.load(Relaxed)
    }

    /// May serve a request a sticky cookie pins to it: serving, and if draining, not for longer
    /// than `drain_timeout`.
    pub fn serves_pinned(&self, now: u64, drain_timeout: Duration) -> bool {
        self.serving(now)
            && (!self.draining()
                || now.saturating_sub(self.state.draining_since.load(Relaxed))
                    < drain_timeout.as_millis() as u64)
    }

    /// The share of its weight a recovering server gets: 10% rising to 100% over `window`.
    fn slow_start_share(&self, now: u64, window: Duration) -> f64 {
        let since = self
            .state
            .up_since
            .load(Relaxed)
            .max(self.state.ejected_until.load(Relaxed));
        let elapsed = now.saturating_sub(since) as f64;
        let w = window.as_millis() as f64;
        if since == 0 || elapsed >= w {
            1.0
        } else {
            (elapsed / w).max(0.1)
        }
    }
}

/// Retry budget: every request deposits `percent`% of a token, every retry that reaches a server
/// spends one, so retries stay near that share of traffic and a sick pool is not hammered. On top of
/// that, `min_per_second` retries are allowed each second whatever the ratio (as Envoy and Linkerd
/// do), so a pool with little traffic can still route around one bad server.
#[derive(Debug)]
pub struct RetryBudget {
    milli_tokens: AtomicI64,
    deposit: i64,
    min_per_second: u32,
    /// The current second (`now_ms() / 1000`, high 32 bits) and the floor retries spent in it.
    floor: AtomicU64,
}

impl RetryBudget {
    const CAP: i64 = 100_000;

    fn new(cfg: RetryBudgetConfig) -> Self {
        RetryBudget {
            milli_tokens: AtomicI64::new(10_000),
            deposit: cfg.percent as i64 * 10,
            min_per_second: cfg.min_per_second,
            floor: AtomicU64::new(0),
        }
    }

    pub fn deposit(&self) {
        if self.milli_tokens.load(Relaxed) < Self::CAP {
            self.milli_tokens.fetch_add(self.deposit, Relaxed);
        }
    }

    /// Takes one retry: from this second's floor first, so the ratio's tokens are kept for bursts.
    pub fn try_spend(&self) -> bool {
        self.try_floor(now_ms() / 1000) || self.try_ratio()
    }

    fn try_ratio(&self) -> bool {
        if self.milli_tokens.fetch_sub(1000, Relaxed) >= 1000 {
            true
        } else {
            self.milli_tokens.fetch_add(1000, Relaxed);
            false
        }
    }

    fn try_floor(&self, second: u64) -> bool {
        if self.min_per_second == 0 {
            return false;
        }
        let second = second & 0xffff_ffff;
        self.floor
            .fetch_update(Relaxed, Relaxed, |v| {
                let (s, used) = (v >> 32, v & 0xffff_ffff);
                if s != second {
                    Some(second << 32 | 1)
                } else if used < self.min_per_second as u64 {
                    Some(v + 1)
                } else {
                    None
                }
            })
            .is_ok()
    }
}

/// Servers of `prev` that the new config dropped, kept draining so the clients pinned to them keep
/// their sessions until the sticky `drain_timeout` (counted from the drain's start) passes.
fn removed_servers(cfg: &PoolConfig, prev: &Pool, drain_timeout: Duration) -> Vec<Server> {
    let now = now_ms();
    prev.servers
        .iter()
        .filter(|s| !cfg.servers.iter().any(|c| *c.address == *s.address))
        .filter_map(|s| {
            s.state.start_draining();
            let since = s.state.draining_since.load(Relaxed);
            if now.saturating_sub(since) >= drain_timeout.as_millis() as u64 {
                return None;
            }
            tracing::info!(pool = %cfg.name, server = %s.address, "server removed from the config; draining its sticky sessions");
            Some(Server {
                address: s.address.clone(),
                authority: s.authority.clone(),
                weight: s.weight,
                state: s.state.clone(),
                removed: true,
            })
        })
        .collect()
}

/// The result of one pick.
pub enum Pick {
    Server(usize),
    /// Servers are up but every one is at its `max_connections`.
    Full,
    None,
}

#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub servers: Box<[Server]>,
    pub balancer: Balancer,
    /// hyper-util's pooled client, one per worker: its HTTP/2 connections run as tasks on the
    /// worker that opened them, so a shared client would send every other worker's requests
    /// across threads and back (a wake-up each way).
    clients: Box<[client::UpstreamClient]>,
    /// Set for HTTP/1.1-only pools: requests drive their upstream connections themselves.
    pub h1: Option<Arc<h1::H1>>,
    pub sticky: Option<Sticky>,
    pub config: PoolConfig,
    /// Set when a reload replaces this pool, so its probe task stops.
    pub retired: AtomicBool,
    pub budget: RetryBudget,
    /// Woken when a request finishes, for requests queued on `max_connections`.
    pub released: Notify,
    pub queued: AtomicU32,
}

impl Pool {
    /// The calling worker's client (HTTP/2, ALPN-chosen protocols, upgrades, health probes).
    pub fn client(&self) -> &client::UpstreamClient {
        &self.clients[crate::workers::index() % self.clients.len()]
    }

    /// Builds a pool, taking over the state of servers that `previous` already had.
    pub fn build(cfg: &PoolConfig, previous: Option<&Pool>) -> Result<Pool, crate::tls::TlsError> {
        let initial = cfg.health.as_ref().is_none_or(|h| h.initial_healthy);
        let mut servers: Vec<Server> = cfg
            .servers
            .iter()
            .map(|s| {
                let kept = previous.and_then(|p| p.server(&s.address));
                if let Some(k) = kept.filter(|k| k.removed) {
                    // Back in the config: its drain was only for having been removed.
                    k.state.stop_draining();
                }
                let state =
                    kept.map_or_else(|| Arc::new(ServerState::new(initial)), |k| k.state.clone());
                Server::new(s, state)
            })
            .collect();
        if let (Some(sticky), Some(prev)) = (&cfg.sticky, previous) {
            servers.extend(removed_servers(cfg, prev, sticky.drain_timeout));
        }
        let servers = servers.into_boxed_slice();
        let connector = client::connector(cfg)?;
        let h1 = client::http1_only(cfg).then(|| {
            h1::H1::new(
                connector.clone(),
                cfg.tls.is_some(),
                servers.len(),
                cfg.max_idle_per_server,
                cfg.idle_timeout,
            )
        });
        Ok(Pool {
            name: cfg.name.as_str().into(),
            balancer: Balancer::new(cfg.balance, cfg.hash_key.as_deref(), &servers),
            clients: (0..crate::workers::count())
                .map(|_| client::build(cfg, connector.clone()))
                .collect(),
            h1,
            sticky: cfg
                .sticky
                .as_ref()
                .map(|s| Sticky::new(s, &cfg.name, &servers)),
            servers,
            config: cfg.clone(),
            retired: AtomicBool::new(false),
            budget: RetryBudget::new(cfg.retry_budget),
            released: Notify::new(),
            queued: AtomicU32::new(0),
        })
    }

    /// Whether the probe task of server `idx` has work: a removed server whose drain is over serves
    /// no one, so it is not probed any more.
    pub fn probed(&self, idx: usize) -> bool {
        let s = &self.servers[idx];
        let timeout = self.sticky.as_ref().map(|st| st.config.drain_timeout);
        !s.removed
            || timeout.is_some_and(|t| {
                now_ms().saturating_sub(s.state.draining_since.load(Relaxed)) < t.as_millis() as u64
            })
    }

    pub fn server(&self, address: &str) -> Option<&Server> {
        self.servers.iter().find(|s| &*s.address == address)
    }

    /// A server for a new request, skipping `tried` ones, honouring slow start and per-server
    /// limits; in panic mode, when none is up, any server at all.
    pub fn pick(&self, input: &PickInput<'_>, tried: &[usize]) -> Pick {
        let now = now_ms();
        let cfg = &self.config;
        let under_limit = |i: usize| {
            cfg.max_connections
                .is_none_or(|m| self.servers[i].state.in_flight.load(Relaxed) < m)
        };
        let admit = |i: usize| match cfg.slow_start {
            Some(w) => {
                let share = self.servers[i].slow_start_share(now, w);
                share >= 1.0 || fastrand::f64() < share
            }
            None => true,
        };
        let up = |i: usize| self.servers[i].available(now) && !tried.contains(&i);
        if let Some(i) = self.balancer.pick(&self.servers, input, |i| {
            up(i) && under_limit(i) && admit(i)
        }) {
            return Pick::Server(i);
        }
        // Slow start may have turned every candidate away by chance; limits may have too.
        if let Some(i) = self
            .balancer
            .pick(&self.servers, input, |i| up(i) && under_limit(i))
        {
            return Pick::Server(i);
        }
        if self.balancer.pick(&self.servers, input, up).is_some() {
            return Pick::Full;
        }
        if cfg.panic {
            if let Some(i) = self
                .balancer
                .pick(&self.servers, input, |i| !tried.contains(&i))
            {
                return Pick::Server(i);
            }
        }
        Pick::None
    }

    /// Like [`Pool::pick`], but waits in the pool's bounded queue while every server is at its
    /// `max_connections`.
    pub async fn acquire(&self, input: &PickInput<'_>, tried: &[usize]) -> Result<usize, NoServer> {
        // Read the clock only once the queue is needed (most picks find a server at once).
        let mut deadline = None;
        loop {
            let notified = self.released.notified();
            match self.pick(input, tried) {
                Pick::Server(i) => return Ok(i),
                Pick::None => return Err(NoServer::Unhealthy),
                Pick::Full => {
                    if self.queued.fetch_add(1, Relaxed) >= self.config.queue_size {
                        self.queued.fetch_sub(1, Relaxed);
                        return Err(NoServer::QueueFull);
                    }
                    let deadline = *deadline.get_or_insert_with(|| {
                        tokio::time::Instant::now() + self.config.queue_timeout
                    });
                    let woke = tokio::time::timeout_at(deadline, notified).await;
                    self.queued.fetch_sub(1, Relaxed);
                    if woke.is_err() {
                        return Err(NoServer::QueueFull);
                    }
                }
            }
        }
    }

    /// Called when a request to server `idx` ends.
    pub fn release(&self, idx: usize) {
        self.servers[idx].state.in_flight.fetch_sub(1, Relaxed);
        if self.config.max_connections.is_some() {
            self.released.notify_one();
        }
    }

    /// Records the outcome of a request for passive failure detection (outlier ejection).
    pub fn record(&self, idx: usize, failed: bool) {
        let s = &self.servers[idx].state;
        if !failed {
            if s.consecutive_failures.load(Relaxed) != 0 {
                s.consecutive_failures.store(0, Relaxed);
            }
            return;
        }
        s.failures.fetch_add(1, Relaxed);
        let p = &self.config.passive;
        let n = s.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if p.consecutive_failures == 0 || n < p.consecutive_failures {
            return;
        }
        let now = now_ms();
        let ejected = self.servers.iter().filter(|x| x.state.ejected(now)).count();
        let max = self.servers.len() * p.max_ejected_percent as usize / 100;
        if ejected >= max || s.ejected(now) {
            return;
        }
        let times = s.ejections.fetch_add(1, Relaxed);
        let base = p.ejection_time.as_millis() as u64;
        let dur = base
            .saturating_mul(1u64 << times.min(16))
            .min(p.max_ejection_time.as_millis() as u64);
        s.ejected_until.store(now + dur, Relaxed);
        s.consecutive_failures.store(0, Relaxed);
        tracing::warn!(pool = %self.name, server = %self.servers[idx].address, ejected_ms = dur,
            consecutive_failures = n, "server ejected after consecutive failures");
    }
}

/// Why [`Pool::acquire`] found no server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoServer {
    /// None is healthy, serving and untried.
    Unhealthy,
    /// Every candidate is at `max_connections` and the queue is full or its wait timed out.
    QueueFull,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: u32, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(RetryBudgetConfig {
            percent,
            min_per_second,
        })
    }

    #[test]
    fn ratio_alone_runs_dry() {
        let b = budget(20, 0);
        // The initial 10 tokens, then one per 5 requests.
        let spent = (0..100).filter(|_| b.try_spend()).count();
        assert_eq!(spent, 10);
        for _ in 0..10 {
            b.deposit();
        }
        assert!(b.try_spend() && b.try_spend() && !b.try_spend());
    }

    #[test]
    fn floor_allows_min_per_second_each_second() {
        let b = budget(0, 3);
        let in_second = |s| (0..10).filter(|_| b.try_floor(s)).count();
        assert_eq!(in_second(7), 3);
        assert_eq!(in_second(7), 0);
        assert_eq!(in_second(8), 3);
        assert!(!budget(0, 0).try_floor(1));
    }

    /// A pool `p` of `n` servers with extra pool lines, through the real parser and validator.
    fn pool(n: usize, lines: &str) -> Pool {
        let addresses: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", 9000 + i)).collect();
        pool_at(&addresses, lines)
    }

    /// A pool `p` of the servers at `addresses`, built as `weir run` builds one (`h1`'s tests
    /// send through it).
    pub(crate) fn pool_at(addresses: &[String], lines: &str) -> Pool {
        let servers: String = addresses
            .iter()
            .map(|a| format!("      - address: \"{a}\"\n"))
            .collect();
        let text = format!(
            "listeners:\n  - name: web\n    bind: \"127.0.0.1:0\"\npools:\n  p:\n{lines}    servers:\n{servers}\
             routes:\n  - name: r\n    match: {{ path_prefix: \"/\" }}\n    pool: p\n"
        );
        let mut diags = crate::config::Diagnostics::default();
        let mut raw = crate::config::source::RawConfig::default();
        crate::config::source::load_text("t.yaml".into(), &text, &mut raw, &mut diags);
        let cfg = crate::config::validate::validate(raw, &mut diags);
        assert!(!diags.has_errors(), "{text}");
        Pool::build(&cfg.pools[0], None).expect("pool")
    }

    /// How long server `i` stays ejected from now, in whole seconds.
    fn ejected_for_s(p: &Pool, i: usize) -> u64 {
        p.servers[i]
            .state
            .ejected_until
            .load(Relaxed)
            .saturating_sub(now_ms())
            .div_ceil(1000)
    }

    #[test]
    fn ejection_doubles_on_each_offence_up_to_its_cap() {
        let p = pool(
            2,
            "    passive:\n      consecutive_failures: 2\n      ejection_time: 10s\n      max_ejection_time: 25s\n",
        );
        let mut seen = Vec::new();
        for _ in 0..4 {
            p.record(0, true);
            assert_eq!(
                ejected_for_s(&p, 0),
                0,
                "one failure is below the threshold"
            );
            p.record(0, true);
            seen.push(ejected_for_s(&p, 0));
            // The ejection runs out.
            p.servers[0].state.ejected_until.store(0, Relaxed);
        }
        assert_eq!(seen, [10, 20, 25, 25]);
        // A success in between resets the count of consecutive failures.
        p.record(0, true);
        p.record(0, false);
        p.record(0, true);
        assert_eq!(ejected_for_s(&p, 0), 0);
    }

    #[test]
    fn ejection_never_takes_more_than_its_share_of_the_pool() {
        let p = pool(
            4,
            "    passive:\n      consecutive_failures: 1\n      max_ejected_percent: 50\n",
        );
        for i in 0..4 {
            p.record(i, true);
        }
        let now = now_ms();
        let out = p.servers.iter().filter(|s| s.state.ejected(now)).count();
        assert_eq!(out, 2);
        let lone = pool(1, "    passive:\n      consecutive_failures: 1\n");
        lone.record(0, true);
        assert!(
            !lone.servers[0].state.ejected(now_ms()),
            "a one-server pool emptied"
        );
    }

    #[test]
    fn floor_is_used_before_the_ratio_tokens() {
        let b = budget(20, 1_000);
        for _ in 0..500 {
            assert!(b.try_spend());
        }
        assert_eq!(b.milli_tokens.load(Relaxed), 10_000);
    }
}
