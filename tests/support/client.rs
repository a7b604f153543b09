//! Client side: hyper-util's pooled client, an h2c (prior-knowledge) sender, and streaming bodies
//! that produce any length without holding it in memory.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::time::timeout;

use super::backend::Seen;
use super::WAIT;

/// The request and response body type used throughout the tests.
pub type Body = BoxBody<Bytes, Infallible>;

pub fn empty() -> Body {
    Empty::<Bytes>::new().boxed()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// A body of `len` bytes of `x`, produced 64 KiB at a time, with an exact size hint
/// (so hyper sends a Content-Length).
pub fn repeat(len: u64) -> Body {
    RepeatBody::new(len, true).boxed()
}

/// Like [`repeat`] but with no size hint, so HTTP/1 sends it chunked.
pub fn repeat_chunked(len: u64) -> Body {
    RepeatBody::new(len, false).boxed()
}

struct RepeatBody {
    remaining: u64,
    chunk: Bytes,
    exact: bool,
}

impl RepeatBody {
    fn new(len: u64, exact: bool) -> Self {
        RepeatBody {
            remaining: len,
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
            exact,
        }
    }
}

impl hyper::body::Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

/// A pooled HTTP/1 client (keep-alive on).
pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response with its whole body.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The backend's echo; panics (showing the response) if the body is not one.
    pub fn seen(&self) -> Seen {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| Seen::from_json(&v))
            .unwrap_or_else(|| {
                panic!(
                    "expected a backend echo, got {} {:?} body {:?}",
                    self.status,
                    self.headers,
                    self.text()
                )
            })
    }

    /// The name of the backend that answered.
    pub fn backend(&self) -> String {
        assert_eq!(
            self.status,
            StatusCode::OK,
            "expected 200 from a backend, got body {:?}",
            self.text()
        );
        self.seen().backend
    }

    /// All values of a response header joined with ", ".
    pub fn header(&self, name: &str) -> Option<String> {
        let vals: Vec<_> = self
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        (!vals.is_empty()).then(|| vals.join(", "))
    }

    /// The comma-separated elements of every value of a response header.
    pub fn header_elements(&self, name: &str) -> Vec<String> {
        self.header(name)
            .unwrap_or_default()
            .split(',')
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect()
    }
}

/// Sends `req` and reads the whole response, with timeouts; `Err` describes what failed.
pub async fn try_send(
    client: &Client<HttpConnector, Body>,
    req: Request<Body>,
) -> Result<Resp, String> {
    let resp = timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| "no response head within 30s".to_string())?
        .map_err(|e| format!("request error: {e:?}"))?;
    collect(resp).await
}

/// Sends `req`, panicking on any transport error.
pub async fn send(client: &Client<HttpConnector, Body>, req: Request<Body>) -> Resp {
    let what = format!("{} {}", req.method(), req.uri());
    try_send(client, req)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

pub async fn collect<B>(resp: http::Response<B>) -> Result<Resp, String>
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = resp.into_parts();
    let body = timeout(Duration::from_secs(60), body.collect())
        .await
        .map_err(|_| "response body not complete within 60s".to_string())?
        .map_err(|e| format!("response body error: {e:?}"))?
        .to_bytes();
    Ok(Resp {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// Sends one request over a fresh HTTP/2 prior-knowledge (h2c) connection to `addr`.
/// The request's URI authority becomes `:authority`.
pub async fn h2c_send(addr: SocketAddr, req: Request<Body>) -> Result<Resp, String> {
    let stream = timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("h2 handshake: {e:?}"))?;
    tokio::spawn(conn);
    let resp = timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .map_err(|_| "no h2 response within 30s".to_string())?
        .map_err(|e| format!("h2 request: {e:?}"))?;
    collect(resp).await
}
