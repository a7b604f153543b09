//! A strict shadow parser of the HTTP/1.1 request bytes a client sends, run beside hyper's.
//!
//! hyper resolves some ambiguities the lenient way (it drops `Content-Length` when `Transfer-Encoding`
//! is present, merges equal duplicate lengths, accepts bare-LF line ends), so by the time a request
//! reaches the proxy the evidence is gone. This reader-side tap sees every byte hyper reads, in order,
//! and follows the same message framing (head, then a `Content-Length` or chunked body), so it knows
//! which message each byte belongs to. It refuses anything a server behind weir might frame
//! differently: `Content-Length` with `Transfer-Encoding`, a repeated or non-numeric length, any
//! transfer coding but a single `chunked`, obs-fold, whitespace or other non-token bytes in a name,
//! bare CR or LF, control bytes in values, malformed chunk sizes or extensions, framing headers in
//! trailers. The verdict is the index of the first bad message ([`ConnState::flag`]); the proxy
//! refuses that request and every later one on the connection with 400, and cuts off a body that
//! turns bad midway. Once a message is bad the tap stops looking (nothing later is served).
//!
//! The tap also writes weir's answer to a head that never completed ([`ConnState::answer`]): hyper
//! is reading that head, so the next read writes the answer instead and reports the end of input,
//! and hyper drops the connection without a word of its own.
//!
//! For every message it does not flag, the tap and hyper agree on where the message ends, so indexes
//! stay in step. Memory per connection is a few dozen bytes: nothing is buffered but the start of a
//! header name and the value of a framing header.

use crate::conn::ConnState;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: u32 = 4096;

pub struct Tap<IO> {
    io: IO,
    scan: Option<Scan>,
    state: Arc<ConnState>,
    /// Bytes of the state's reply written so far.
    replied: usize,
}

impl<IO> Tap<IO> {
    /// Watches an HTTP/1 (or not yet known) connection; `max_head` is the listener's head limit.
    pub fn new(io: IO, state: Arc<ConnState>, max_head: usize) -> Self {
        Tap {
            io,
            scan: Some(Scan::new(max_head)),
            state,
            replied: 0,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Only reports reads to the watchdog (HTTP/2 by ALPN has no framing ambiguity to look for).
    pub fn passive(io: IO, state: Arc<ConnState>) -> Self {
        Tap {
            io,
            scan: None,
            state,
            replied: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Before a request line; empty CRLF lines are skipped.
    Start,
    StartLf,
    Method,
    Target,
    Version,
    VersionLf,
    LineStart,
    EmptyLf,
    Name,
    Value,
    ValueLf,
    ChunkSize,
    ChunkExt,
    ChunkSizeLf,
    Data,
    DataCr,
    DataLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hdr {
    Other,
    ContentLength,
    TransferEncoding,
}

struct Scan {
    st: St,
    /// Index of the message being read.
    index: u64,
    /// Head bytes are counted in `u32`s (and lengths below in bytes) to keep an idle
    /// connection's state small; a head limit above 4 GiB counts as 4 GiB.
    max_head: u32,
    head_len: u32,
    trailers: bool,
    first: [u8; 4],
    first_len: u8,
    version: [u8; 8],
    version_len: u8,
    name: [u8; 18],
    /// Saturates: past `name.len()` it only says the name is longer.
    name_len: u8,
    value: [u8; 24],
    value_len: u8,
    value_overflow: bool,
    cl: Option<u64>,
    cl_count: u8,
    te_count: u8,
    chunked: bool,
    chunk_digits: u8,
    chunk_line: u32,
    remaining: u64,
}

enum Verdict {
    Go,
    Bad,
    /// Not HTTP/1 (h2c prior knowledge): stop watching.
    Done,
}

/// Token characters (RFC 9110 5.6.2), as a table: the scan looks up every byte of every name.
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(b, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'^'..=b'`' | b'|' | b'~');
        i += 1;
    }
    t
};

fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

fn is_vchar_or_ws(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80
}

/// The length of a whole, well-formed field line at the start of `data`, name to CRLF, when the
/// field does not frame the message (so nothing in it needs keeping); 0 for anything else, which
/// then goes through the state machine byte by byte.
fn other_field_line(data: &[u8]) -> usize {
    let name = run(data, is_tchar);
    if name == 0 || data.get(name) != Some(&b':') {
        return 0;
    }
    let n = &data[..name];
    if n.eq_ignore_ascii_case(b"content-length") || n.eq_ignore_ascii_case(b"transfer-encoding") {
        return 0;
    }
    let end = name + 1 + run(&data[name + 1..], is_vchar_or_ws);
    match data.get(end..end + 2) {
        Some(b"\r\n") => end + 2,
        _ => 0,
    }
}

/// Length of the prefix of `data` whose bytes all pass `ok`.
fn run(data: &[u8], ok: impl Fn(u8) -> bool) -> usize {
    data.iter().position(|&b| !ok(b)).unwrap_or(data.len())
}

impl Scan {
    fn new(max_head: usize) -> Scan {
        Scan {
            st: St::Start,
            index: 0,
            max_head: u32::try_from(max_head).unwrap_or(u32::MAX),
            head_len: 0,
            trailers: false,
            first: [0; 4],
            first_len: 0,
            version: [0; 8],
            version_len: 0,
            name: [0; 18],
            name_len: 0,
            value: [0; 24],
            value_len: 0,
            value_overflow: false,
            cl: None,
            cl_count: 0,
            te_count: 0,
            chunked: false,
            chunk_digits: 0,
            chunk_line: 0,
            remaining: 0,
        }
    }

    /// Feeds one read; `Err(index)` names the first bad message.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), Option<u64>> {
        while !data.is_empty() {
            // Body bytes are skipped in bulk.
            if self.st == St::Data {
                let n = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= n as u64;
                data = &data[n..];
                if self.remaining == 0 {
                    if self.chunked {
                        self.st = St::DataCr;
                    } else {
                        self.end_message();
                    }
                }
                continue;
            }
            let n = self.bulk(data);
            if n > 0 {
                self.head_len = self
                    .head_len
                    .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
                if self.head_len > self.max_head {
                    return Err(Some(self.index)); // hyper answers 431; nothing later is served
                }
                data = &data[n..];
                continue;
            }
            let b = data[0];
            data = &data[1..];
            match self.byte(b) {
                Verdict::Go => {}
                Verdict::Bad => return Err(Some(self.index)),
                Verdict::Done => return Err(None),
            }
        }
        Ok(())
    }

    /// Consumes a run of bytes the state machine need not see one by one: the rest of a request
    /// target, of a field name, or of a field value weir does not need to read, and a whole
    /// well-formed version line (the one run that moves the state on, to the first field). The
    /// state machine proper sees only the bytes that delimit these, so a typical head costs a few
    /// instructions per byte.
    fn bulk(&mut self, data: &[u8]) -> usize {
        match self.st {
            St::Start => self.method(data),
            St::LineStart => other_field_line(data),
            St::Target => {
                let n = run(data, |b| (0x21..0x7f).contains(&b));
                if data.get(n) == Some(&b' ') {
                    self.st = St::Version;
                    return n + 1;
                }
                n
            }
            St::Name => {
                let n = run(data, is_tchar);
                for &b in &data[..n] {
                    self.push_name(b);
                }
                n
            }
            St::Value if !self.framing_field() => run(data, is_vchar_or_ws),
            // The whole version and its line end at once, the common case; anything else goes
            // byte by byte.
            St::Version if self.version_len == 0 => match data.get(..10) {
                Some(v @ (b"HTTP/1.1\r\n" | b"HTTP/1.0\r\n")) => {
                    self.version[..8].copy_from_slice(&v[..8]);
                    self.version_len = 8;
                    self.st = St::LineStart;
                    10
                }
                _ => 0,
            },
            _ => 0,
        }
    }

    /// A whole method and the space after it, unless it may be the HTTP/2 preface's `PRI`.
    fn method(&mut self, data: &[u8]) -> usize {
        let n = run(data, is_tchar);
        if n == 0 || data.get(n) != Some(&b' ') || (self.index == 0 && &data[..n] == b"PRI") {
            return 0;
        }
        self.st = St::Target;
        n + 1
    }

    /// Whether the field being read frames the message, so its value must be kept.
    fn framing_field(&self) -> bool {
        let name = &self.name[..usize::from(self.name_len).min(self.name.len())];
        name == b"content-length" || name == b"transfer-encoding"
    }

    fn in_head(&self) -> bool {
        !matches!(
            self.st,
            St::ChunkSize | St::ChunkExt | St::ChunkSizeLf | St::Data | St::DataCr | St::DataLf
        ) || self.trailers
    }

    fn byte(&mut self, b: u8) -> Verdict {
        if self.in_head() {
            self.head_len += 1;
            if self.head_len > self.max_head {
                return Verdict::Bad; // hyper answers 431; nothing later is served
            }
        }
        use St::*;
        self.st = match (self.st, b) {
            (Start, b'\r') => StartLf,
            (StartLf, b'\n') => Start,
            (Start, b) if is_tchar(b) => {
                self.push_first(b);
                Method
            }
            (Method, b) if is_tchar(b) => {
                self.push_first(b);
                Method
            }
            (Method, b' ') => {
                if self.index == 0 && &self.first[..usize::from(self.first_len)] == b"PRI" {
                    return Verdict::Done;
                }
                Target
            }
            (Target, b) if (0x21..0x7f).contains(&b) => Target,
            (Target, b' ') => Version,
            (Version, b'\r') => VersionLf,
            (Version, b) if (0x21..0x7f).contains(&b) && self.version_len < 8 => {
                self.version[usize::from(self.version_len)] = b;
                self.version_len += 1;
                Version
            }
            (VersionLf, b'\n') => match &self.version[..usize::from(self.version_len)] {
                b"HTTP/1.1" | b"HTTP/1.0" => LineStart,
                _ => return Verdict::Bad,
            },
            (LineStart, b'\r') => EmptyLf,
            (LineStart, b) if is_tchar(b) => {
                self.push_name(b);
                Name
            }
            (EmptyLf, b'\n') => return self.end_head(),
            (Name, b) if is_tchar(b) => {
                self.push_name(b);
                Name
            }
            (Name, b':') => Value,
            (Value, b'\r') => ValueLf,
            (Value, b) if is_vchar_or_ws(b) => {
                self.push_value(b);
                Value
            }
            (ValueLf, b'\n') => {
                if !self.end_field() {
                    return Verdict::Bad;
                }
                LineStart
            }
            (ChunkSize, b) if b.is_ascii_hexdigit() => {
                self.chunk_line += 1;
                if self.chunk_line > MAX_CHUNK_LINE {
                    return Verdict::Bad;
                }
                if self.chunk_digits > 0 || b != b'0' {
                    self.chunk_digits += 1;
                }
                if self.chunk_digits > 15 {
                    return Verdict::Bad;
                }
                let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                self.remaining = self.remaining * 16 + d;
                ChunkSize
            }
            (ChunkSize, b';') if self.chunk_line > 0 => ChunkExt,
            (ChunkSize, b'\r') if self.chunk_line > 0 => ChunkSizeLf,
            (ChunkExt, b'\r') => ChunkSizeLf,
            (ChunkExt, b) if is_vchar_or_ws(b) => {
                self.chunk_line += 1;
                if self.chunk_line > MAX_CHUNK_LINE {
                    return Verdict::Bad;
                }
                ChunkExt
            }
            (ChunkSizeLf, b'\n') => {
                self.chunk_line = 0;
                self.chunk_digits = 0;
                if self.remaining == 0 {
                    self.trailers = true;
                    LineStart
                } else {
                    Data
                }
            }
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => ChunkSize,
            // Everything else: bare CR or LF, obs-fold, a space before a colon, control bytes, ...
            _ => return Verdict::Bad,
        };
        Verdict::Go
    }

    fn push_first(&mut self, b: u8) {
        if usize::from(self.first_len) < self.first.len() {
            self.first[usize::from(self.first_len)] = b;
            self.first_len += 1;
        }
    }

    fn push_name(&mut self, b: u8) {
        if usize::from(self.name_len) < self.name.len() {
            self.name[usize::from(self.name_len)] = b.to_ascii_lowercase();
        }
        self.name_len = self.name_len.saturating_add(1);
    }

    fn push_value(&mut self, b: u8) {
        if self.value_len == 0 && (b == b' ' || b == b'\t') {
            return; // leading OWS
        }
        if usize::from(self.value_len) < self.value.len() {
            self.value[usize::from(self.value_len)] = b;
            self.value_len += 1;
        } else {
            self.value_overflow = true;
        }
    }

    /// A complete header (or trailer) field; false when it makes the message ambiguous.
    fn end_field(&mut self) -> bool {
        let kind = match &self.name[..usize::from(self.name_len).min(self.name.len())] {
            _ if usize::from(self.name_len) > self.name.len() => Hdr::Other,
            b"content-length" => Hdr::ContentLength,
            b"transfer-encoding" => Hdr::TransferEncoding,
            _ => Hdr::Other,
        };
        let mut v = &self.value[..usize::from(self.value_len)];
        while let [rest @ .., b' ' | b'\t'] = v {
            v = rest;
        }
        let ok = match kind {
            Hdr::Other => true,
            _ if self.trailers => false, // framing fields have no place in trailers
            Hdr::ContentLength => {
                self.cl_count += 1;
                let digits = !v.is_empty() && v.len() <= 18 && v.iter().all(u8::is_ascii_digit);
                if digits {
                    self.cl = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
                }
                digits && !self.value_overflow && self.cl_count == 1
            }
            Hdr::TransferEncoding => {
                self.te_count += 1;
                self.chunked = v.eq_ignore_ascii_case(b"chunked");
                self.chunked && !self.value_overflow && self.te_count == 1
            }
        };
        self.name_len = 0;
        self.value_len = 0;
        self.value_overflow = false;
        ok
    }

    fn end_head(&mut self) -> Verdict {
        if self.trailers {
            self.end_message();
            return Verdict::Go;
        }
        if self.cl_count > 0 && self.te_count > 0 {
            return Verdict::Bad;
        }
        if self.te_count > 0 && &self.version[..usize::from(self.version_len)] == b"HTTP/1.0" {
            return Verdict::Bad;
        }
        if self.chunked {
            self.remaining = 0;
            self.st = St::ChunkSize;
        } else {
            match self.cl {
                Some(n) if n > 0 => {
                    self.remaining = n;
                    self.st = St::Data;
                }
                _ => self.end_message(),
            }
        }
        Verdict::Go
    }

    fn end_message(&mut self) {
        let index = self.index + 1;
        *self = Scan {
            max_head: self.max_head,
            ..Scan::new(0)
        };
        self.index = index;
    }
}

impl<IO: AsyncWrite + Unpin> Tap<IO> {
    /// Writes the rest of the reply, then reports the end of input (whatever a write error).
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let state = self.state.clone();
        let reply = state.reply().unwrap_or_default();
        while self.replied < reply.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &reply[self.replied..])) {
                Ok(0) | Err(_) => return Poll::Ready(Ok(())),
                Ok(n) => self.replied += n,
            }
        }
        let _ = ready!(Pin::new(&mut self.io).poll_shutdown(cx));
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Tap<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        if this.state.reply().is_some() {
            return this.poll_reply(cx);
        }
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let data = &buf.filled()[before..];
            if !data.is_empty() {
                this.state.on_read();
                if this.state.upgraded.load(Relaxed) {
                    this.scan = None;
                }
                if let Some(scan) = &mut this.scan {
                    let fed = scan.feed(data);
                    let pending = scan.in_head() && scan.head_len > 0;
                    this.state.head_pending.store(pending, Relaxed);
                    this.state
                        .on_scanned((scan.st == St::Start).then_some(scan.index));
                    if let Err(bad) = fed {
                        match bad {
                            Some(index) => this.state.flag(index),
                            None => this.state.h2.store(true, Relaxed),
                        }
                        this.scan = None;
                        this.state.on_scanned(None);
                    }
                }
            }
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
        self.state.on_flush(false);
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.state.on_flush(false);
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.state.on_flush(matches!(r, Poll::Ready(Ok(()))));
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index of the first bad message, `None` if all are fine.
    fn verdict(chunks: &[&[u8]]) -> Option<u64> {
        let mut s = Scan::new(64 * 1024);
        for c in chunks {
            if let Err(bad) = s.feed(c) {
                return bad;
            }
        }
        None
    }

    fn bad(b: &[u8]) -> bool {
        verdict(&[b]) == Some(0) && verdict(&b.chunks(1).collect::<Vec<_>>()) == Some(0)
    }

    #[test]
    fn clean_messages_pass_in_any_split() {
        let m: &[u8] = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n5;a=b;c=\"d\"\r\nhello\r\n0\r\nx-t: 1\r\n\r\n\
            \r\nGET /c HTTP/1.0\r\n\r\n";
        assert_eq!(verdict(&[m]), None);
        assert_eq!(verdict(&m.chunks(1).collect::<Vec<_>>()), None);
        assert_eq!(verdict(&m.chunks(7).collect::<Vec<_>>()), None);
    }

    #[test]
    fn ambiguous_heads() {
        for m in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nCONTENT-LENGTH: 5\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX\x01: a\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.10\r\n\r\n",
            b"GET / HTTP/1.1 \r\n\r\n",
            b"GET / HTTP/1.1\r\r\n\r\n",
            b"GET / http/1.1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;a\x00\r\nhello",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nContent-Length: 5\r\n\r\n",
            // Field lines the scan takes whole, next to ones it must read byte by byte.
            b"POST / HTTP/1.1\r\nX: a\r\ncontent-length: 1\r\nY: b\r\ntransfer-encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\rY: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\r\n\tY: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n",
            b"GET\t/ HTTP/1.1\r\n\r\n",
            b"GET /a\x01b HTTP/1.1\r\n\r\n",
        ] {
            assert!(bad(m), "not flagged: {:?}", String::from_utf8_lossy(m));
        }
    }

    #[test]
    fn a_bad_second_message_names_index_one() {
        let m = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n";
        assert_eq!(verdict(&[m]), Some(1));
    }

    #[test]
    fn h2_preface_stops_the_scan() {
        assert_eq!(
            verdict(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\n\n"]),
            None
        );
    }
}
