//! Detects HTTP/1.1 request heads whose framing is ambiguous, before hyper normalises them away.
//!
//! hyper resolves `Content-Length` + `Transfer-Encoding` the RFC 9112 way (the transfer coding wins,
//! the length is dropped, the connection closes after the response), so by the time the request
//! reaches us the evidence is gone. The contract asks for a 400 instead, so this reader-side tap
//! watches the bytes hyper reads and raises a per-connection flag when one header block names both,
//! or when the connection's first head ends lines with a bare LF. It only looks for header names at
//! line starts; it does not parse HTTP (hyper does). Body bytes that happen to look like such a block
//! can at worst make the sender's own connection answer 400.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest header name we look for, plus the CR LF that precedes it.
const LOOK: usize = 20;

pub struct Tap<IO> {
    io: IO,
    state: Scan,
}

struct Scan {
    flag: Arc<AtomicBool>,
    active: bool,
    started: bool,
    first_head: bool,
    cl: bool,
    te: bool,
    carry: Vec<u8>,
}

impl<IO> Tap<IO> {
    pub fn new(io: IO, flag: Arc<AtomicBool>) -> Self {
        Tap {
            io,
            state: Scan {
                flag,
                active: true,
                started: false,
                first_head: true,
                cl: false,
                te: false,
                carry: Vec::with_capacity(2 * LOOK),
            },
        }
    }
}

impl Scan {
    fn feed(&mut self, data: &[u8]) {
        if !self.active || data.is_empty() {
            return;
        }
        if !self.started {
            self.started = true;
            if data.starts_with(b"PRI * HTTP/2.0") {
                self.active = false; // h2c prior knowledge: HTTP/2 framing has no such ambiguity
                return;
            }
        }
        // Scan `carry ++ data`; the carry holds the end of the previous read (from the byte before an
        // undecided line start), so a name split across two reads is still seen.
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        let mut keep_from = buf.len().saturating_sub(1);
        for i in memchr::memchr_iter(b'\n', &buf) {
            if !self.line(&buf, i) {
                keep_from = i.saturating_sub(1);
                break;
            }
        }
        self.carry.clear();
        self.carry.extend_from_slice(&buf[keep_from..]);
        self.carry.truncate(2 * LOOK);
    }

    /// Looks at the line that starts after the LF at `i`; false when the bytes so far cannot tell.
    fn line(&mut self, buf: &[u8], i: usize) -> bool {
        let rest = &buf[i + 1..];
        let crlf = i > 0 && buf[i - 1] == b'\r';
        if self.first_head && !crlf && i > 0 {
            self.flag.store(true, Relaxed); // a bare LF in the first head
        }
        match rest {
            [] | [b'\r'] => return false,
            [b'\r', b'\n', ..] | [b'\n', ..] => {
                self.first_head = false;
                self.cl = false;
                self.te = false;
                return true;
            }
            _ => {}
        }
        for (name, is_cl) in [
            (&b"content-length:"[..], true),
            (&b"transfer-encoding:"[..], false),
        ] {
            let n = name.len().min(rest.len());
            if !rest[..n].eq_ignore_ascii_case(&name[..n]) {
                continue;
            }
            if n < name.len() {
                return false; // could still become this name
            }
            if is_cl {
                // A second Content-Length in one head, even an equal one, is refused too.
                if self.cl {
                    self.flag.store(true, Relaxed);
                }
                self.cl = true;
            } else {
                self.te = true;
            }
        }
        if self.cl && self.te {
            self.flag.store(true, Relaxed);
        }
        true
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tap<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            this.state.feed(&buf.filled()[before..]);
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tap<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flagged(chunks: &[&[u8]]) -> bool {
        let flag = Arc::new(AtomicBool::new(false));
        let mut t = Tap::new((), flag.clone());
        for c in chunks {
            t.state.feed(c);
        }
        flag.load(Relaxed)
    }

    #[test]
    fn both_lengths_in_one_head() {
        assert!(flagged(&[b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"]));
        assert!(flagged(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: a\r\nCONTENT-LENGTH: 5\r\n\r\n"]));
    }

    #[test]
    fn duplicate_lengths() {
        assert!(flagged(&[
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
        ]));
    }

    #[test]
    fn split_across_reads() {
        assert!(flagged(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Le",
            b"ngth: 5\r\nTransfer-",
            b"Encoding: chunked\r\n\r\n"
        ]));
        let bytes = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert!(flagged(&singles));
    }

    #[test]
    fn separate_requests_are_fine() {
        assert!(!flagged(&[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ]));
        assert!(!flagged(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]));
    }

    #[test]
    fn bare_lf_in_first_head() {
        assert!(flagged(&[b"GET / HTTP/1.1\nHost: a\n\n"]));
        assert!(!flagged(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\n\n"]));
    }
}
