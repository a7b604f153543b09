//! Backends whose behaviour can be switched while a test runs, plus helpers for weir's admin API.
//!
//! - [`ControlBackend`]: like [`super::Backend`] (same JSON echo, so `Resp::backend()` and
//!   `Resp::seen()` work), but its request status, delay, `/healthz` status/body/delay can be changed
//!   at run time, and it can be stopped (listening socket *and* every open connection closed, so a
//!   port really refuses) and started again on the same port.
//! - [`closed_port`]: an address on which nothing listens (bound once, then dropped).
//! - [`Admin`]: weir's admin listener (found in the `admin listening addr=…` log line): `/status`,
//!   drain and enable.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use regex::Regex;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;

use super::client::{self, empty, full, Body, Resp};
use super::weir::Weir;
use super::WAIT;

/// One request a [`ControlBackend`] received (health probes excluded).
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// The `x-test-id` header, if the request had one.
    pub test_id: Option<String>,
    pub body_len: u64,
}

struct Ctl {
    name: String,
    status: AtomicU16,
    delay_ms: AtomicU64,
    health_status: AtomicU16,
    health_delay_ms: AtomicU64,
    health_body: Mutex<Option<String>>,
    response_headers: Mutex<Vec<(String, String)>>,
    requests: AtomicUsize,
    completed: AtomicUsize,
    health_checks: AtomicUsize,
    /// Method and Host header of the last `/healthz` request.
    last_health: Mutex<Option<(String, Option<String>)>>,
    received: Mutex<Vec<Received>>,
}

struct Running {
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// A switchable fake backend on a fixed loopback port.
pub struct ControlBackend {
    pub name: String,
    pub addr: SocketAddr,
    ctl: Arc<Ctl>,
    running: Mutex<Option<Running>>,
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = TcpSocket::new_v4()?;
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

impl ControlBackend {
    /// Starts a backend on an ephemeral loopback port: status 200, no delay, `/healthz` 200 "ok".
    pub async fn start(name: &str) -> ControlBackend {
        let listener = bind("127.0.0.1:0".parse().unwrap()).expect("bind control backend");
        let addr = listener.local_addr().unwrap();
        let ctl = Arc::new(Ctl {
            name: name.to_string(),
            status: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            health_status: AtomicU16::new(200),
            health_delay_ms: AtomicU64::new(0),
            health_body: Mutex::new(None),
            response_headers: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
            last_health: Mutex::new(None),
            received: Mutex::new(Vec::new()),
        });
        let b = ControlBackend {
            name: name.to_string(),
            addr,
            ctl,
            running: Mutex::new(None),
        };
        b.run(listener);
        b
    }

    fn run(&self, listener: TcpListener) {
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let ctl = Arc::clone(&self.ctl);
        let tasks = Arc::clone(&conns);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let ctl = Arc::clone(&ctl);
                let task = tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(Arc::clone(&ctl), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
                let mut t = tasks.lock().unwrap();
                t.retain(|h| !h.is_finished());
                t.push(task);
            }
        });
        *self.running.lock().unwrap() = Some(Running { accept, conns });
    }

    /// Closes the listening socket and every open connection (in-flight requests are cut off).
    /// When this returns, connecting to [`Self::addr`] is refused.
    pub async fn stop(&self) {
        let Some(r) = self.running.lock().unwrap().take() else {
            return;
        };
        r.accept.abort();
        let _ = r.accept.await;
        let conns: Vec<_> = std::mem::take(&mut *r.conns.lock().unwrap());
        for c in &conns {
            c.abort();
        }
        for c in conns {
            let _ = c.await;
        }
    }

    /// Listens on the same port again (after [`Self::stop`]); retries the bind for a while.
    pub async fn restart(&self) {
        if self.is_running() {
            return;
        }
        let start = std::time::Instant::now();
        let listener = loop {
            match bind(self.addr) {
                Ok(l) => break l,
                Err(e) if start.elapsed() > WAIT => {
                    panic!("{}: cannot bind {} again: {e}", self.name, self.addr)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.run(listener);
    }

    pub fn is_running(&self) -> bool {
        self.running.lock().unwrap().is_some()
    }

    /// Status of every (non-health) answer.
    pub fn set_status(&self, s: u16) {
        self.ctl.status.store(s, Ordering::SeqCst);
    }

    /// Delay before every (non-health) answer.
    pub fn set_delay(&self, d: Duration) {
        self.ctl
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Status of `GET /healthz` (body "ok" for 2xx, "unhealthy" otherwise, unless set).
    pub fn set_health(&self, s: u16) {
        self.ctl.health_status.store(s, Ordering::SeqCst);
    }

    /// Body of `/healthz` (`None`: "ok" / "unhealthy" by status).
    pub fn set_health_body(&self, body: Option<&str>) {
        *self.ctl.health_body.lock().unwrap() = body.map(str::to_string);
    }

    /// Delay before answering `/healthz`.
    pub fn set_health_delay(&self, d: Duration) {
        self.ctl
            .health_delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Add this header to every (non-health) answer.
    pub fn add_response_header(&self, name: &str, value: &str) {
        self.ctl
            .response_headers
            .lock()
            .unwrap()
            .push((name.to_string(), value.to_string()));
    }

    /// Requests that arrived so far, health probes excluded.
    pub fn requests(&self) -> usize {
        self.ctl.requests.load(Ordering::SeqCst)
    }

    /// Requests answered so far (after the delay), health probes excluded.
    pub fn completed(&self) -> usize {
        self.ctl.completed.load(Ordering::SeqCst)
    }

    pub fn health_checks(&self) -> usize {
        self.ctl.health_checks.load(Ordering::SeqCst)
    }

    /// Method and `Host` of the last `/healthz` request.
    pub fn last_health_request(&self) -> Option<(String, Option<String>)> {
        self.ctl.last_health.lock().unwrap().clone()
    }

    /// Every request received so far, in order, health probes excluded.
    pub fn received(&self) -> Vec<Received> {
        self.ctl.received.lock().unwrap().clone()
    }
}

impl Drop for ControlBackend {
    fn drop(&mut self) {
        if let Some(r) = self.running.lock().unwrap().take() {
            r.accept.abort();
            for c in r.conns.lock().unwrap().iter() {
                c.abort();
            }
        }
    }
}

async fn handle(ctl: Arc<Ctl>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/healthz" {
        ctl.health_checks.fetch_add(1, Ordering::SeqCst);
        let host = req
            .headers()
            .get("host")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        *ctl.last_health.lock().unwrap() = Some((req.method().to_string(), host));
        let delay = ctl.health_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let status = StatusCode::from_u16(ctl.health_status.load(Ordering::SeqCst)).unwrap();
        let body = ctl.health_body.lock().unwrap().clone().unwrap_or_else(|| {
            if status.is_success() {
                "ok".into()
            } else {
                "unhealthy".into()
            }
        });
        return Ok(Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(full(body))
            .unwrap());
    }
    ctl.requests.fetch_add(1, Ordering::SeqCst);
    let headers = super::backend::header_map(req.headers());
    let method = req.method().to_string();
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().to_string());
    let test_id = req
        .headers()
        .get("x-test-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let version = format!("{:?}", req.version());
    let mut body_len = 0u64;
    while let Some(frame) = req.body_mut().frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_len += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    ctl.received.lock().unwrap().push(Received {
        method: method.clone(),
        path: req.uri().path().to_string(),
        test_id,
        body_len,
    });
    let delay = ctl.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = StatusCode::from_u16(ctl.status.load(Ordering::SeqCst)).unwrap();
    let mut resp = Response::builder().status(status);
    for (k, v) in ctl.response_headers.lock().unwrap().iter() {
        resp = resp.header(k.as_str(), v.as_str());
    }
    let echo = json!({
        "backend": ctl.name,
        "method": method,
        "uri": uri,
        "version": version,
        "headers": headers,
        "body_len": body_len,
    });
    ctl.completed.fetch_add(1, Ordering::SeqCst);
    Ok(resp
        .header("content-type", "application/json")
        .body(full(Bytes::from(echo.to_string())))
        .unwrap())
}

/// A loopback address that refuses connections: a port bound once and released.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// `servers:` list items (6-space indent) for control backends.
pub fn ctl_servers(backends: &[&ControlBackend]) -> String {
    backends
        .iter()
        .map(|b| format!("      - address: \"{}\"\n", b.addr))
        .collect()
}

/// weir's admin listener.
pub struct Admin {
    pub addr: SocketAddr,
    client: Client<HttpConnector, Body>,
}

impl Admin {
    /// Finds the admin address in weir's `admin listening addr=IP:PORT` log line.
    pub async fn of(weir: &Weir) -> Admin {
        let re = Regex::new(r#"admin listening\b.*\baddr="?([0-9A-Fa-f:.\[\]]+)"?"#).unwrap();
        let line = weir
            .wait_log("`admin listening addr=…`", |l| re.is_match(l))
            .await;
        let addr = re.captures(&line).unwrap()[1]
            .parse()
            .unwrap_or_else(|e| panic!("bad admin address in {line:?}: {e}"));
        Admin {
            addr,
            client: client::client(),
        }
    }

    async fn call(&self, method: &str, path: &str) -> Resp {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path))
            .body(empty())
            .unwrap();
        client::try_send(&self.client, req)
            .await
            .unwrap_or_else(|e| panic!("admin {method} {path}: {e}"))
    }

    /// `GET /status` as JSON.
    pub async fn status(&self) -> Value {
        let r = self.call("GET", "/status").await;
        assert_eq!(r.status, StatusCode::OK, "GET /status: {}", r.text());
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("/status is not JSON ({e}): {}", r.text()))
    }

    /// The `/status` entry of one server of one pool.
    pub async fn server(&self, pool: &str, address: SocketAddr) -> Value {
        let st = self.status().await;
        find_server(&st, pool, address)
            .unwrap_or_else(|| panic!("no server {address} in pool {pool} in /status: {st}"))
    }

    /// `POST /pools/{pool}/servers/{address}/{action}`, asserting 200.
    pub async fn action(&self, pool: &str, address: SocketAddr, action: &str) {
        let path = format!("/pools/{pool}/servers/{address}/{action}");
        let r = self.call("POST", &path).await;
        assert_eq!(r.status, StatusCode::OK, "POST {path}: {}", r.text());
    }

    pub async fn drain(&self, pool: &str, address: SocketAddr) {
        self.action(pool, address, "drain").await
    }

    pub async fn enable(&self, pool: &str, address: SocketAddr) {
        self.action(pool, address, "enable").await
    }
}

/// `pools[name=pool].servers[address=address]` of a `/status` document.
pub fn find_server(status: &Value, pool: &str, address: SocketAddr) -> Option<Value> {
    let addr = address.to_string();
    status
        .get("pools")?
        .as_array()?
        .iter()
        .find(|p| p.get("name").and_then(Value::as_str) == Some(pool))?
        .get("servers")?
        .as_array()?
        .iter()
        .find(|s| s.get("address").and_then(Value::as_str) == Some(addr.as_str()))
        .cloned()
}
