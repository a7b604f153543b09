//! In-process fake backends: hyper servers on `127.0.0.1:0` that answer every request with a JSON
//! echo of what they received, so tests can see what weir forwarded.
//!
//! - `GET /healthz` answers the configured health status (counted apart from other requests).
//! - `?bytes=N` in the query streams an N-byte body back instead of the JSON echo.
//! - `?delay_ms=N` in the query waits N ms before answering (on top of the configured delay).
//! - Every other request: the whole request body is consumed (streamed, counted, never kept), the
//!   configured delay is waited, and the answer is `{"backend", "method", "uri", "version",
//!   "headers": {name: [values]}, "body_len"}` with the configured status and extra headers.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::client::{full, repeat, Body};

/// What a backend received, parsed from its JSON echo.
#[derive(Debug, Clone)]
pub struct Seen {
    pub backend: String,
    pub method: String,
    /// Path and query, as the backend received them.
    pub uri: String,
    pub version: String,
    /// Lower-case header names to every value received.
    pub headers: HashMap<String, Vec<String>>,
    pub body_len: u64,
}

impl Seen {
    pub fn from_json(v: &Value) -> Option<Seen> {
        let mut headers = HashMap::new();
        for (k, vals) in v.get("headers")?.as_object()? {
            let vals = vals
                .as_array()?
                .iter()
                .map(|x| x.as_str().unwrap_or_default().to_string())
                .collect();
            headers.insert(k.clone(), vals);
        }
        Some(Seen {
            backend: v.get("backend")?.as_str()?.to_string(),
            method: v.get("method")?.as_str()?.to_string(),
            uri: v.get("uri")?.as_str()?.to_string(),
            version: v.get("version")?.as_str()?.to_string(),
            headers,
            body_len: v.get("body_len")?.as_u64()?,
        })
    }

    /// All values of a header joined with ", " (how a list-valued header reads).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.join(", "))
    }

    pub fn has(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }

    /// The comma-separated elements of every value of a header.
    pub fn header_elements(&self, name: &str) -> Vec<String> {
        self.headers
            .get(name)
            .into_iter()
            .flatten()
            .flat_map(|v| v.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect()
    }
}

struct State {
    name: String,
    delay: Duration,
    status: StatusCode,
    health_status: StatusCode,
    response_headers: Vec<(String, String)>,
    connections: AtomicUsize,
    open: AtomicUsize,
    /// Connections whose serving ended in an error (the peer went away mid-response).
    broken: AtomicUsize,
    requests: AtomicUsize,
    health_checks: AtomicUsize,
}

/// A running fake backend; dropping it stops accepting new connections.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

pub struct BackendBuilder {
    name: String,
    delay: Duration,
    status: u16,
    health_status: u16,
    response_headers: Vec<(String, String)>,
}

impl BackendBuilder {
    /// Wait this long before answering each (non-health) request.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// Answer requests with this status (default 200).
    pub fn status(mut self, s: u16) -> Self {
        self.status = s;
        self
    }

    /// Answer `GET /healthz` with this status (default 200).
    pub fn health_status(mut self, s: u16) -> Self {
        self.health_status = s;
        self
    }

    /// Add this header to every echo response.
    pub fn response_header(mut self, name: &str, value: &str) -> Self {
        self.response_headers
            .push((name.to_string(), value.to_string()));
        self
    }

    pub async fn start(self) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: self.name.clone(),
            delay: self.delay,
            status: StatusCode::from_u16(self.status).unwrap(),
            health_status: StatusCode::from_u16(self.health_status).unwrap(),
            response_headers: self.response_headers,
            connections: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            broken: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            health_checks: AtomicUsize::new(0),
        });
        let st = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // e.g. out of file descriptors: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                st.open.fetch_add(1, Ordering::SeqCst);
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    let svc_st = Arc::clone(&st);
                    let svc = service_fn(move |req| handle(Arc::clone(&svc_st), req));
                    let served = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    if served.is_err() {
                        st.broken.fetch_add(1, Ordering::SeqCst);
                    }
                    st.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Backend {
            name: self.name,
            addr,
            state,
            accept,
        }
    }
}

impl Backend {
    pub fn builder(name: &str) -> BackendBuilder {
        BackendBuilder {
            name: name.to_string(),
            delay: Duration::ZERO,
            status: 200,
            health_status: 200,
            response_headers: Vec::new(),
        }
    }

    /// A plain echo backend.
    pub async fn start(name: &str) -> Backend {
        Self::builder(name).start().await
    }

    /// Accepted TCP connections so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// TCP connections open right now (closed ones are counted once the backend sees the close).
    pub fn open(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// Connections that ended in an error, such as a response the peer stopped taking.
    pub fn broken_connections(&self) -> usize {
        self.state.broken.load(Ordering::SeqCst)
    }

    /// Requests received so far, health probes excluded.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// `GET /healthz` probes received so far.
    pub fn health_checks(&self) -> usize {
        self.state.health_checks.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn handle(st: Arc<State>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if req.uri().path() == "/healthz" {
        st.health_checks.fetch_add(1, Ordering::SeqCst);
        let body = if st.health_status.is_success() {
            "ok"
        } else {
            "unhealthy"
        };
        return Ok(Response::builder()
            .status(st.health_status)
            .header("content-type", "text/plain")
            .body(full(body))
            .unwrap());
    }
    st.requests.fetch_add(1, Ordering::SeqCst);

    let headers = header_map(req.headers());
    let method = req.method().to_string();
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().to_string());
    let version = format!("{:?}", req.version());
    let query = |key: &str| -> Option<u64> {
        req.uri().query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|n| n.parse().ok())
        })
    };
    let want_bytes = query("bytes");
    let delay = st.delay + Duration::from_millis(query("delay_ms").unwrap_or(0));

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
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let mut resp = Response::builder().status(st.status);
    for (k, v) in &st.response_headers {
        resp = resp.header(k.as_str(), v.as_str());
    }
    if let Some(n) = want_bytes {
        return Ok(resp
            .header("content-type", "application/octet-stream")
            .body(repeat(n))
            .unwrap());
    }
    let echo = json!({
        "backend": st.name,
        "method": method,
        "uri": uri,
        "version": version,
        "headers": headers,
        "body_len": body_len,
    });
    Ok(resp
        .header("content-type", "application/json")
        .body(full(Bytes::from(echo.to_string())))
        .unwrap())
}

/// Every header of a request, lowercase name to values, as the echo backends report them.
pub fn header_map(h: &hyper::HeaderMap) -> HashMap<String, Vec<String>> {
    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
    for (name, value) in h {
        headers
            .entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    headers
}
