//! One raw TCP connection kept open across requests: write exact bytes, read one response at a time.
//! For keep-alive and pipelining cases, where [`super::raw::raw_request`]'s one-shot connection is
//! not enough.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

use super::raw::{find, parse_head};
use super::WAIT;

pub struct RawConn {
    s: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

#[derive(Debug)]
pub struct Reply {
    /// 0 when the connection ended (or the wait ran out) before a status line.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended early: the connection closed before `Content-Length` bytes or the last chunk.
    pub truncated: bool,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let s = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        let _ = s.set_nodelay(true);
        RawConn {
            s,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Writes bytes; false if the peer has closed.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.s.write_all(bytes).await.is_ok()
    }

    async fn fill(&mut self, deadline: Instant) -> bool {
        if self.eof {
            return false;
        }
        let mut chunk = [0u8; 16 * 1024];
        match timeout_at(deadline, self.s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Ok(_) => {
                self.eof = true;
                false
            }
            Err(_) => false,
        }
    }

    /// Reads one response (a HEAD's when `head` is set: no body); status 0 if none came in `WAIT`.
    pub async fn response(&mut self, head: bool) -> Reply {
        self.response_within(WAIT, head).await
    }

    pub async fn response_within(&mut self, wait: Duration, head: bool) -> Reply {
        let deadline = Instant::now() + wait;
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if !self.fill(deadline).await {
                return Reply {
                    status: 0,
                    headers: Vec::new(),
                    body: Vec::new(),
                    truncated: false,
                };
            }
        };
        let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let (status, headers) = parse_head(&text);
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut truncated = false;
        let mut body = Vec::new();
        if head || status == 204 || status == 304 || (100..200).contains(&status) {
        } else if get("transfer-encoding").is_some() {
            loop {
                let Some(le) = find(&self.buf, b"\r\n") else {
                    if !self.fill(deadline).await {
                        truncated = true;
                        break;
                    }
                    continue;
                };
                let size_line = String::from_utf8_lossy(&self.buf[..le]).into_owned();
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .unwrap_or(0);
                if self.buf.len() < le + 2 + size + 2 {
                    if !self.fill(deadline).await {
                        truncated = true;
                        break;
                    }
                    continue;
                }
                body.extend_from_slice(&self.buf[le + 2..le + 2 + size]);
                self.buf.drain(..le + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                if !self.fill(deadline).await {
                    truncated = true;
                    break;
                }
            }
            let n = len.min(self.buf.len());
            body = self.buf.drain(..n).collect();
        } else {
            while self.fill(deadline).await {}
            body = std::mem::take(&mut self.buf);
        }
        Reply {
            status,
            headers,
            body,
            truncated,
        }
    }

    /// Whether the peer closes the connection within `wait` (bytes that arrive meanwhile are kept).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while self.fill(deadline).await {}
        self.eof
    }
}
