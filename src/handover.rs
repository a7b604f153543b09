//! Binary hand-over (`weir run --handover PATH`): the listening sockets themselves pass from the
//! running process to its successor over a unix socket (SCM_RIGHTS), as HAProxy's `expose-fd
//! listeners` / `-x` and Envoy's hot restart do.
//!
//! Why not SO_REUSEPORT alone: Linux gives each socket of a reuseport group its own accept queue, and
//! closing one resets the connections still queued in it, so an old process that closes its
//! listeners drops whatever the kernel had just handed it. A passed socket is the same socket: the
//! old process closing its descriptor leaves it open in the new one, queue included, so not one
//! connection is lost.
//!
//! The exchange, one line or message each way: the new process sends `takeover`; the old one answers
//! with a JSON list of `{name, bind}` and the descriptors in the same order; the new one starts
//! accepting on them and sends `ready`; the old one unlinks PATH, answers `bye` and drains (as on
//! SIGTERM); the new one then binds PATH for its own successor. If the new process dies before
//! `ready`, the old one keeps serving as if nothing happened.

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// More listeners than this in one process is not a configuration weir expects.
const MAX_FDS: usize = 200;
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
}

#[derive(Serialize, Deserialize)]
struct Meta {
    name: String,
    bind: SocketAddr,
}

/// A listening socket offered to (or received from) the other process.
pub struct Socket {
    pub name: String,
    /// The configured `bind` (not the bound address), to match it against the new config.
    pub bind: SocketAddr,
    pub fd: OwnedFd,
}

fn line(r: &mut impl BufRead) -> Result<String, HandoverError> {
    let mut s = String::new();
    r.read_line(&mut s)?;
    Ok(s.trim().to_string())
}

fn expect(r: &mut impl BufRead, want: &str) -> Result<(), HandoverError> {
    let got = line(r)?;
    if got == want {
        Ok(())
    } else {
        Err(HandoverError::Protocol(format!(
            "expected {want:?}, got {got:?}"
        )))
    }
}

/// New process: asks the process serving at `path` for its listening sockets. `None` when nothing
/// serves there (a stale socket file is removed).
pub fn request(path: &Path) -> Result<Option<(UnixStream, Vec<Socket>)>, HandoverError> {
    let s = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            let _ = std::fs::remove_file(path);
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    s.set_read_timeout(Some(STEP_TIMEOUT))?;
    s.set_write_timeout(Some(STEP_TIMEOUT))?;
    (&s).write_all(b"takeover\n")?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let msg = recvmsg(
        &s,
        &mut [IoSliceMut::new(&mut buf)],
        &mut anc,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            fds.extend(it);
        }
    }
    let metas: Vec<Meta> = serde_json::from_slice(&buf[..msg.bytes])
        .map_err(|e| HandoverError::Protocol(format!("bad socket list: {e}")))?;
    if metas.len() != fds.len() {
        return Err(HandoverError::Protocol(format!(
            "{} sockets listed, {} received",
            metas.len(),
            fds.len()
        )));
    }
    let sockets = metas
        .into_iter()
        .zip(fds)
        .map(|(m, fd)| Socket {
            name: m.name,
            bind: m.bind,
            fd,
        })
        .collect();
    Ok(Some((s, sockets)))
}

/// New process, once it accepts on the received sockets: lets the old one go, and waits until it
/// has released `path`.
pub fn confirm(s: UnixStream) -> Result<(), HandoverError> {
    (&s).write_all(b"ready\n")?;
    expect(&mut BufReader::new(&s), "bye")
}

/// Old process: answers one `takeover` on `s` with `sockets`. `Ok` means the successor is serving
/// and `path` is unlinked: drain now.
pub fn offer(s: UnixStream, sockets: &[Socket], path: &Path) -> Result<(), HandoverError> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(STEP_TIMEOUT))?;
    s.set_write_timeout(Some(STEP_TIMEOUT))?;
    let mut r = BufReader::new(&s);
    expect(&mut r, "takeover")?;
    let metas: Vec<Meta> = sockets
        .iter()
        .map(|x| Meta {
            name: x.name.clone(),
            bind: x.bind,
        })
        .collect();
    let json = serde_json::to_vec(&metas).map_err(|e| HandoverError::Protocol(e.to_string()))?;
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|x| x.fd.as_fd()).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len().max(1)))];
    let mut anc = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !anc.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(HandoverError::Protocol("too many sockets".into()));
    }
    sendmsg(&s, &[IoSlice::new(&json)], &mut anc, SendFlags::empty())
        .map_err(std::io::Error::from)?;
    expect(&mut r, "ready")?;
    let _ = std::fs::remove_file(path);
    (&s).write_all(b"bye\n")?;
    Ok(())
}
