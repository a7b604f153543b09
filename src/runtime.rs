//! The compiled, immutable table a request is served from, and the one `ArcSwap` that holds it.
//!
//! Routes, pools, balancers and TLS configs are built together and swapped together: a request loads
//! the table once and keeps its `Arc`, so a reload never changes the rules under a request in flight.
//! Listening sockets are not part of the table; the listener supervisor keeps them across reloads.

use crate::config::{Config, ListenerConfig};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::router::Router;
use arc_swap::ArcSwap;
use http::HeaderValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("listener {listener:?}: {source}")]
    ListenerTls {
        listener: String,
        source: crate::tls::TlsError,
    },
    #[error("pool {pool:?}: {source}")]
    PoolTls {
        pool: String,
        source: crate::tls::TlsError,
    },
}

/// What one listener serves with, rebuilt on every reload (certificate rotation happens here).
pub struct ListenerRuntime {
    pub name: Arc<str>,
    pub config: ListenerConfig,
    pub tls: Option<crate::tls::ServerTls>,
    pub hsts: Option<HeaderValue>,
    pub http: crate::server::Http,
}

pub struct Runtime {
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub pools: Vec<Arc<Pool>>,
    pub listeners: HashMap<String, Arc<ListenerRuntime>>,
}

impl Runtime {
    /// Compiles `config`, carrying server state over from `previous` for servers that stay.
    pub fn compile(
        config: Config,
        previous: Option<&Runtime>,
        generation: u64,
    ) -> Result<Runtime, CompileError> {
        let mut pools = Vec::with_capacity(config.pools.len());
        for p in &config.pools {
            let old = previous.and_then(|r| r.pool(&p.name));
            let pool =
                Pool::build(p, old.map(|a| &**a)).map_err(|source| CompileError::PoolTls {
                    pool: p.name.clone(),
                    source,
                })?;
            pools.push(Arc::new(pool));
        }
        let mut listeners = HashMap::new();
        for l in &config.listeners {
            let tls = match &l.tls {
                Some(t) => Some(crate::tls::server_config(t).map_err(|source| {
                    CompileError::ListenerTls {
                        listener: l.name.clone(),
                        source,
                    }
                })?),
                None => None,
            };
            let hsts = l
                .tls
                .as_ref()
                .and_then(|t| t.hsts.as_ref())
                .and_then(|h| HeaderValue::from_str(h).ok());
            let lr = ListenerRuntime {
                name: l.name.as_str().into(),
                config: l.clone(),
                tls,
                hsts,
                http: crate::server::Http::new(&l.limits),
            };
            listeners.insert(l.name.clone(), Arc::new(lr));
        }
        Ok(Runtime {
            generation,
            router: Router::new(&config.routes),
            pools,
            listeners,
            config: Arc::new(config),
        })
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| &*p.name == name)
    }

    /// Marks pools of this table as replaced, so their probe tasks end.
    pub fn retire(&self) {
        for p in &self.pools {
            p.retired.store(true, Relaxed);
        }
    }
}

/// State shared by every task of the process.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Metrics,
    /// Set when a graceful shutdown starts: `/healthz` turns 503 at once.
    pub draining: AtomicBool,
    /// Upgraded (WebSocket) connections: they outlive their HTTP connection, so a drain waits for
    /// them separately and they survive reloads.
    pub upgrades: Arc<crate::listener::Tracker>,
}

impl Shared {
    pub fn new(rt: Runtime) -> Arc<Shared> {
        Arc::new(Shared {
            runtime: ArcSwap::from_pointee(rt),
            metrics: Metrics::new(),
            draining: AtomicBool::new(false),
            upgrades: Arc::default(),
        })
    }
}
