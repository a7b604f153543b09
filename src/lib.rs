//! weir: an L7 HTTP reverse-proxy load balancer.
//!
//! A request's path through the code, in module order: [`listener`] accepts the TCP connection,
//! [`tls`] terminates TLS (SNI picks the certificate), [`server`] speaks HTTP/1.1 or HTTP/2 with the
//! client (while [`framing`] shadow-parses HTTP/1 bytes for ambiguous framing and [`conn`] times idle
//! and slow clients), [`proxy`] handles the request: [`router`] picks the first matching route from the
//! [`runtime`] table, its [`pool`] picks a server with a [`balance`]r (or [`sticky`] cookie) among those
//! [`health`] considers up, and the pooled client forwards it, streaming both bodies. [`config`]
//! builds the table; [`app`] wires signals, reload and drain; [`admin`] and [`metrics`] report.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod balance;
pub mod cli;
pub mod clock;
pub mod config;
pub mod conn;
pub mod demo;
pub mod framing;
pub mod handover;
pub mod health;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod proxy;
pub mod router;
pub mod runtime;
pub mod server;
pub mod shutdown;
pub mod sticky;
pub mod telemetry;
pub mod tls;
pub mod watch;
pub mod workers;

/// What the process's compact time stamps count from (connection state, parked connections, outlier
/// ejection): one origin for all, so a stamp is a `u64` rather than an `Instant` (16 bytes) in
/// every connection's state. Set on first use; a stamp of an instant before it saturates to it.
pub(crate) fn epoch() -> tokio::time::Instant {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(tokio::time::Instant::now)
}

/// A future on the heap, for a rare or long-lived branch of a hot future: an async fn's state is
/// as large as its largest branch, and every request or connection pays for that size (memory,
/// and copying it about). A sync function, so the future is built straight into its box: built
/// inline in an async fn (`Box::pin(f(..)).await`), it could also take its size in the caller's
/// state, which is what boxing it is meant to avoid.
pub(crate) fn boxed<'a, T>(
    f: impl std::future::Future<Output = T> + Send + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>> {
    Box::pin(f)
}
