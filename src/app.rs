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
    // Transparent: with `{0}` and a `#[from]` source, `weir: {e:#}` printed the message twice,
    // once as this error and once as its source.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Compile(#[from] CompileError),
    #[error("{0}")]
    Bind(String),
    #[error("internal task failed: {0}")]
    Task(String),
    #[error("cannot watch the configuration: {0}")]
    Watch(String),
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

/// How `weir run` was asked to behave beyond its config.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Reload when the config files change (as on SIGHUP).
    pub watch: bool,
    /// Take the listening sockets over from the process serving this unix socket, if any, and offer
    /// ours on it to the next one.
    pub handover: Option<PathBuf>,
}

/// `weir run`: serve until a drain completes.
pub async fn run(path: PathBuf, opts: RunOptions) -> Result<(), AppError> {
    let cfg = load(&path)?;
    let rt = Runtime::compile(cfg, None, 1)?;
    serve(rt, Some(path), opts).await
}

/// The unix socket a running weir offers its listeners on, and whether the file is still ours.
struct HandoverPoint {
    path: PathBuf,
    listener: tokio::net::UnixListener,
    owned: bool,
}

impl HandoverPoint {
    fn bind(path: &Path) -> Result<HandoverPoint, AppError> {
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)
            .map_err(|e| AppError::Bind(format!("handover socket {}: {e}", path.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        tracing::info!(path = %path.display(), "handover socket ready");
        Ok(HandoverPoint {
            path: path.to_path_buf(),
            listener,
            owned: true,
        })
    }
}

impl Drop for HandoverPoint {
    fn drop(&mut self) {
        // After a hand-over the path belongs to the successor: leave it alone.
        if self.owned {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn handover_err(e: crate::handover::HandoverError) -> AppError {
    AppError::Bind(format!("hand-over: {e}"))
}

/// Starts the proxy, on a predecessor's sockets when one serves at `handover`.
async fn start_with_handover(
    rt: Runtime,
    handover: Option<&Path>,
) -> Result<(Proxy, Option<HandoverPoint>), AppError> {
    let Some(path) = handover else {
        return Ok((Proxy::start(rt, Vec::new()).await?, None));
    };
    let p = path.to_path_buf();
    let got = tokio::task::spawn_blocking(move || crate::handover::request(&p))
        .await
        .map_err(|e| AppError::Task(e.to_string()))?
        .map_err(handover_err)?;
    let proxy = match got {
        None => Proxy::start(rt, Vec::new()).await?,
        Some((stream, sockets)) => {
            let n = sockets.len();
            let proxy = Proxy::start(rt, sockets).await?;
            tokio::task::spawn_blocking(move || crate::handover::confirm(stream))
                .await
                .map_err(|e| AppError::Task(e.to_string()))?
                .map_err(handover_err)?;
            tracing::info!(
                sockets = n,
                "took over the listening sockets of the previous process"
            );
            proxy
        }
    };
    Ok((proxy, Some(HandoverPoint::bind(path)?)))
}

/// A running proxy: its table, listeners and drain signal.
pub struct Proxy {
    pub shared: Arc<Shared>,
    listeners: Listeners,
    tracker: Arc<Tracker>,
    drain: watch::Sender<bool>,
    admin: Option<AdminTask>,
}

/// The running admin listener: what it was bound for, and its accept loop to stop on a rebind.
struct AdminTask {
    bind: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AdminTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bind_admin(a: &config::AdminConfig) -> Result<tokio::net::TcpListener, AppError> {
    crate::listener::bind(a.bind)
        .map_err(|e| AppError::Bind(format!("admin: cannot bind {}: {e}", a.bind)))
}

fn start_admin(
    a: &config::AdminConfig,
    sock: tokio::net::TcpListener,
    shared: &Arc<Shared>,
) -> AdminTask {
    tracing::info!(addr = %sock.local_addr().unwrap_or(a.bind), "admin listening");
    AdminTask {
        bind: a.bind,
        task: tokio::spawn(crate::admin::serve(sock, shared.clone())),
    }
}

impl Proxy {
    /// Binds every listener and the admin endpoint, and starts the probes.
    pub async fn start(
        rt: Runtime,
        inherited: Vec<crate::handover::Socket>,
    ) -> Result<Proxy, AppError> {
        let admin = rt.config.admin.clone();
        let shared = Shared::new(rt);
        let tracker = Arc::new(Tracker::default());
        let (drain, drain_rx) = watch::channel(false);
        let mut listeners = Listeners::new(shared.clone(), tracker.clone(), drain_rx);
        listeners.inherit(inherited);
        listeners
            .reconcile(&shared.runtime.load())
            .map_err(AppError::Bind)?;
        crate::health::spawn_all(&shared.runtime.load().pools);
        let admin = match admin {
            Some(a) => Some(start_admin(&a, bind_admin(&a)?, &shared)),
            None => None,
        };
        Ok(Proxy {
            shared,
            listeners,
            tracker,
            drain,
            admin,
        })
    }

    pub fn local_addr(&self, listener: &str) -> Option<std::net::SocketAddr> {
        self.listeners.local_addr(listener)
    }

    /// Re-reads the config and swaps it in; on any error the running table stays.
    pub async fn reload(&mut self, path: &Path) {
        let outcome = self.try_reload(path).await;
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

    async fn try_reload(&mut self, path: &Path) -> Result<u64, AppError> {
        let old = self.shared.runtime.load_full();
        // Reloads run one at a time (`&mut self`), so the serving table's number is the last one
        // given: a rejected reload uses none up.
        let generation = old.generation + 1;
        // Reading files, certificates and the system CA store takes tens of milliseconds: off the
        // async workers, so requests are not stalled behind a reload.
        let (p, prev) = (path.to_path_buf(), old.clone());
        let rt = tokio::task::spawn_blocking(move || -> Result<Runtime, AppError> {
            let cfg = load(&p)?;
            Ok(Runtime::compile(cfg, Some(&prev), generation)?)
        })
        .await
        .map_err(|e| AppError::Task(e.to_string()))??;
        // Bind a moved admin endpoint first: if that fails, nothing has changed yet.
        let new_admin = rt.config.admin.clone();
        let admin_moved = new_admin.as_ref().map(|a| a.bind) != self.admin.as_ref().map(|a| a.bind);
        let admin_sock = match (&new_admin, admin_moved) {
            (Some(a), true) => Some(bind_admin(a)?),
            _ => None,
        };
        self.listeners.reconcile(&rt).map_err(AppError::Bind)?;
        let rt = Arc::new(rt);
        self.shared.runtime.store(rt.clone());
        old.retire();
        crate::health::spawn_all(&rt.pools);
        if admin_moved {
            if let Some(old) = self.admin.take() {
                tracing::info!(addr = %old.bind, "admin listener closed");
            }
            if let (Some(a), Some(sock)) = (&new_admin, admin_sock) {
                self.admin = Some(start_admin(a, sock, &self.shared));
            }
        }
        Ok(generation)
    }

    /// Stops accepting, lets open connections finish for up to `shutdown_timeout`, then returns.
    pub async fn drain(mut self) {
        let (timeout, delay) = {
            let rt = self.shared.runtime.load();
            (rt.config.shutdown_timeout, rt.config.shutdown_delay)
        };
        self.shared.draining.store(true, Relaxed);
        if !delay.is_zero() {
            // An outer balancer probing /healthz sees 503 and stops sending before we stop accepting.
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                "draining: /healthz answers 503; still accepting for shutdown_delay"
            );
            tokio::time::sleep(delay).await;
        }
        self.listeners.close_all();
        let _ = self.drain.send(true);
        crate::server::wake_parked();
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

/// Serves `rt` until SIGTERM/SIGINT; SIGHUP (and with `--watch` a file change) reloads from
/// `reload_from`.
pub async fn serve(
    rt: Runtime,
    reload_from: Option<PathBuf>,
    opts: RunOptions,
) -> Result<(), AppError> {
    let mut signals = Signals::install()?;
    let (mut proxy, mut handover) = start_with_handover(rt, opts.handover.as_deref()).await?;
    let mut offering: Option<tokio::task::JoinHandle<Result<(), crate::handover::HandoverError>>> =
        None;
    let mut watch = match (&reload_from, opts.watch) {
        (Some(p), true) => {
            let w =
                crate::watch::ConfigWatch::start(p).map_err(|e| AppError::Watch(e.to_string()))?;
            tracing::info!(config = %p.display(), "watching the configuration for changes");
            Some(w)
        }
        _ => None,
    };
    loop {
        let changed = async {
            match watch.as_mut() {
                Some(w) => w.changed().await,
                None => std::future::pending().await,
            }
        };
        let idle = offering.is_none();
        let successor = async {
            match handover.as_ref() {
                Some(h) if idle => h.listener.accept().await,
                _ => std::future::pending().await,
            }
        };
        let offered = async {
            match offering.as_mut() {
                Some(t) => t.await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            s = signals.next() => match s {
                Signal::Reload => "SIGHUP",
                Signal::Drain => break,
            },
            () = changed => "file change",
            conn = successor => {
                if let (Ok((conn, _)), Some(h)) = (conn.and_then(|(c, a)| Ok((c.into_std()?, a))), &handover) {
                    let sockets = proxy.listeners.export();
                    let path = h.path.clone();
                    offering = Some(tokio::task::spawn_blocking(move || {
                        crate::handover::offer(conn, &sockets, &path)
                    }));
                }
                continue;
            }
            done = offered => {
                offering = None;
                match done {
                    Ok(Ok(())) => {
                        if let Some(h) = handover.as_mut() {
                            h.owned = false;
                        }
                        tracing::info!("listening sockets handed over to a new process; draining");
                        break;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "hand-over failed; still serving"),
                    Err(e) => tracing::warn!(error = %e, "hand-over failed; still serving"),
                }
                continue;
            }
        };
        match &reload_from {
            Some(p) => {
                tracing::info!(trigger = why, "reloading the configuration");
                proxy.reload(p).await
            }
            None => tracing::warn!("SIGHUP ignored: this configuration was not read from a file"),
        }
    }
    proxy.drain().await;
    drop(handover);
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
        out.push_str(&config::describe::describe(&cfg));
    }
    Ok(out)
}
