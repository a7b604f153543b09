//! Active health probes: one task per server, jittered, using the pool's own client (so TLS pools are
//! probed over TLS). Passive detection (ejection on consecutive failures) lives in `Pool::record`.
//!
//! A probe task ends when a reload retires its pool; the server's state object lives on in the new
//! pool, whose own task takes over, so health survives reloads.

use crate::config::HealthConfig;
use crate::pool::{now_ms, Pool, ProbeStatus};
use crate::proxy::body::ForwardBody;
use http::{Request, Uri};
use http_body_util::BodyExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

/// Starts the probe tasks of every pool that has a `health:` block.
pub fn spawn_all(pools: &[Arc<Pool>]) {
    for pool in pools {
        if pool.config.health.is_some() {
            for idx in 0..pool.servers.len() {
                tokio::spawn(probe_loop(pool.clone(), idx));
            }
        }
    }
}

fn jittered(d: Duration) -> Duration {
    let ms = d.as_millis() as u64;
    Duration::from_millis(ms - ms / 10 + fastrand::u64(..=ms / 5))
}

async fn probe_loop(pool: Arc<Pool>, idx: usize) {
    let Some(cfg) = pool.config.health.clone() else {
        return;
    };
    let (mut passes, mut fails) = (0u32, 0u32);
    // Spread the first probes over a quarter of the interval that applies, so servers are not
    // probed in lockstep and a server that starts down is not left waiting a whole `interval`.
    let first = if pool.servers[idx].state.healthy.load(Relaxed) {
        cfg.interval
    } else {
        cfg.unhealthy_interval
    };
    tokio::time::sleep(Duration::from_millis(fastrand::u64(
        ..=first.as_millis() as u64 / 4,
    )))
    .await;
    while !pool.retired.load(Relaxed) && pool.probed(idx) {
        let server = &pool.servers[idx];
        let result = probe(&pool, idx, &cfg).await;
        let healthy = server.state.healthy.load(Relaxed);
        match &result {
            Ok(()) => {
                passes += 1;
                fails = 0;
                if !healthy && passes >= cfg.healthy_after {
                    server.state.up_since.store(now_ms(), Relaxed);
                    // Probes saw it down and then recover: that ends a passive ejection too
                    // (Envoy's `successful_active_health_check_uneject_host`), rather than keeping
                    // a recovered server out for the rest of an ejection that may last minutes.
                    server.state.ejected_until.store(0, Relaxed);
                    server.state.healthy.store(true, Relaxed);
                    tracing::info!(pool = %pool.name, server = %server.address, passes, reason = "probe passed", "server is healthy");
                }
            }
            Err(reason) => {
                fails += 1;
                passes = 0;
                if healthy && fails >= cfg.unhealthy_after {
                    server.state.healthy.store(false, Relaxed);
                    tracing::warn!(pool = %pool.name, server = %server.address, reason = %reason, fails, "server is unhealthy");
                } else {
                    tracing::debug!(pool = %pool.name, server = %server.address, reason = %reason, "probe failed");
                }
            }
        }
        if let Ok(mut last) = server.state.last_probe.lock() {
            *last = ProbeStatus {
                at_ms: now_ms(),
                ok: result.is_ok(),
                detail: result.err().unwrap_or_else(|| "ok".into()),
            };
        }
        let wait = if server.state.healthy.load(Relaxed) {
            cfg.interval
        } else {
            cfg.unhealthy_interval
        };
        tokio::time::sleep(jittered(wait)).await;
    }
}

/// The innermost error, which names what went wrong ("Connection refused", "received fatal alert").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// One probe; the error is the reason shown in logs and `/status`.
async fn probe(pool: &Pool, idx: usize, cfg: &HealthConfig) -> Result<(), String> {
    let server = &pool.servers[idx];
    if cfg.tcp {
        return match tokio::time::timeout(
            cfg.timeout,
            tokio::net::TcpStream::connect(&*server.address),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("connect: {e}")),
            Err(_) => Err("timeout".into()),
        };
    }
    let scheme = if pool.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let uri: Uri = format!("{scheme}://{}{}", server.address, cfg.path)
        .parse()
        .map_err(|e| format!("bad probe uri: {e}"))?;
    let host = cfg
        .host
        .clone()
        .unwrap_or_else(|| server.address.to_string());
    let req = Request::builder()
        .method(cfg.method.clone())
        .uri(uri)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "weir-health-check")
        .body(ForwardBody::Empty)
        .map_err(|e| e.to_string())?;
    let check = async {
        let resp = pool.client.request(req).await.map_err(|e| {
            let what = if e.is_connect() { "connect" } else { "request" };
            format!("{what}: {}", root_cause(&e))
        })?;
        let status = resp.status().as_u16();
        if !cfg
            .expect_status
            .iter()
            .any(|&(a, b)| (a..=b).contains(&status))
        {
            return Err(format!("status {status}"));
        }
        if let Some(want) = &cfg.expect_body {
            let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            if !String::from_utf8_lossy(&body).contains(want.as_str()) {
                return Err("body mismatch".into());
            }
        }
        Ok(())
    };
    match tokio::time::timeout(cfg.timeout, check).await {
        Ok(r) => r,
        Err(_) => Err("timeout".into()),
    }
}
