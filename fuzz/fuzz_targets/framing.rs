//! The framing tap (`weir::framing::Tap`) on arbitrary first bytes of a connection, in arbitrary reads.
//!
//! The client chooses how its bytes are split into TCP reads, so no split may hide what the whole
//! stream shows; and a first head naming both Content-Length and Transfer-Encoding, or two
//! Content-Lengths, is always flagged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use weir::conn::ConnState;
use weir::framing::Tap;

/// Hands out `data` in reads of the given sizes.
struct Chunks<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
}

impl AsyncRead for Chunks<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = match self.sizes.len() {
            0 => self.data.len(),
            n => self.sizes[self.next % n],
        };
        self.next += 1;
        let n = size.min(buf.remaining()).min(self.data.len());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

/// The tap also writes (its 408 reply); these bytes go nowhere.
impl AsyncWrite for Chunks<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn flagged(data: &[u8], sizes: Vec<usize>) -> bool {
    let state = Arc::new(ConnState::default());
    let mut tap = Tap::new(
        Chunks {
            data,
            sizes,
            next: 0,
        },
        state.clone(),
        64 * 1024,
    );
    let mut cx = Context::from_waker(Waker::noop());
    let mut mem = [0u8; 4096];
    loop {
        let mut buf = ReadBuf::new(&mut mem);
        match Pin::new(&mut tap).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
            Poll::Ready(Ok(())) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Any message flagged: the verdict names the first bad one, whatever its index.
    state.is_bad(u64::MAX - 1)
}

// The first byte seeds the read sizes (1..=64 bytes, cycled); the rest is what the client sends, so
// seed files are plain request bytes behind one extra byte.
fuzz_target!(|input: &[u8]| {
    let Some((&seed, data)) = input.split_first() else {
        return;
    };
    let whole = flagged(data, Vec::new());
    let mut x = seed as u32 | 0x100;
    let sizes: Vec<usize> = (0..16)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as usize % 64 + 1
        })
        .collect();
    let split = flagged(data, sizes.clone());
    let singles = flagged(data, vec![1]);
    if whole {
        assert!(split, "a split ({sizes:?}) hid what the whole stream shows");
        assert!(singles, "one-byte reads hid what the whole stream shows");
    }
    if must_flag(data) {
        assert!(whole, "ambiguous first head not flagged");
    }
});

/// An independent, deliberately simple reading of the first head: lines end at LF (an optional CR
/// before it dropped), the head at the first empty line, as httparse reads it; true when the head
/// names both framing headers or Content-Length twice.
fn must_flag(data: &[u8]) -> bool {
    if data.starts_with(b"PRI * HTTP/2.0") {
        return false;
    }
    let starts =
        |l: &[u8], name: &[u8]| l.len() >= name.len() && l[..name.len()].eq_ignore_ascii_case(name);
    let (mut cl, mut te) = (0, 0);
    let mut lines = data.split(|&b| b == b'\n');
    lines.next(); // the request line
    let mut complete = false;
    // The last piece has no LF after it: an unfinished line, not part of a complete head.
    let pieces: Vec<&[u8]> = lines.collect();
    for (k, line) in pieces.iter().enumerate() {
        if k + 1 == pieces.len() {
            break;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            complete = true;
            break;
        }
        cl += starts(line, b"content-length:") as u32;
        te += starts(line, b"transfer-encoding:") as u32;
    }
    complete && (cl >= 2 || (cl >= 1 && te >= 1))
}
