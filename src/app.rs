//! Wiring: load and compile the config, bind listeners, start probes and the admin listener, then
//! react to signals (reload on SIGHUP, drain on SIGTERM/SIGINT).

use crate::config::{self, ConfigError};
use crate::listener::{Listeners, Tracker};
use crate::runtime::{CompileError, Runtime, Shared};
use crate::shutdown::{Signal, Signals};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Compile(#[from] CompileError),
    #[error("{0}")]
    Bind(String),
    #[error("signal handling: {0}")]
    Signals(#[from] std::io::Error),
}

/// Loads a config, logging its warnings.
pub fn load(path: &Path) -> Result<config::Config, ConfigError> {
    let (cfg, warnings) = config::load(path)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(cfg)
}

/// `weir run`: serve until a drain completes.
pub async fn run(path: PathBuf) -> Result<(), AppError> {
    let cfg = load(&path)?;
    let rt = Runtime::compile(cfg, None, 1)?;
    serve(rt, Some(path)).await
}

/// A running proxy: its table, listeners and drain signal.
pub struct Proxy {
    pub shared: Arc<Shared>,
    listeners: Listeners,
    tracker: Arc<Tracker>,
    drain: watch::Sender<bool>,
}

impl Proxy {
    /// Binds every listener and the admin endpoint, and starts the probes.
    pub async fn start(rt: Runtime) -> Result<Proxy, AppError> {
        let admin = rt.config.admin.clone();
        let shared = Shared::new(rt);
        let tracker = Arc::new(Tracker::default());
        let (drain, drain_rx) = watch::channel(false);
        let mut listeners = Listeners::new(shared.clone(), tracker.clone(), drain_rx);
        listeners
            .reconcile(&shared.runtime.load())
            .map_err(AppError::Bind)?;
        crate::health::spawn_all(&shared.runtime.load().pools);
        if let Some(a) = admin {
            let sock = crate::listener::bind(a.bind)
                .map_err(|e| AppError::Bind(format!("admin: cannot bind {}: {e}", a.bind)))?;
            tracing::info!(addr = %sock.local_addr().unwrap_or(a.bind), "admin listening");
            tokio::spawn(crate::admin::serve(sock, shared.clone()));
        }
        Ok(Proxy {
            shared,
            listeners,
            tracker,
            drain,
        })
    }

    pub fn local_addr(&self, listener: &str) -> Option<std::net::SocketAddr> {
        self.listeners.local_addr(listener)
    }

    /// Re-reads the config and swaps it in; on any error the running table stays.
    pub fn reload(&mut self, path: &Path) {
        let outcome = self.try_reload(path);
        let label = crate::metrics::OutcomeLabels {
            outcome: if outcome.is_ok() { "ok" } else { "error" },
        };
        self.shared.metrics.reloads.get_or_create(&label).inc();
        match outcome {
            Ok(generation) => tracing::info!(generation, "configuration reloaded"),
            Err(e) => {
                for line in e.to_string().lines() {
                    tracing::error!("reload rejected: {line}");
                }
                tracing::error!("reload rejected; the previous configuration keeps serving");
            }
        }
    }

    fn try_reload(&mut self, path: &Path) -> Result<u64, AppError> {
        let cfg = load(path)?;
        let old = self.shared.runtime.load_full();
        let generation = self.shared.next_generation();
        let rt = Runtime::compile(cfg, Some(&old), generation)?;
        self.listeners.reconcile(&rt).map_err(AppError::Bind)?;
        let rt = Arc::new(rt);
        self.shared.runtime.store(rt.clone());
        old.retire();
        crate::health::spawn_all(&rt.pools);
        Ok(generation)
    }

    /// Stops accepting, lets open connections finish for up to `shutdown_timeout`, then returns.
    pub async fn drain(mut self) {
        let timeout = self.shared.runtime.load().config.shutdown_timeout;
        self.shared.draining.store(true, Relaxed);
        self.listeners.close_all();
        let _ = self.drain.send(true);
        let open = self.tracker.active();
        tracing::info!(
            open_connections = open,
            upgraded_connections = self.shared.upgrades.active(),
            timeout_ms = timeout.as_millis() as u64,
            "draining"
        );
        let idle = async {
            self.tracker.wait_idle().await;
            self.shared.upgrades.wait_idle().await;
        };
        match tokio::time::timeout(timeout, idle).await {
            Ok(()) => tracing::info!("drained; exiting"),
            Err(_) => tracing::warn!(
                open_connections = self.tracker.active(),
                upgraded_connections = self.shared.upgrades.active(),
                "shutdown_timeout reached; exiting"
            ),
        }
    }
}

/// Serves `rt` until SIGTERM/SIGINT; SIGHUP reloads from `reload_from`.
pub async fn serve(rt: Runtime, reload_from: Option<PathBuf>) -> Result<(), AppError> {
    let mut signals = Signals::install()?;
    let mut proxy = Proxy::start(rt).await?;
    while let Signal::Reload = signals.next().await {
        match &reload_from {
            Some(p) => proxy.reload(p),
            None => tracing::warn!("SIGHUP ignored: this configuration was not read from a file"),
        }
    }
    proxy.drain().await;
    Ok(())
}

/// `weir check`: the summary (and with `verbose`, the compiled table) or every error.
pub fn check(path: &Path, verbose: bool) -> Result<String, ConfigError> {
    let (cfg, warnings) = config::load(path)?;
    let mut out = String::new();
    for w in &warnings {
        out.push_str(&format!("{w}\n"));
    }
    out.push_str(&cfg.summary());
    out.push('\n');
    if verbose {
        out.push_str(&describe(&cfg));
    }
    Ok(out)
}

fn describe(cfg: &config::Config) -> String {
    let mut s = String::from("\nlisteners:\n");
    for l in &cfg.listeners {
        let kind = match (&l.tls, l.redirect_https) {
            (Some(t), _) => format!(
                "https, {} certificate(s), alpn {:?}",
                t.certificates.len(),
                t.alpn
            ),
            (None, Some(p)) => format!("http, redirect to https port {p}"),
            (None, None) => "http (h1 + h2c)".into(),
        };
        s.push_str(&format!("  {} on {}: {kind}\n", l.name, l.bind));
    }
    s.push_str("routes (in match order):\n");
    for (i, r) in cfg.routes.iter().enumerate() {
        s.push_str(&format!(
            "  {}. {} -> pool {} (timeout {:?}, retries {})\n     when {:?}\n",
            i + 1,
            r.name,
            cfg.pools[r.pool].name,
            r.timeout,
            r.retries,
            r.matcher
        ));
    }
    s.push_str("pools:\n");
    for p in &cfg.pools {
        s.push_str(&format!(
            "  {} ({:?}{}{}):\n",
            p.name,
            p.balance,
            if p.health.is_some() {
                ", health probes"
            } else {
                ""
            },
            if p.sticky.is_some() { ", sticky" } else { "" }
        ));
        for sv in &p.servers {
            s.push_str(&format!("    - {} weight {}\n", sv.address, sv.weight));
        }
    }
    s
}
