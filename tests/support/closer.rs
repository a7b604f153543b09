//! A server that loses the keep-alive race on purpose: it answers the first request of every
//! connection (keeping the connection open, as HTTP/1.1 does by default) and closes the connection,
//! unanswered, when a second request arrives on it. That is what a server whose keep-alive timeout
//! fires just as a proxy reuses the idle connection looks like from the proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Default)]
struct Counts {
    answered: AtomicUsize,
    cut: AtomicUsize,
    /// Request lines, in arrival order ("GET /x HTTP/1.1"), both answered and cut.
    lines: Mutex<Vec<String>>,
}

pub struct KeepAliveCloser {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl KeepAliveCloser {
    pub async fn start() -> KeepAliveCloser {
        Self::start_answering(1).await
    }

    /// Answers the first `answers` requests of each connection; 0: closes every connection
    /// unanswered once its first request has arrived (a server that reads and hangs up).
    pub async fn start_answering(answers: usize) -> KeepAliveCloser {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, c.clone(), answers));
            }
        });
        KeepAliveCloser { addr, counts, task }
    }

    /// Requests answered (the first of each connection).
    pub fn answered(&self) -> usize {
        self.counts.answered.load(SeqCst)
    }

    /// Requests cut off unanswered (with `start`: those that arrived on a reused connection).
    pub fn cut(&self) -> usize {
        self.counts.cut.load(SeqCst)
    }

    pub fn request_lines(&self) -> Vec<String> {
        self.counts.lines.lock().unwrap().clone()
    }
}

impl Drop for KeepAliveCloser {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head (and a `content-length` body); `None` when the connection ends first.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < end + len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..end + len);
    Some(head.lines().next().unwrap_or_default().to_string())
}

async fn serve(mut stream: TcpStream, counts: Arc<Counts>, answers: usize) {
    let mut buf = Vec::new();
    for _ in 0..answers {
        let Some(line) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        counts.lines.lock().unwrap().push(line);
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
        if stream.write_all(answer).await.is_err() {
            return;
        }
        counts.answered.fetch_add(1, SeqCst);
    }
    if let Some(line) = read_request(&mut stream, &mut buf).await {
        counts.lines.lock().unwrap().push(line);
        counts.cut.fetch_add(1, SeqCst);
    }
    // Dropped here: closed without an answer.
}
