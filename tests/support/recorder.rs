//! A raw TCP backend that records every byte it receives and answers with scripted bytes.
//!
//! Smuggling tests need to see exactly what weir sent (not what a lenient HTTP library made of it),
//! and broken-server tests need a server that misbehaves on purpose. This one parses just enough
//! HTTP/1.1 (head, then a `Content-Length` or chunked body) to know where each request ends, records
//! the raw bytes and each request, and asks a script what to answer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the backend framed it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The request line.
    pub line: String,
    /// Header lines as sent (`Name: value`).
    pub headers: Vec<String>,
    pub body: Vec<u8>,
    /// False when the connection ended (or the chunked framing broke) before the body was complete.
    pub complete: bool,
    /// Which backend connection (in accept order) carried it.
    pub conn: usize,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            let (n, v) = h.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// What the backend does once a request head (and body) has arrived.
pub enum Act {
    /// Write these bytes and keep serving the connection.
    Send(Vec<u8>),
    /// Write these bytes, then close.
    SendClose(Vec<u8>),
    /// Write nothing, keep the connection open (a server that never answers).
    Silent,
}

type Script = dyn Fn(&Recorded, usize) -> Act + Send + Sync;

#[derive(Default)]
struct Log {
    raw: Vec<Vec<u8>>,
    requests: Vec<Recorded>,
}

pub struct Recorder {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

/// A 200 whose body names the request line, so a test can tell whose answer a client got.
pub fn ok_naming(r: &Recorded) -> Vec<u8> {
    let body = format!("ok {}", r.line);
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Recorder {
    /// Answers every request with [`ok_naming`].
    pub async fn start() -> Recorder {
        Self::script(|r, _| Act::Send(ok_naming(r))).await
    }

    /// `script(request, index of the request on its connection)` decides each answer.
    pub async fn script(
        script: impl Fn(&Recorded, usize) -> Act + Send + Sync + 'static,
    ) -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind recorder");
        let addr = l.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Log::default()));
        let script: Arc<Script> = Arc::new(script);
        let log2 = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let conn = {
                    let mut g = log2.lock().unwrap();
                    g.raw.push(Vec::new());
                    g.raw.len() - 1
                };
                tokio::spawn(serve(s, conn, log2.clone(), script.clone()));
            }
        });
        Recorder { addr, log, task }
    }

    /// Every byte received, over all connections.
    pub fn raw(&self) -> Vec<u8> {
        self.log.lock().unwrap().raw.concat()
    }

    pub fn raw_text(&self) -> String {
        String::from_utf8_lossy(&self.raw()).into_owned()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().requests.clone()
    }

    pub fn connections(&self) -> usize {
        self.log.lock().unwrap().raw.len()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut s: TcpStream, conn: usize, log: Arc<Mutex<Log>>, script: Arc<Script>) {
    let mut buf = Vec::new();
    let mut index = 0;
    loop {
        let (req, used) = loop {
            if let Some(parsed) = parse(&buf, conn) {
                break parsed;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = match s.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    // Record a request whose head arrived but whose body never completed.
                    if let Some(mut r) = parse_head(&buf, conn).map(|(r, _)| r) {
                        r.complete = false;
                        log.lock().unwrap().requests.push(r);
                    }
                    return;
                }
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            log.lock().unwrap().raw[conn].extend_from_slice(&chunk[..n]);
        };
        buf.drain(..used);
        log.lock().unwrap().requests.push(req.clone());
        if !req.complete {
            return; // broken chunked framing: stop like a strict server would
        }
        match script(&req, index) {
            Act::Send(b) => {
                if s.write_all(&b).await.is_err() {
                    return;
                }
            }
            Act::SendClose(b) => {
                let _ = s.write_all(&b).await;
                let _ = s.shutdown().await;
                // Drain so the close is a FIN, not a reset that could eat what we wrote.
                let mut sink = [0u8; 1024];
                let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut sink)).await;
                return;
            }
            Act::Silent => {
                // Keep reading (and recording) without answering.
                let mut chunk = [0u8; 16 * 1024];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    log.lock().unwrap().raw[conn].extend_from_slice(&chunk[..n]);
                }
                return;
            }
        }
        index += 1;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(buf: &[u8], conn: usize) -> Option<(Recorded, usize)> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default().to_string();
    let headers = lines.map(str::to_string).collect();
    Some((
        Recorded {
            line,
            headers,
            body: Vec::new(),
            complete: true,
            conn,
        },
        end + 4,
    ))
}

/// One complete request from the start of `buf` and the bytes it used, or `None` for "need more".
fn parse(buf: &[u8], conn: usize) -> Option<(Recorded, usize)> {
    let (mut r, mut at) = parse_head(buf, conn)?;
    let chunked = r
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        loop {
            let rest = &buf[at..];
            let le = find(rest, b"\r\n")?;
            let line = String::from_utf8_lossy(&rest[..le]);
            let Ok(size) = usize::from_str_radix(line.split(';').next()?.trim(), 16) else {
                r.complete = false;
                return Some((r, buf.len()));
            };
            at += le + 2;
            if size == 0 {
                let t = find(&buf[at..], b"\r\n")?;
                // Skip trailers up to the empty line.
                let mut p = at;
                let mut tl = t;
                while tl != 0 {
                    p += tl + 2;
                    tl = find(&buf[p..], b"\r\n")?;
                }
                return Some((r, p + 2));
            }
            if buf.len() < at + size + 2 {
                return None;
            }
            r.body.extend_from_slice(&buf[at..at + size]);
            at += size + 2;
        }
    }
    let len = r
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if buf.len() < at + len {
        return None;
    }
    r.body = buf[at..at + len].to_vec();
    Some((r, at + len))
}
