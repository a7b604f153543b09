//! Raw HTTP/1 over TCP: exact bytes out, a minimal parser for the response.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::WAIT;

#[derive(Debug)]
pub struct RawResponse {
    /// 0 when no status line arrived.
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the server closed the connection after the response (only when asked to check).
    pub closed: Option<bool>,
    /// Everything read, for failure messages.
    pub raw: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Writes `request` (from a separate task, so a server that stops reading cannot block us),
/// reads one response, and when `check_close` also waits up to 5 s to see whether the server
/// closes the connection.
pub async fn raw_request(addr: SocketAddr, request: Vec<u8>, check_close: bool) -> RawResponse {
    let stream = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&request).await;
        let _ = wr.flush().await;
        // Keep the write half open (dropping it would half-close) until we are done reading.
        std::future::pending::<()>().await;
        drop(wr);
    });

    let deadline = Instant::now() + WAIT;
    let mut buf = Vec::new();
    let mut eof = false;
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break Some(i);
        }
        if !read_more(&mut rd, &mut buf, deadline).await {
            eof = true;
            break None;
        }
    };
    let Some(head_end) = head_end else {
        writer.abort();
        let raw = String::from_utf8_lossy(&buf).into_owned();
        return RawResponse {
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            closed: Some(eof),
            raw,
        };
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let (status, headers) = parse_head(&head);
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut rest = buf[head_end + 4..].to_vec();
    let body;
    if status == 204 || status == 304 || (100..200).contains(&status) {
        body = Vec::new();
    } else if get("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        body = loop {
            if let Some(b) = decode_chunked(&rest) {
                break b;
            }
            if !read_more(&mut rd, &mut rest, deadline).await {
                eof = true;
                break rest.clone();
            }
        };
    } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            if !read_more(&mut rd, &mut rest, deadline).await {
                eof = true;
                break;
            }
        }
        body = rest.clone();
    } else {
        while read_more(&mut rd, &mut rest, deadline).await {}
        eof = true;
        body = rest.clone();
    }

    let closed = if !check_close {
        None
    } else if eof {
        Some(true)
    } else {
        let mut scratch = [0u8; 1024];
        match timeout(Duration::from_secs(5), rd.read(&mut scratch)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Some(true),
            _ => Some(false),
        }
    };
    writer.abort();
    let mut all = buf[..head_end + 4].to_vec();
    all.extend_from_slice(&rest);
    RawResponse {
        status,
        headers,
        body,
        closed,
        raw: String::from_utf8_lossy(&all).into_owned(),
    }
}

/// Reads more bytes; false on EOF, error or deadline.
async fn read_more(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
        Ok(Ok(n)) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        _ => false,
    }
}

/// The status code (0 if unreadable) and the headers (names lower-cased) of a response head
/// without its final blank line.
pub fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes a complete chunked body, or `None` if more bytes are needed.
fn decode_chunked(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_str = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            // Trailers (if any) end with an empty line.
            find(data, b"\r\n")?;
            return Some(out);
        }
        if data.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
