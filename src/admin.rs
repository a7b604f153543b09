//! The admin listener: `/metrics` (Prometheus text), `/status` (JSON), `/healthz`, and server drain.
//!
//! It runs on its own socket, loopback by default, and never on a public listener.

use crate::pool::now_ms;
use crate::runtime::Shared;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn serve(sock: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((tcp, _)) = sock.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(route(req, &shared)) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(ctype),
    );
    r
}

fn route(req: Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    // HEAD is GET without the body (hyper leaves it out), for probes that only want the status.
    let method = match req.method() {
        &Method::HEAD => &Method::GET,
        m => m,
    };
    match (method, path) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            scrape(shared),
        ),
        (&Method::GET, "/status") => reply(
            StatusCode::OK,
            "application/json",
            status(shared).to_string(),
        ),
        (&Method::GET, "/healthz") => {
            if shared.draining.load(Relaxed) {
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
            } else {
                reply(StatusCode::OK, "text/plain", "ok\n")
            }
        }
        (&Method::POST, p) if p.starts_with("/pools/") => server_action(shared, p),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// `POST /pools/{pool}/servers/{address}/drain|enable`.
fn server_action(shared: &Shared, path: &str) -> Response<Full<Bytes>> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let [_, pool, "servers", address, action] = parts[..] else {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    };
    let address = percent_decode(address);
    let rt = shared.runtime.load();
    let Some(server) = rt.pool(pool).and_then(|p| p.server(&address)) else {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "no such pool or server\n",
        );
    };
    match action {
        "drain" => server.state.start_draining(),
        "enable" if server.removed => {
            return reply(
                StatusCode::CONFLICT,
                "text/plain",
                "server was removed from the config; it only drains\n",
            )
        }
        "enable" => server.state.stop_draining(),
        _ => return reply(StatusCode::NOT_FOUND, "text/plain", "unknown action\n"),
    }
    tracing::info!(pool, server = %address, action, "server state changed through the admin API");
    reply(
        StatusCode::OK,
        "text/plain",
        format!("{action}: {pool} {address}\n"),
    )
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Sets the per-server gauges from the current table. Series of servers a reload removed are
/// dropped first, so a server that is gone does not keep reporting its last state (`server_up 1`
/// for ever). Scrapes are serialized, so one cannot encode while another has just cleared.
fn scrape(shared: &Shared) -> String {
    static SCRAPE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SCRAPE.lock().unwrap_or_else(|e| e.into_inner());
    let m = &shared.metrics;
    m.server_up.clear();
    m.server_in_flight.clear();
    m.server_ejections.clear();
    m.server_draining.clear();
    refresh_gauges(shared);
    m.encode()
}

fn refresh_gauges(shared: &Shared) {
    let rt = shared.runtime.load();
    let now = now_ms();
    let m = &shared.metrics;
    for p in &rt.pools {
        for s in p.servers.iter() {
            let l = m.server(&p.name, &s.address);
            m.server_up.get_or_create(&l).set(s.serving(now) as i64);
            m.server_in_flight
                .get_or_create(&l)
                .set(s.state.in_flight.load(Relaxed) as i64);
            m.server_ejections
                .get_or_create(&l)
                .set(s.state.ejections.load(Relaxed) as i64);
            m.server_draining.get_or_create(&l).set(s.draining() as i64);
        }
    }
    for (worker, n) in crate::workers::loads().enumerate() {
        let l = crate::metrics::WorkerLabels {
            worker: worker as u32,
        };
        m.worker_connections.get_or_create(&l).set(n as i64);
    }
}

fn status(shared: &Shared) -> serde_json::Value {
    let rt = shared.runtime.load();
    let now = now_ms();
    let pools: Vec<_> = rt
        .pools
        .iter()
        .map(|p| {
            let servers: Vec<_> = p
                .servers
                .iter()
                .map(|s| {
                    let st = &s.state;
                    let probe = st.last_probe.lock().map(|l| l.clone()).unwrap_or_default();
                    json!({
                        "address": &*s.address,
                        "weight": s.weight,
                        "healthy": st.healthy.load(Relaxed),
                        "ejected": st.ejected(now),
                        "draining": s.draining(),
                        "removed": s.removed,
                        "in_flight": st.in_flight.load(Relaxed),
                        "requests": st.requests.load(Relaxed),
                        "failures": st.failures.load(Relaxed),
                        "ejections": st.ejections.load(Relaxed),
                        "last_probe": if probe.at_ms == 0 { serde_json::Value::Null } else { json!({
                            "ok": probe.ok, "detail": probe.detail, "age_ms": now.saturating_sub(probe.at_ms)
                        })},
                    })
                })
                .collect();
            json!({ "name": &*p.name, "balance": p.config.balance.as_str(), "servers": servers })
        })
        .collect();
    // Open client connections, per listener and in all (the `weir_active_connections` gauge).
    let m = &shared.metrics;
    let mut active = 0;
    let listeners: Vec<_> = rt
        .config
        .listeners
        .iter()
        .map(|l| {
            let name: Arc<str> = l.name.as_str().into();
            let open = m.connections.get_or_create(&m.listener(&name)).get();
            active += open;
            json!({ "name": l.name, "bind": l.bind.to_string(), "tls": l.tls.is_some(),
                    "active_connections": open })
        })
        .collect();
    let routes: Vec<_> = rt
        .router
        .routes
        .iter()
        .map(|r| json!({ "name": &*r.name, "pool": &*rt.pools[r.pool].name }))
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "generation": rt.generation,
        "draining": shared.draining.load(Relaxed),
        "active_connections": active,
        "listeners": listeners,
        "routes": routes,
        "pools": pools,
    })
}
