//! A server that accepts connections and never answers: the hung process that only timeouts or
//! health probes can detect (a closed port, by contrast, refuses at once).

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Accepts on `addr` and never reads or writes. Dropping it closes the port.
pub struct HungServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HungServer {
    pub async fn start() -> HungServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind hung server");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            // Held open, never read: requests sit in the socket buffer unanswered.
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        HungServer { addr, task }
    }
}

impl Drop for HungServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
