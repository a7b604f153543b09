//! A steady, bounded stream of requests for reload and hand-over tests: some clients keep one
//! keep-alive connection (reconnecting only when the server closed it between requests, as any
//! HTTP/1.1 client does), others open a new connection for every request. Every failure is counted
//! and its first examples kept, split into refused connections and failed requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

use super::client::{empty, Body};

/// Counts of a finished load run.
#[derive(Debug, Default, Clone)]
pub struct LoadStats {
    pub ok: u64,
    /// A request sent that got no response, or a status other than 200.
    pub failed: u64,
    /// A TCP connect that was refused or reset, or a handshake that failed.
    pub refused: u64,
    /// New connections opened (including every request of the new-connection clients).
    pub connections: u64,
    /// The first failures, for the assertion message.
    pub examples: Vec<String>,
}

#[derive(Default)]
struct Shared {
    ok: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    connections: AtomicU64,
    examples: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl Shared {
    fn note(&self, what: String) {
        let mut ex = self.examples.lock().unwrap();
        if ex.len() < 10 {
            ex.push(what);
        }
    }
}

/// A running load; [`Load::stop`] ends it and returns the counts.
pub struct Load {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts `keepalive` clients on persistent connections and `fresh` clients that connect anew
    /// for every request, all sending `GET path` to `addr` with a short pause between requests.
    pub fn start(addr: SocketAddr, path: &str, keepalive: usize, fresh: usize) -> Load {
        let shared = Arc::new(Shared::default());
        let mut tasks = Vec::new();
        for _ in 0..keepalive {
            tasks.push(tokio::spawn(keepalive_client(
                addr,
                path.to_string(),
                shared.clone(),
            )));
        }
        for _ in 0..fresh {
            tasks.push(tokio::spawn(fresh_client(
                addr,
                path.to_string(),
                shared.clone(),
            )));
        }
        Load { shared, tasks }
    }

    /// Requests answered so far.
    pub fn ok(&self) -> u64 {
        self.shared.ok.load(SeqCst)
    }

    pub async fn stop(self) -> LoadStats {
        self.shared.stop.store(true, SeqCst);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(40), t).await;
        }
        let s = &self.shared;
        LoadStats {
            ok: s.ok.load(SeqCst),
            failed: s.failed.load(SeqCst),
            refused: s.refused.load(SeqCst),
            connections: s.connections.load(SeqCst),
            examples: s.examples.lock().unwrap().clone(),
        }
    }
}

const PAUSE: Duration = Duration::from_millis(3);

async fn connect(addr: SocketAddr, shared: &Shared) -> Option<SendRequest<Body>> {
    shared.connections.fetch_add(1, SeqCst);
    let tcp = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            shared.refused.fetch_add(1, SeqCst);
            shared.note(format!("connect: {e}"));
            return None;
        }
        Err(_) => {
            shared.refused.fetch_add(1, SeqCst);
            shared.note("connect timed out".into());
            return None;
        }
    };
    let _ = tcp.set_nodelay(true);
    match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
        Ok((sender, conn)) => {
            tokio::spawn(conn);
            Some(sender)
        }
        Err(e) => {
            shared.refused.fetch_add(1, SeqCst);
            shared.note(format!("handshake: {e}"));
            None
        }
    }
}

/// One request on `sender`; true when it was answered with 200 and its whole body.
async fn one(
    sender: &mut SendRequest<Body>,
    addr: SocketAddr,
    path: &str,
    shared: &Shared,
) -> bool {
    use http_body_util::BodyExt;
    // Origin form: hyper's connection-level client sends the URI as it is given.
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(empty())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(30), async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e:?}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e:?}"))?;
        if status != 200 {
            return Err(format!("status {status}: {:?}", body.to_bytes()));
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|_| Err("no answer within 30s".into()));
    match res {
        Ok(()) => {
            shared.ok.fetch_add(1, SeqCst);
            true
        }
        Err(e) => {
            shared.failed.fetch_add(1, SeqCst);
            shared.note(e);
            false
        }
    }
}

async fn keepalive_client(addr: SocketAddr, path: String, shared: Arc<Shared>) {
    let mut sender: Option<SendRequest<Body>> = None;
    while !shared.stop.load(SeqCst) {
        // A connection the server closed while idle is replaced; that is not a failure.
        if let Some(s) = sender.as_mut() {
            if s.ready().await.is_err() {
                sender = None;
            }
        }
        if sender.is_none() {
            sender = connect(addr, &shared).await;
        }
        let Some(s) = sender.as_mut() else {
            tokio::time::sleep(PAUSE).await;
            continue;
        };
        if !one(s, addr, &path, &shared).await {
            sender = None;
        }
        tokio::time::sleep(PAUSE).await;
    }
}

async fn fresh_client(addr: SocketAddr, path: String, shared: Arc<Shared>) {
    while !shared.stop.load(SeqCst) {
        if let Some(mut s) = connect(addr, &shared).await {
            one(&mut s, addr, &path, &shared).await;
        }
        tokio::time::sleep(PAUSE).await;
    }
}
