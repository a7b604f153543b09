//! Upstream pools: their servers, each server's live state, and the pooled client that reaches them.
//!
//! A server's state (health, ejection, in-flight count) lives in an `Arc<ServerState>` that a reload
//! hands from the old table to the new one when the pool keeps that address, so a reload forgets
//! nothing about a server that stays. All of it is atomics: the hot path never locks.

pub mod client;

use crate::balance::{Balancer, PickInput};
use crate::config::{PoolConfig, ServerConfig};
use crate::sticky::Sticky;
use http::uri::Authority;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// Milliseconds since the process started: a cheap monotonic clock for ejection deadlines.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
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
    /// `now_ms()` until which passive detection keeps the server out; 0 = not ejected.
    pub ejected_until: AtomicU64,
    pub consecutive_failures: AtomicU32,
    pub ejections: AtomicU32,
    pub in_flight: AtomicU32,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Cold: written by the prober once per interval, read by `/status`.
    pub last_probe: Mutex<ProbeStatus>,
}

impl ServerState {
    pub fn new(healthy: bool) -> Self {
        ServerState {
            healthy: AtomicBool::new(healthy),
            draining: AtomicBool::new(false),
            ejected_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_probe: Mutex::new(ProbeStatus::default()),
        }
    }

    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Relaxed) > now
    }
}

#[derive(Debug)]
pub struct Server {
    pub address: Arc<str>,
    pub authority: Authority,
    pub weight: u32,
    pub state: Arc<ServerState>,
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
        self.serving(now) && !self.state.draining.load(Relaxed)
    }
}

#[derive(Debug)]
pub struct Pool {
    pub name: Arc<str>,
    pub servers: Box<[Server]>,
    pub balancer: Balancer,
    pub client: client::UpstreamClient,
    pub sticky: Option<Sticky>,
    pub config: PoolConfig,
    /// Set when a reload replaces this pool, so its probe task stops.
    pub retired: AtomicBool,
}

impl Pool {
    /// Builds a pool, taking over the state of servers that `previous` already had.
    pub fn build(cfg: &PoolConfig, previous: Option<&Pool>) -> Result<Pool, crate::tls::TlsError> {
        let initial = cfg.health.as_ref().is_none_or(|h| h.initial_healthy);
        let servers: Box<[Server]> = cfg
            .servers
            .iter()
            .map(|s| {
                let kept = previous.and_then(|p| p.server(&s.address));
                let state =
                    kept.map_or_else(|| Arc::new(ServerState::new(initial)), |k| k.state.clone());
                Server::new(s, state)
            })
            .collect();
        Ok(Pool {
            name: cfg.name.as_str().into(),
            balancer: Balancer::new(cfg.balance, cfg.hash_key.as_deref(), &servers),
            client: client::build(cfg)?,
            sticky: cfg
                .sticky
                .as_ref()
                .map(|s| Sticky::new(s, &cfg.name, &servers)),
            servers,
            config: cfg.clone(),
            retired: AtomicBool::new(false),
        })
    }

    pub fn server(&self, address: &str) -> Option<&Server> {
        self.servers.iter().find(|s| &*s.address == address)
    }

    /// A server for a new request, skipping `tried` ones; in panic mode, any server at all.
    pub fn pick(&self, input: &PickInput<'_>, tried: &[usize]) -> Option<usize> {
        let now = now_ms();
        let ok = |i: usize| self.servers[i].available(now) && !tried.contains(&i);
        let picked = self.balancer.pick(&self.servers, input, ok);
        if picked.is_none() && self.config.panic {
            return self
                .balancer
                .pick(&self.servers, input, |i| !tried.contains(&i));
        }
        picked
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
