//! Listening sockets and their accept loops.
//!
//! Sockets outlive configuration tables: a reload keeps every listener whose address did not change
//! (no connection is refused, not even for a millisecond), binds new ones and closes removed ones. An
//! accept error such as EMFILE backs off instead of spinning; a connection cap (per listener, and per
//! client address) refuses new sockets cheaply, before any TLS or HTTP work, while established ones
//! keep being served.

use crate::config::ListenerConfig;
use crate::runtime::{Runtime, Shared};
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// Counts open client connections so a drain knows when the last one is gone.
#[derive(Default)]
pub struct Tracker {
    active: AtomicUsize,
    idle: Notify,
}

pub struct TrackGuard(Arc<Tracker>);

impl Tracker {
    pub fn enter(self: &Arc<Self>) -> TrackGuard {
        self.active.fetch_add(1, Relaxed);
        TrackGuard(self.clone())
    }

    pub fn active(&self) -> usize {
        self.active.load(Relaxed)
    }

    /// Resolves once no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Binds with SO_REUSEADDR and SO_REUSEPORT, so a new weir process can bind beside an old one during
/// a binary upgrade.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    #[cfg(unix)]
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

/// Resolves once the flag is set (a drain or stop signal); the borrow ends before it returns.
pub async fn until_set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|&s| s).await;
}

struct Running {
    bind: SocketAddr,
    stop: watch::Sender<bool>,
    local: SocketAddr,
    /// A duplicate of the socket's descriptor, to hand to a successor process; dropped (closed) with
    /// this entry, so a stopped listener really closes.
    fd: Option<std::os::fd::OwnedFd>,
}

/// The set of running listeners, reconciled against each new table.
pub struct Listeners {
    running: HashMap<String, Running>,
    shared: Arc<Shared>,
    tracker: Arc<Tracker>,
    drain: watch::Receiver<bool>,
    /// Sockets received from a predecessor process, used by the first reconcile instead of binding.
    inherited: Vec<crate::handover::Socket>,
}

impl Listeners {
    pub fn new(shared: Arc<Shared>, tracker: Arc<Tracker>, drain: watch::Receiver<bool>) -> Self {
        Listeners {
            running: HashMap::new(),
            shared,
            tracker,
            drain,
            inherited: Vec::new(),
        }
    }

    /// Sockets from a predecessor: a listener with the same name and `bind` (or the same fixed
    /// address) takes one over instead of binding.
    pub fn inherit(&mut self, sockets: Vec<crate::handover::Socket>) {
        self.inherited = sockets;
    }

    /// Duplicates of every running listener's socket, for a successor process.
    pub fn export(&self) -> Vec<crate::handover::Socket> {
        self.running
            .iter()
            .filter_map(|(name, r)| {
                Some(crate::handover::Socket {
                    name: name.clone(),
                    bind: r.bind,
                    fd: r.fd.as_ref()?.try_clone().ok()?,
                })
            })
            .collect()
    }

    fn take_inherited(&mut self, l: &ListenerConfig) -> Option<std::io::Result<TcpListener>> {
        let i = self
            .inherited
            .iter()
            .position(|s| s.name == l.name && s.bind == l.bind)
            .or_else(|| {
                self.inherited
                    .iter()
                    .position(|s| s.bind == l.bind && l.bind.port() != 0)
            })?;
        let sock = std::net::TcpListener::from(self.inherited.swap_remove(i).fd);
        Some(
            sock.set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(sock)),
        )
    }

    /// Binds every listener of `rt` that is not yet running and stops those `rt` no longer has.
    /// On a bind failure nothing that was running is stopped.
    pub fn reconcile(&mut self, rt: &Runtime) -> Result<(), String> {
        let mut fresh = Vec::new();
        for l in &rt.config.listeners {
            let keep = self.running.get(&l.name).is_some_and(|r| r.bind == l.bind);
            if !keep {
                let reuse = self
                    .running
                    .values()
                    .find(|r| r.bind == l.bind && l.bind.port() != 0);
                if reuse.is_some() {
                    return Err(format!(
                        "listener {:?}: address {} is held by another listener",
                        l.name, l.bind
                    ));
                }
                let sock = match self.take_inherited(l) {
                    Some(s) => s.map_err(|e| {
                        format!("listener {:?}: inherited socket unusable: {e}", l.name)
                    })?,
                    None => bind(l.bind).map_err(|e| {
                        format!("listener {:?}: cannot bind {}: {e}", l.name, l.bind)
                    })?,
                };
                fresh.push((l.clone(), sock));
            }
        }
        let wanted: Vec<&str> = rt
            .config
            .listeners
            .iter()
            .map(|l| l.name.as_str())
            .collect();
        let replaced: Vec<String> = fresh.iter().map(|(l, _)| l.name.clone()).collect();
        self.running.retain(|name, r| {
            let stay = wanted.contains(&name.as_str()) && !replaced.contains(name);
            if !stay {
                let _ = r.stop.send(true);
                tracing::info!(listener = %name, addr = %r.local, "listener closed");
            }
            stay
        });
        for (l, sock) in fresh {
            self.start(&l, sock);
        }
        // Inherited sockets no listener wanted are closed here (the predecessor closes its own).
        self.inherited.clear();
        Ok(())
    }

    fn start(&mut self, l: &ListenerConfig, sock: TcpListener) {
        let local = sock.local_addr().unwrap_or(l.bind);
        let fd = {
            use std::os::fd::AsFd;
            sock.as_fd().try_clone_to_owned().ok()
        };
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        tracing::info!(listener = %l.name, addr = %local, scheme = %scheme, "listening");
        let (stop, stopped) = watch::channel(false);
        let ctx = AcceptCtx {
            name: l.name.clone(),
            series: ListenerSeries::new(&self.shared.metrics, &l.name),
            shared: self.shared.clone(),
            tracker: self.tracker.clone(),
            drain: self.drain.clone(),
            open: Arc::new(AtomicUsize::new(0)),
            per_ip: Arc::new(PerIp::default()),
        };
        accept_on_acceptors(sock, ctx, stopped);
        self.running.insert(
            l.name.clone(),
            Running {
                bind: l.bind,
                stop,
                local,
                fd,
            },
        );
    }

    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.running.get(name).map(|r| r.local)
    }

    /// Stops accepting on every listener (the first step of a drain).
    pub fn close_all(&mut self) {
        for (_, r) in self.running.drain() {
            let _ = r.stop.send(true);
        }
    }
}

/// What an accept loop works with; cloned for each worker's loop (the counts are shared).
#[derive(Clone)]
struct AcceptCtx {
    name: String,
    series: ListenerSeries,
    shared: Arc<Shared>,
    tracker: Arc<Tracker>,
    drain: watch::Receiver<bool>,
    open: Arc<AtomicUsize>,
    per_ip: Arc<PerIp>,
}

/// The listener's connection series, found once: a family lookup per accepted connection (a
/// hash and a read lock each, three of them) was a tenth of what accepting costs weir.
#[derive(Clone)]
struct ListenerSeries {
    total: Counter,
    refused: Counter,
    open: Gauge,
}

impl ListenerSeries {
    fn new(m: &crate::metrics::Metrics, name: &str) -> ListenerSeries {
        let labels = m.listener(&Arc::from(name));
        ListenerSeries {
            total: m.connections_total.get_or_create(&labels).clone(),
            refused: m.connections_refused.get_or_create(&labels).clone(),
            open: m.connections.get_or_create(&labels).clone(),
        }
    }
}

/// Open connections per client address on one listener. The lock is taken twice per connection
/// (accept and close), never per request, and only when `max_connections_per_ip` is set.
#[derive(Default)]
pub struct PerIp(Mutex<HashMap<IpAddr, u32>>);

/// One connection counted against its address; dropping it uncounts it.
pub struct IpSlot(Arc<PerIp>, IpAddr);

impl PerIp {
    /// Counts a connection from `ip`, or refuses it when `ip` already has `max` open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n as usize >= max {
            return None;
        }
        *n += 1;
        Some(IpSlot(self.clone(), ip))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut m = (self.0).0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// One accept loop per accepting worker, each on its own duplicate of the listening socket,
/// registered with that worker's event loop (see [`crate::workers::spawn_on_acceptors`]).
fn accept_on_acceptors(sock: TcpListener, ctx: AcceptCtx, stop: watch::Receiver<bool>) {
    let sock = match sock.into_std() {
        Ok(s) => Arc::new(s),
        Err(e) => {
            tracing::error!(listener = %ctx.name, error = %e, "cannot share the listening socket");
            return;
        }
    };
    crate::workers::spawn_on_acceptors(move || {
        let dup = sock.try_clone().and_then(TcpListener::from_std);
        let (ctx, stop) = (ctx.clone(), stop.clone());
        async move {
            match dup {
                Ok(sock) => accept_loop(sock, ctx, stop).await,
                Err(e) => {
                    tracing::error!(listener = %ctx.name, error = %e, "a worker cannot accept on the listener")
                }
            }
        }
    });
}

async fn accept_loop(sock: TcpListener, ctx: AcceptCtx, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(5);
    // One wait on the stop flag for the loop's life: made afresh per accept, it registered with
    // the watch channel and unregistered again (two lock round trips) for every connection.
    let mut stopped = std::pin::pin!(until_set(&mut stop));
    loop {
        // Accept first: under load `accept` is ready again at once, and the stop flag is then
        // looked at only when the queue is empty (or tokio's budget makes `accept` yield), not
        // once per connection.
        let accepted = tokio::select! {
            biased;
            r = sock.accept() => r,
            _ = &mut stopped => break,
        };
        match accepted {
            Ok((tcp, peer)) => {
                backoff = Duration::from_millis(5);
                admit(tcp, peer, &ctx);
            }
            Err(e) => {
                // EMFILE/ENFILE and friends: wait for descriptors to free up rather than spin.
                tracing::warn!(listener = %ctx.name, error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

fn admit(tcp: tokio::net::TcpStream, peer: SocketAddr, ctx: &AcceptCtx) {
    let rt = ctx.shared.runtime.load();
    let Some(listener) = rt.listeners.get(&ctx.name).cloned() else {
        return;
    };
    let limits = &listener.config.limits;
    if ctx.open.load(Relaxed) >= limits.max_connections {
        ctx.series.refused.inc();
        return; // dropping the socket refuses it
    }
    let slot = match limits.max_connections_per_ip {
        0 => None,
        max => match ctx.per_ip.admit(peer.ip().to_canonical(), max) {
            // Boxed: it is kept for the connection's life in its task, which is smaller without it.
            Some(s) => Some(Box::new(s)),
            None => {
                ctx.series.refused.inc();
                tracing::debug!(listener = %listener.name, %peer, "per-address connection cap reached");
                return;
            }
        },
    };
    // TCP_NODELAY is set before the connection's second write (`conn::SendWatch`).
    ctx.series.total.inc();
    let gauge = ctx.series.open.clone();
    ctx.open.fetch_add(1, Relaxed);
    gauge.inc();
    let open = Open(ctx.open.clone(), gauge);
    let guard = ctx.tracker.enter();
    let shared = ctx.shared.clone();
    let drain = ctx.drain.clone();
    let worker = crate::workers::pick();
    // Guards, not statements after `serve`: a panic in the task must still release the counts.
    let guards = (guard, slot, open, crate::workers::Serving::new(worker));
    if worker == crate::workers::index() {
        tokio::spawn(crate::server::serve(
            tcp, peer, listener, shared, drain, guards,
        ));
        return;
    }
    // To another worker: the socket leaves this event loop and joins that one.
    let tcp = match tcp.into_std() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(listener = %listener.name, %peer, error = %e, "cannot hand a connection to a worker");
            return;
        }
    };
    crate::workers::spawn_on(worker, move || match tokio::net::TcpStream::from_std(tcp) {
        Ok(tcp) => Some(crate::server::serve(
            tcp, peer, listener, shared, drain, guards,
        )),
        Err(e) => {
            tracing::warn!(listener = %listener.name, %peer, error = %e, "a worker cannot take a connection");
            None
        }
    });
}

/// One open connection in the listener's count and gauge.
struct Open(Arc<AtomicUsize>, Gauge);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
        self.1.dec();
    }
}
