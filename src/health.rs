//! Active health probes: one task per server, jittered, using the pool's own client (so TLS pools are
//! probed over TLS). Passive detection (ejection on consecutive failures) lives in `Pool::record`.
//!
//! A probe task ends when a reload retires its pool; the server's state object lives on in the new
//! pool, whose own task takes over, so health survives reloads.

use crate::config::HealthConfig;
use crate::pool::client::UpstreamClient;
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
    // gRPC needs HTTP/2 whatever the pool's `protocol`: probes get their own h2 client.
    let h2 = match cfg.grpc.is_some() {
        true => match h2_client(&pool.config) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(pool = %pool.name, error = %e, "gRPC probe client");
                return;
            }
        },
        false => None,
    };
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
        let result = match (&h2, &cfg.grpc) {
            (Some(client), Some(service)) => grpc_probe(&pool, idx, &cfg, client, service).await,
            _ => probe(&pool, idx, &cfg).await,
        };
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
        let resp = pool.client().request(req).await.map_err(|e| {
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

fn h2_client(cfg: &crate::config::PoolConfig) -> Result<UpstreamClient, crate::tls::TlsError> {
    let mut cfg = cfg.clone();
    cfg.protocol = crate::config::UpstreamProtocol::Http2;
    let connector = crate::pool::client::connector(&cfg)?;
    Ok(crate::pool::client::build(&cfg, connector))
}

/// A grpc.health.v1.Health/Check call; passes only on `SERVING`. The protobuf is encoded and read by
/// hand: the request is one string field and the answer's status is field 1, a varint.
async fn grpc_probe(
    pool: &Pool,
    idx: usize,
    cfg: &HealthConfig,
    client: &UpstreamClient,
    service: &str,
) -> Result<(), String> {
    let server = &pool.servers[idx];
    let scheme = if pool.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let uri: Uri = format!("{scheme}://{}/grpc.health.v1.Health/Check", server.address)
        .parse()
        .map_err(|e| format!("bad probe uri: {e}"))?;
    let req = Request::builder()
        .method(http::Method::POST)
        .uri(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "weir-health-check")
        .body(ForwardBody::full(grpc_check_request(service)))
        .map_err(|e| e.to_string())?;
    let check = async {
        let resp = client.request(req).await.map_err(|e| {
            if e.is_connect() {
                "connect failed".to_string()
            } else {
                format!("request failed: {e}")
            }
        })?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("status {}", resp.status().as_u16()));
        }
        let head_status = grpc_status(resp.headers());
        let collected = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        let trailer_status = collected.trailers().and_then(grpc_status);
        match head_status.or(trailer_status) {
            Some(0) => {}
            Some(s) => return Err(format!("grpc-status {s}")),
            None => return Err("no grpc-status".into()),
        }
        match grpc_serving_status(&collected.to_bytes()) {
            Some(1) => Ok(()),
            Some(s) => Err(format!("health status {s} (not SERVING)")),
            None => Err("unreadable health response".into()),
        }
    };
    match tokio::time::timeout(cfg.timeout, check).await {
        Ok(r) => r,
        Err(_) => Err("timeout".into()),
    }
}

fn grpc_status(h: &http::HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A length-prefixed, uncompressed gRPC message holding `HealthCheckRequest { service }`.
fn grpc_check_request(service: &str) -> bytes::Bytes {
    let mut msg = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = Vec::with_capacity(msg.len() + 5);
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out.into()
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The `status` of a framed `HealthCheckResponse`; 0 (UNKNOWN) when the field is absent.
fn grpc_serving_status(framed: &[u8]) -> Option<u64> {
    if framed.len() < 5 || framed[0] != 0 {
        return None;
    }
    let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
    let msg = framed.get(5..5 + len)?;
    let (mut i, mut status) = (0, 0);
    while i < msg.len() {
        let key = get_varint(msg, &mut i)?;
        match key & 7 {
            0 => {
                let v = get_varint(msg, &mut i)?;
                if key >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let n = get_varint(msg, &mut i)? as usize;
                i = i.checked_add(n).filter(|&e| e <= msg.len())?;
            }
            1 => i += 8,
            5 => i += 4,
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_request_encoding() {
        assert_eq!(&grpc_check_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &grpc_check_request("ab")[..],
            &[0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']
        );
    }

    #[test]
    fn serving_status_decoding() {
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 2, 0x08, 1]), Some(1));
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 2, 0x08, 2]), Some(2));
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 0]), Some(0));
        assert_eq!(grpc_serving_status(&[0, 0, 0, 0, 3, 0x08]), None);
        assert_eq!(grpc_serving_status(&[1, 0, 0, 0, 0]), None);
    }
}
