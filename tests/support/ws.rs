//! A tokio-tungstenite WebSocket backend: greets with its name, then by path:
//! `/sink` swallows messages, `/tick` pushes `tick N` every 300 ms, anything else echoes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;

/// Request headers of one handshake, lower-case names.
pub type Handshake = Vec<(String, String)>;

pub struct WsBackend {
    pub addr: SocketAddr,
    pub name: String,
    accepted: Arc<AtomicUsize>,
    pub handshakes: Arc<Mutex<Vec<Handshake>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WsBackend {
    pub async fn start(name: &str) -> WsBackend {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let (acc, hs, n) = (accepted.clone(), handshakes.clone(), name.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                acc.fetch_add(1, SeqCst);
                let (hs, n) = (hs.clone(), n.clone());
                tokio::spawn(async move {
                    let path = Arc::new(Mutex::new(String::new()));
                    let p2 = path.clone();
                    #[allow(clippy::result_large_err)] // tungstenite's callback signature
                    let cb = move |req: &Request, resp: Response| {
                        *p2.lock().unwrap() = req.uri().path().to_string();
                        let h = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").into()))
                            .collect();
                        hs.lock().unwrap().push(h);
                        Ok(resp)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
                        return;
                    };
                    let path = path.lock().unwrap().clone();
                    let _ = ws.send(Message::text(format!("hello from {n}"))).await;
                    serve(ws, &path).await;
                });
            }
        });
        WsBackend {
            addr,
            name: name.into(),
            accepted,
            handshakes,
            task,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(SeqCst)
    }
}

async fn serve(mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, path: &str) {
    if path == "/tick" {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if ws.send(Message::text(format!("tick {i}"))).await.is_err() {
                return;
            }
        }
    }
    // tungstenite answers pings and close frames itself.
    while let Some(Ok(m)) = ws.next().await {
        let data = matches!(m, Message::Text(_) | Message::Binary(_));
        if data && path != "/sink" && ws.send(m).await.is_err() {
            return;
        }
    }
}
