//! Shared helpers for weir's black-box tests.
//!
//! Every test starts its own `weir run` process (on ephemeral loopback ports, with its config in a
//! temporary directory) and its own in-process backends, so tests are hermetic and run in parallel.
//! Nothing here knows weir's internals: it only speaks HTTP to it, reads its stderr and sends it signals.
//!
//! - [`accept_any`]: a TLS client verifier that accepts any certificate (signatures still checked).
//! - [`weir`]: spawn the binary, find its listeners in the log, keep every stderr line, signals, RSS.
//! - [`backend`]: small hyper servers that answer with a JSON echo of what they received.
//! - [`client`]: request helpers over hyper-util's pooled client, h2c, and streaming bodies.
//! - [`raw`]: hand-written bytes over TCP for malformed requests and exact header control.
//! - [`recorder`]: a raw TCP backend that records exact bytes and answers from a script.
//! - [`rawconn`]: one raw connection kept open for keep-alive and pipelining.
//! - [`config`]: snippets for writing YAML configs around backends.
//! - [`control`]: backends switchable at run time, and weir's admin API.
//! - [`early`]: a server that answers before it has read the request body.
//! - [`hung`]: a server that accepts and never answers.
//! - [`closer`]: a server that closes a reused keep-alive connection instead of answering.
#![allow(dead_code)]

pub mod accept_any;
pub mod backend;
pub mod client;
pub mod closer;
pub mod config;
pub mod control;
pub mod early;
pub mod grpc;
pub mod hung;
pub mod load;
pub mod prom;
pub mod raw;
pub mod rawconn;
pub mod recorder;
pub mod tls_client;
pub mod tlsutil;
pub mod weir;
pub mod ws;

// Each test file uses a different subset of these.
#[allow(unused_imports)]
pub use backend::{Backend, Seen};
#[allow(unused_imports)]
pub use client::{empty, full, h2c_send, repeat, repeat_chunked, send, try_send, Body, Resp};
#[allow(unused_imports)]
pub use config::{servers, weighted_servers};
#[allow(unused_imports)]
pub use raw::{raw_request, RawResponse};
#[allow(unused_imports)]
pub use weir::Weir;

use std::future::Future;
use std::time::{Duration, Instant};

/// The longest any single step (start-up, one request, one log line) may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// Polls `check` until it returns true, panicking with `what` after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
