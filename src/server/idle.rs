//! What an HTTP/1.1 connection holds while it waits for its client: the socket and a deadline.
//!
//! hyper keeps a read and a write buffer (8 KiB each) and its connection state for as long as a
//! connection lives, so 10,000 idle keep-alive clients would cost ~300 MB. nginx frees its buffers
//! between requests; weir does the same by taking the socket back from hyper
//! ([`hyper::server::conn::http1::UpgradeableConnection::into_parts`]) once a connection has sat
//! idle for a moment ("parking" it), and building a fresh hyper connection when the client sends
//! again. A connection that has not sent its first byte has no HTTP state yet either.
//!
//! The HTTP/2 preface check that hyper-util's auto builder would do is here too (h2c with prior
//! knowledge on an HTTP/1 port): the bytes read to tell are handed back to hyper through
//! [`Prefixed`].

use bytes::{Bytes, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Anything whose bytes come from a client's TCP socket, which a parked connection waits on.
pub trait Socket {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for crate::conn::SendWatch {
    fn tcp(&self) -> &TcpStream {
        self.get_ref()
    }
}

impl<IO: Socket> Socket for tokio_rustls::server::TlsStream<IO> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0.tcp()
    }
}

impl<IO: Socket> Socket for crate::framing::Tap<IO> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().tcp()
    }
}

impl<IO: Socket> Socket for Prefixed<IO> {
    fn tcp(&self) -> &TcpStream {
        self.io.tcp()
    }
}

/// A stream that first yields bytes already read from it (the preface check's, or those hyper
/// held when the connection was parked).
pub struct Prefixed<IO> {
    io: IO,
    /// `None` when there are none, as nearly always: boxed, so an idle connection keeps 8 bytes
    /// for it rather than 32.
    prefix: Option<Box<Bytes>>,
}

impl<IO> Prefixed<IO> {
    pub fn new(io: IO, prefix: Bytes) -> Self {
        let prefix = (!prefix.is_empty()).then(|| Box::new(prefix));
        Prefixed { io, prefix }
    }

    /// Puts bytes back in front of what is still unread.
    pub fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        let all = match self.prefix.take() {
            None => bytes,
            Some(rest) => [&bytes[..], &rest[..]].concat().into(),
        };
        self.prefix = Some(Box::new(all));
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Some(prefix) = self.prefix.as_mut() else {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        };
        let n = prefix.len().min(buf.remaining());
        buf.put_slice(&prefix.split_to(n));
        if prefix.is_empty() {
            self.prefix = None; // frees what it pointed into
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
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

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection say it speaks.
#[derive(Debug, PartialEq, Eq)]
pub enum Speaks {
    Http1,
    Http2,
    /// Closed (or failed) before a byte that tells.
    Nothing,
}

/// How much the first read may take: a whole typical request head, so that this read is the one
/// hyper would have made (the bytes are handed to it from memory), not an extra one.
const FIRST_READ: usize = 4096;

/// Reads until the bytes either leave the HTTP/2 preface or complete it (one read, for any
/// HTTP/1 request but one that starts with `P` and arrives a byte at a time), and keeps them in
/// `io` for hyper.
pub async fn sniff<IO: AsyncRead + Unpin>(io: &mut Prefixed<IO>) -> Speaks {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    let speaks = loop {
        match io.io.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break Speaks::Nothing,
            Ok(_) => {}
        }
        let n = buf.len().min(PREFACE.len());
        if buf[..n] != PREFACE[..n] {
            break Speaks::Http1;
        }
        if n == PREFACE.len() {
            break Speaks::Http2;
        }
    };
    io.unread(buf.freeze());
    speaks
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn sniffed(chunks: &[&'static [u8]]) -> (Speaks, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(64);
        let chunks: Vec<_> = chunks.to_vec();
        tokio::spawn(async move {
            for c in chunks {
                client.write_all(c).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        });
        let mut io = Prefixed::new(server, Bytes::new());
        let speaks = sniff(&mut io).await;
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        (speaks, all)
    }

    #[tokio::test]
    async fn http1_request_is_replayed_whole() {
        let (s, all) = sniffed(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]).await;
        assert_eq!(s, Speaks::Http1);
        assert_eq!(all, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[tokio::test]
    async fn preface_a_byte_at_a_time_is_http2() {
        let bytes: Vec<&'static [u8]> = PREFACE.chunks(1).collect();
        let (s, all) = sniffed(&bytes).await;
        assert_eq!(s, Speaks::Http2);
        assert_eq!(all, PREFACE);
    }

    #[tokio::test]
    async fn post_split_after_p_is_http1() {
        let (s, all) = sniffed(&[b"P", b"OST / HTTP/1.1\r\n\r\n"]).await;
        assert_eq!(s, Speaks::Http1);
        assert_eq!(all, b"POST / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn closed_before_a_byte_is_nothing() {
        let (s, all) = sniffed(&[]).await;
        assert_eq!(s, Speaks::Nothing);
        assert!(all.is_empty());
    }

    #[tokio::test]
    async fn unread_goes_in_front() {
        let (_c, server) = tokio::io::duplex(8);
        let mut io = Prefixed::new(server, Bytes::from_static(b"cd"));
        io.unread(Bytes::from_static(b"ab"));
        let mut got = [0u8; 4];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"abcd");
    }
}
