//! The request path: route → pool → pick → forward → respond. Read [`handle`] first.

pub mod body;
pub mod error;
mod grpc;
pub mod headers;
mod upgrade;

use crate::pool::Pool;
use crate::router::Route;
use crate::runtime::{ListenerRuntime, Runtime, Shared};
use body::{BodySlot, Finish, ForwardBody, ResponseBody};
use error::ProxyError;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

/// What the proxy knows about the client connection a request came on.
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub listener: Arc<ListenerRuntime>,
    /// Boxed: a plain-HTTP connection then keeps 8 bytes for it, not ~90, for its whole life.
    pub tls: Option<Box<TlsInfo>>,
    /// Shared with the framing tap (its verdict) and the connection's watchdog (activity).
    pub state: Arc<crate::conn::ConnState>,
}

#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub version: &'static str,
    /// Subject of the client certificate the listener verified (mTLS).
    pub client_subject: Option<String>,
}

impl ConnInfo {
    fn proto(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn sni(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|t| t.sni.as_deref())
    }
}

/// Everything the access log and metrics need once the response is done.
struct Done {
    shared: Arc<Shared>,
    /// The access log is on: copy what it prints.
    log: bool,
    start: Instant,
    method: Method,
    host: String,
    path: String,
    status: u16,
    listener: Arc<str>,
    route: Option<Arc<str>>,
    pool: Option<Arc<Pool>>,
    /// The server holding this request's in-flight slot, released by [`Finish::finish`].
    server: Option<usize>,
    /// The last server an attempt went to, for the log: a 502 or 504 names it too (nginx's
    /// `$upstream_addr`), though its slot is already released.
    tried: Option<usize>,
    reason: &'static str,
    request_id: Option<HeaderValue>,
    retries: u32,
    tls: &'static str,
    /// From sending the (last attempt's) request to the server to its response head.
    upstream_head: Option<std::time::Duration>,
    /// Set when the answering attempt opened a new upstream connection (not a pooled one).
    upstream_connect: Option<std::time::Duration>,
    /// [`Finish::finish`] has run: the request is counted and logged, its server released.
    finished: bool,
}

/// Milliseconds with microsecond precision, as a number (JSON logs get a number, not a string).
fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A request whose future is dropped before it has a response (hyper drops it when the client
/// goes away mid-request) is still counted, logged and, above all, released from its server: the
/// server's in-flight count drives `least_request` and `max_connections`, and a request that
/// vanished without a release would hold a slot there for good. Logged as nginx does, 499.
impl Drop for Done {
    fn drop(&mut self) {
        if !self.finished {
            self.status = 499;
            self.finish(0, Some("client_closed"));
        }
    }
}

impl Finish for Done {
    fn finish(&mut self, bytes: u64, cut: Option<&'static str>) {
        self.finished = true;
        if let Some(reason) = cut {
            self.reason = reason;
        }
        let dur = crate::clock::now().saturating_duration_since(self.start);
        self.shared.metrics.in_flight.dec();
        if let (Some(pool), Some(i)) = (&self.pool, self.server) {
            pool.release(i);
        }
        let upstream = match (&self.pool, self.server.or(self.tried)) {
            (Some(p), Some(i)) => Some(&p.servers[i].address),
            _ => None,
        };
        self.shared.metrics.request_done(
            &self.listener,
            self.route.as_ref(),
            self.pool.as_ref().map(|p| &p.name),
            upstream,
            self.status,
            self.reason,
            dur,
            bytes,
        );
        tracing::info!(
            target: "weir::access",
            method = %self.method,
            host = %self.host,
            path = %self.path,
            status = self.status,
            route = %self.route.as_deref().unwrap_or("-"),
            pool = %self.pool.as_ref().map_or("-", |p| &*p.name),
            upstream = %upstream.map_or("-", |a| &**a),
            dur_ms = millis(dur),
            upstream_ms = self.upstream_head.map(millis),
            connect_ms = self.upstream_connect.map(millis),
            bytes,
            reason = %self.reason,
            retries = self.retries,
            id = %self.request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
            listener = %self.listener,
            tls = %self.tls,
            "request"
        );
    }
}

/// Logs and counts a request that hyper refused before it reached [`handle`] (unparsable head).
pub fn log_refused(conn: &ConnInfo, shared: &Arc<Shared>, status: u16, reason: &'static str) {
    let mut done = Done {
        shared: shared.clone(),
        log: true,
        start: Instant::now(),
        method: Method::from_bytes(b"-").unwrap_or_default(),
        host: "-".into(),
        path: "-".into(),
        status,
        listener: conn.listener.name.clone(),
        route: None,
        pool: None,
        server: None,
        tried: None,
        reason,
        request_id: None,
        retries: 0,
        tls: conn.tls.as_ref().map_or("-", |t| t.version),
        upstream_head: None,
        upstream_connect: None,
        finished: false,
    };
    shared.metrics.in_flight.inc();
    done.finish(0, None);
}

/// Serves one client request: routes it and rewrites it for its server here, synchronously, and
/// returns the future that sends it and answers.
///
/// That future is boxed and copied whole on every request, so it is kept small: an async fn keeps
/// a copy of each argument beside the moved-out local (the request's 264 bytes twice), so this is
/// a plain function and the future an `async move` block that uses what it captures in place.
pub fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnInfo>,
    shared: Arc<Shared>,
    busy: crate::conn::Busy,
) -> impl std::future::Future<Output = Result<Response<ResponseBody>, std::convert::Infallible>>
       + Send
       + 'static {
    let rt = shared.runtime.load_full();
    // Copy what the access log prints only when it is on (`RUST_LOG=weir::access=off` saves it).
    let log = tracing::enabled!(target: "weir::access", tracing::Level::INFO);
    shared.metrics.in_flight.inc();
    let mut done = Box::new(Done {
        shared,
        log,
        start: crate::clock::now(),
        method: req.method().clone(),
        host: if log {
            crate::router::matcher::request_host(&req).to_string()
        } else {
            String::new()
        },
        path: if log {
            req.uri().path().to_string()
        } else {
            String::new()
        },
        status: 0,
        listener: conn.listener.name.clone(),
        route: None,
        pool: None,
        server: None,
        tried: None,
        reason: "ok",
        request_id: None,
        retries: 0,
        tls: conn.tls.as_ref().map_or("-", |t| t.version),
        upstream_head: None,
        upstream_connect: None,
        finished: false,
    });
    let http1 = req.version() < Version::HTTP_2;
    let grpc = grpc::is_grpc(req.headers());
    let mut step = match route(&req, &conn, &rt, &mut done, busy.index) {
        Ok(Routed::Forward(i)) => match prepare(req, &conn, &rt, i, &mut done, busy.index, grpc) {
            Ok(p) => Step::Forward(p),
            Err(e) => Step::Answer(Box::new(Err(e))),
        },
        Ok(Routed::Reply(r)) => Step::Answer(Box::new(Ok(*r))),
        Err(e) => Step::Answer(Box::new(Err(e))),
    };
    async move {
        let served = match step {
            // By reference: moved out, it would take its room in this future twice.
            Step::Forward(ref mut p) => {
                let route = &rt.router.routes[p.route];
                let pool = &rt.pools[route.pool];
                forward(p, &conn, route, pool, &mut done).await
            }
            Step::Answer(r) => *r,
        };
        Ok(answer(served, &conn, done, busy, http1, grpc))
    }
}

/// What [`handle`] has left to do once the request is routed.
#[allow(clippy::large_enum_variant)] // the common variant inline: the future holds it anyway
enum Step {
    Forward(Prepared),
    /// Boxed: a response weir makes itself (an error, a redirect) is the rare path, and inline it
    /// would take 280 bytes in every request's future.
    Answer(Box<Result<Response<ResponseBody>, ProxyError>>),
}

/// The response to send the client, from the server's or from weir's own, with what every
/// response carries, and the request's record to finish when its body is done.
fn answer(
    served: Result<Response<ResponseBody>, ProxyError>,
    conn: &ConnInfo,
    mut done: Box<Done>,
    busy: crate::conn::Busy,
    http1: bool,
    grpc: bool,
) -> Response<ResponseBody> {
    let mut resp = match served {
        Ok(r) => r,
        Err(e) => {
            let mut r = error_response(&e, &mut done);
            if grpc {
                grpc::into_grpc(&e, &mut r);
            }
            r
        }
    };
    // Draining: tell HTTP/1.1 clients to reconnect (elsewhere) after this response, the one way to
    // close a keep-alive connection that does not race a request the client is already sending.
    if http1 && done.shared.draining.load(Relaxed) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(hsts) = &conn.listener.hsts {
        resp.headers_mut()
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert_with(|| hsts.clone());
    }
    done.status = resp.status().as_u16();
    resp.body_mut().on_finish(done);
    resp.body_mut().hold(busy);
    resp
}

fn error_response(e: &ProxyError, done: &mut Done) -> Response<ResponseBody> {
    done.reason = e.reason();
    if matches!(
        e,
        ProxyError::Connect(_) | ProxyError::Upstream(_) | ProxyError::Timeout
    ) {
        tracing::warn!(route = done.route.as_deref().unwrap_or("-"), error = %e, "upstream failure");
    } else {
        tracing::debug!(error = %e, "request refused");
    }
    let mut r = Response::new(ResponseBody::full(e.body()));
    *r.status_mut() = e.status();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if matches!(
        e,
        ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed
            | ProxyError::UriTooLong
            | ProxyError::BodyTimeout
    ) {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

/// Rejects framing and routing ambiguities that a server behind us might read differently.
fn check_request<B>(req: &Request<B>, max_uri: usize) -> Result<(), ProxyError> {
    if uri_len(req.uri()) > max_uri {
        return Err(ProxyError::UriTooLong);
    }
    // A tunnel to wherever the client names is a forward proxy's job (nginx answers 405 too).
    // HTTP/2's extended CONNECT (RFC 8441) is how WebSocket travels over HTTP/2, and stays; any
    // other `:protocol` would reach the server as a bare CONNECT.
    if req.method() == Method::CONNECT
        && !upgrade::is_websocket_connect(req.method(), req.extensions())
    {
        return Err(ProxyError::MethodNotAllowed);
    }
    if has_dot_segment(req.uri().path()) {
        return Err(ProxyError::BadRequest("dot segment in path"));
    }
    // The asterisk form exists only for a server-wide OPTIONS (RFC 9112 §3.2.4).
    if req.uri() == "*" && req.method() != Method::OPTIONS {
        return Err(ProxyError::BadRequest(
            "asterisk-form target with a method other than OPTIONS",
        ));
    }
    let h = req.headers();
    // One pass counts the fields that must not repeat or meet (a hashed lookup each otherwise).
    let (mut hosts, mut lengths, mut chunked) = (0, 0, false);
    for name in h.keys() {
        if name == header::HOST {
            hosts = h.get_all(name).iter().count();
        } else if name == header::CONTENT_LENGTH {
            lengths = h.get_all(name).iter().count();
        } else if name == header::TRANSFER_ENCODING {
            chunked = true;
        }
    }
    if chunked && lengths > 0 {
        return Err(ProxyError::BadRequest(
            "both content-length and transfer-encoding",
        ));
    }
    if lengths > 1 {
        return Err(ProxyError::BadRequest("more than one content-length"));
    }
    if hosts > 1 {
        return Err(ProxyError::BadRequest("more than one host header"));
    }
    let host = if hosts > 0 { h.get(header::HOST) } else { None };
    if let Some(host) = host {
        // The router and the server must read the same host: one valid authority, no userinfo.
        let valid = host.is_empty()
            || host
                .to_str()
                .ok()
                .and_then(|s| s.parse::<http::uri::Authority>().ok())
                .is_some_and(|a| !a.as_str().contains('@'));
        if !valid {
            return Err(ProxyError::BadRequest("invalid host header"));
        }
    }
    if let (Some(auth), Some(host)) = (req.uri().authority(), host) {
        if req.version() < Version::HTTP_2
            && !auth
                .as_str()
                .eq_ignore_ascii_case(host.to_str().unwrap_or(""))
        {
            return Err(ProxyError::BadRequest(
                "absolute-form uri disagrees with host",
            ));
        }
    }
    if req.version() == Version::HTTP_11 && host.is_none() && req.uri().authority().is_none() {
        return Err(ProxyError::BadRequest("missing host header"));
    }
    Ok(())
}

/// Whether a path has a `.` or `..` segment, spelled out or percent-encoded (`%2e`).
///
/// Routes match the path as sent, and a server resolves the segments: `/public/../admin` would
/// be routed by `/public` and served as `/admin`, past a route meant to keep `/admin` elsewhere.
/// Clients resolve them before sending (RFC 3986 §5.2.4; browsers and curl do), so a request
/// with one is refused rather than rewritten.
fn has_dot_segment(path: &str) -> bool {
    if !path.contains('.') && !path.contains('%') {
        return false;
    }
    path.split('/').any(|seg| {
        let rest = seg
            .strip_prefix('.')
            .or_else(|| strip_prefix_ci(seg, "%2e"));
        match rest {
            Some("") => true,
            Some(r) => r == "." || r.eq_ignore_ascii_case("%2e"),
            None => false,
        }
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The request target's length as the client sent it (origin or absolute form).
fn uri_len(uri: &Uri) -> usize {
    let pq = uri.path_and_query().map_or(0, |p| p.as_str().len());
    let scheme = uri.scheme_str().map_or(0, |s| s.len() + 3);
    let auth = uri.authority().map_or(0, |a| a.as_str().len());
    scheme + auth + pq
}

/// Where a request goes, decided before anything is sent.
enum Routed {
    /// To the route at this index in the table, through its pool.
    Forward(usize),
    /// Answered here (a redirect to https; boxed, as it is rare).
    Reply(Box<Response<ResponseBody>>),
}

fn route(
    req: &Request<Incoming>,
    conn: &ConnInfo,
    rt: &Runtime,
    done: &mut Done,
    index: u64,
) -> Result<Routed, ProxyError> {
    if conn.state.is_bad(index) {
        return Err(ProxyError::BadRequest("ambiguous framing"));
    }
    check_request(req, conn.listener.config.limits.max_uri_length)?;
    if let Some(port) = conn.listener.config.redirect_https {
        let to = redirect(req, port)?;
        done.reason = "redirect_https";
        return Ok(Routed::Reply(Box::new(to)));
    }
    let idx = rt
        .router
        .route(req, conn.sni())
        .ok_or(ProxyError::NoRoute)?;
    let route = &rt.router.routes[idx];
    done.route = Some(route.name.clone());
    if let (Some(tls), Some(sni)) = (&conn.listener.tls, conn.sni()) {
        let host = crate::router::matcher::request_host(req);
        if !host.eq_ignore_ascii_case(sni) && !tls.resolver.covers(Some(sni), host) {
            return Err(ProxyError::Misdirected);
        }
    }
    done.pool = Some(rt.pools[route.pool].clone());
    Ok(Routed::Forward(idx))
}

/// 308 to the same host and path on https at `port`.
fn redirect<B>(req: &Request<B>, port: u16) -> Result<Response<ResponseBody>, ProxyError> {
    let host = crate::router::matcher::request_host(req);
    // An HTTP/1.0 request may come without a host, and there is nowhere to send it.
    if host.is_empty() {
        return Err(ProxyError::BadRequest("no host to redirect to"));
    }
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    let mut r = Response::new(ResponseBody::empty());
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

/// Methods that a server may see twice without harm (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The upstream request's head, prepared once and copied per attempt.
struct Head {
    method: Method,
    path_and_query: http::uri::PathAndQuery,
    headers: HeaderMap,
    version: Version,
}

/// The path and query sent to the server once the route's `strip_prefix` is applied; public only so
/// the `router` fuzz target can reach it.
pub fn upstream_path(uri: &Uri, strip: Option<&str>) -> http::uri::PathAndQuery {
    let root = || http::uri::PathAndQuery::from_static("/");
    let Some(prefix) = strip else {
        return uri.path_and_query().cloned().unwrap_or_else(root);
    };
    let path = uri.path();
    let rest = match path.strip_prefix(prefix.trim_end_matches('/')) {
        Some(r) if r.is_empty() || r.starts_with('/') => r,
        _ => path,
    };
    let rest = if rest.is_empty() { "/" } else { rest };
    let s = match uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    s.parse().unwrap_or_else(|_| root())
}

/// A routed request made ready for its pool's servers, before any attempt.
struct Prepared {
    /// The route's index in the table.
    route: usize,
    head: Head,
    /// The client's body, when it has one, for the attempts to stream from.
    slot: Option<Arc<BodySlot>>,
    /// Boxed, as it is rare (a WebSocket handshake): it would take 80 bytes in every request's future.
    upgrade: Option<Box<upgrade::Pending>>,
    /// The server the client's sticky cookie names, if it is still there.
    pinned: Option<usize>,
    head_timeout: std::time::Duration,
}

/// Rewrites the request for the servers of route `route_index`: hop-by-hop headers out,
/// forwarding facts and the route's edits in, its path with the prefix stripped.
fn prepare(
    req: Request<Incoming>,
    conn: &ConnInfo,
    rt: &Runtime,
    route_index: usize,
    done: &mut Done,
    index: u64,
    grpc: bool,
) -> Result<Prepared, ProxyError> {
    let route = &rt.router.routes[route_index];
    let pool = &rt.pools[route.pool];
    let (mut parts, body) = req.into_parts();
    if let Some(max) = route.max_body_size {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return Err(ProxyError::BodyTooLarge);
        }
    }
    let upgrade = upgrade::take(&mut parts, route.stream_idle_timeout, &done.shared).map(Box::new);
    let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let trailers = headers::wants_trailers(&parts.headers);
    headers::remove_hop_by_hop(&mut parts.headers);
    if trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(u) = &upgrade {
        u.restore(&mut parts);
    }
    // Room for what is inserted next in one step: the four headers added (x-forwarded-*,
    // x-request-id) and one more for `host`, because an insert makes room for a new entry before
    // it looks for an existing one. hyper sizes a connection's first request's map to the headers
    // it arrived with, so without it each connection's first request grew the map twice
    // (rehashed and reallocated; with `reserve(4)` still once more at the `host` insert, ~560
    // instructions of a `Connection: close` request). Later requests reuse a map that has room.
    parts.headers.reserve(5);
    headers::add_forwarded(
        &mut parts.headers,
        conn.peer.ip(),
        conn.proto(),
        client_host.as_ref(),
    );
    done.request_id = headers::request_id(&mut parts.headers, done.log);
    if let Some(h) = client_host {
        parts.headers.insert(header::HOST, h);
    }
    parts.headers.remove(headers::X_CLIENT_CERT_SUBJECT);
    if let Some(subject) = conn.tls.as_ref().and_then(|t| t.client_subject.as_deref()) {
        if let Ok(v) = HeaderValue::from_str(subject) {
            parts.headers.insert(headers::X_CLIENT_CERT_SUBJECT, v);
        }
    }
    headers::apply(&route.request_headers, &mut parts.headers);
    let pinned = pool.sticky.as_ref().and_then(|s| s.lookup(&parts.headers));
    if let Some(s) = &pool.sticky {
        s.strip(&mut parts.headers);
    }
    // The pooled client speaks HTTP/1.1 or, by ALPN or `protocol: http2`, HTTP/2 on its own.
    let version = Version::HTTP_11;
    let head = Head {
        method: parts.method.clone(),
        path_and_query: upstream_path(&parts.uri, route.strip_prefix.as_deref()),
        headers: std::mem::take(&mut parts.headers),
        version,
    };
    let slot = (!http_body::Body::is_end_stream(&body)).then(|| {
        let watch = body::Watch {
            state: conn.state.clone(),
            index,
            timeout: conn.listener.config.limits.body_timeout,
        };
        BodySlot::new(body, watch)
    });
    // A gRPC call's own deadline (`grpc-timeout`), when shorter; other requests have none.
    let head_timeout = if grpc {
        grpc::head_timeout(&head.headers, route.timeout)
    } else {
        route.timeout
    };
    Ok(Prepared {
        route: route_index,
        head,
        slot,
        upgrade,
        pinned,
        head_timeout,
    })
}

/// Sends a prepared request to the servers its pool picks, trying another one where the retry
/// policy allows, and turns the first response head into the client's response.
///
/// Like [`handle`], a plain function returning a block: an async fn would keep its arguments twice.
#[allow(clippy::manual_async_fn)]
fn forward<'a>(
    p: &'a mut Prepared,
    conn: &'a ConnInfo,
    route: &'a Route,
    pool: &'a Arc<Pool>,
    done: &'a mut Done,
) -> impl std::future::Future<Output = Result<Response<ResponseBody>, ProxyError>> + Send + 'a {
    async move {
        let (head, slot, pinned, head_timeout) = (&p.head, &p.slot, p.pinned, p.head_timeout);
        let input = crate::balance::PickInput {
            client_ip: conn.peer.ip(),
            headers: &head.headers,
        };
        let mut attempt = attempts::Attempts::new(route, pool, &head.method, pinned);
        loop {
            let server = attempt.pick(pool, &input).await?;
            done.server = Some(server);
            done.tried = Some(server);
            pool.servers[server].state.in_flight.fetch_add(1, Relaxed);
            pool.servers[server].state.requests.fetch_add(1, Relaxed);
            let driven = pool.h1.as_ref().filter(|_| p.upgrade.is_none());
            let request = || {
                let limit = route.max_body_size;
                build(head, pool, server, slot.as_ref(), limit, driven.is_none())
            };
            let sent_at = crate::clock::now();
            let (sent, lease) = send(pool, driven, server, request, head_timeout).await;
            done.upstream_head = Some(crate::clock::now().saturating_duration_since(sent_at));
            if let Ok(r) = &sent {
                done.upstream_connect = r
                    .extensions()
                    .get::<crate::pool::client::ConnectTiming>()
                    .filter(|t| t.done_at >= sent_at)
                    .map(|t| t.took);
            }
            let outcome = attempts::classify(sent, slot.as_deref());
            match attempt.next(outcome, pool, server) {
                attempts::Next::Respond(resp) => {
                    done.retries = attempt.retries();
                    let mut r = respond(resp, route, pool, server, pinned, conn, p.upgrade.take())?;
                    r.body_mut()
                        .set_idle_timeout(route.stream_idle_timeout, slot.clone());
                    if let Some(l) = lease {
                        r.body_mut().drive(l);
                    }
                    return Ok(r);
                }
                attempts::Next::Retry => {
                    pool.release(server);
                    done.shared.metrics.retries.inc();
                    done.server = None;
                    done.retries = attempt.retries();
                }
                attempts::Next::Fail(e) => {
                    pool.release(server);
                    done.server = None;
                    done.retries = attempt.retries();
                    if let Some(s) = &slot {
                        if s.too_large.load(Relaxed) {
                            return Err(ProxyError::BodyTooLarge);
                        }
                        if s.timed_out.load(Relaxed) {
                            return Err(ProxyError::BodyTimeout);
                        }
                        if s.client_failed.load(Relaxed) {
                            return Err(ProxyError::BadRequest(
                                "malformed or aborted request body",
                            ));
                        }
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// One attempt's request (made by `request` when it is about to leave: see [`H1::send`]) to
/// `server` through the pool's own HTTP/1.1 connections (`driven`) or hyper-util's client,
/// bounded by the response-head deadline; with the connection to drive while the response body
/// streams, for the former.
///
/// [`H1::send`]: crate::pool::h1::H1::send
#[allow(clippy::manual_async_fn)]
fn send<'a>(
    pool: &'a Pool,
    driven: Option<&'a Arc<crate::pool::h1::H1>>,
    server: usize,
    request: impl Fn() -> Request<ForwardBody> + Send + 'a,
    head_timeout: std::time::Duration,
) -> impl std::future::Future<Output = (attempts::Sent, Option<crate::pool::h1::Lease>)> + Send + 'a
{
    async move {
        // A timeout too large to add (the config takes any duration) means none, as in tokio's own.
        let now = crate::clock::tokio_now();
        let deadline = now
            .checked_add(head_timeout)
            .unwrap_or_else(|| now + std::time::Duration::from_secs(86_400 * 365 * 30));
        let Some(h1) = driven else {
            // Boxed: HTTP/2 and upgrades only, so the common path's future stays small.
            return (
                crate::boxed(send_shared(pool, request(), deadline)).await,
                None,
            );
        };
        let authority = &pool.servers[server].authority;
        match h1.send(server, authority, request, deadline).await {
            Ok((resp, lease)) => (Ok(resp), Some(lease)),
            Err(e) => (Err(e), None),
        }
    }
}

/// One attempt through hyper-util's client (HTTP/2, ALPN-chosen protocols, upgrades).
async fn send_shared(
    pool: &Pool,
    req: Request<ForwardBody>,
    deadline: tokio::time::Instant,
) -> attempts::Sent {
    use crate::pool::h1::SendError;
    match tokio::time::timeout_at(deadline, pool.client().request(req)).await {
        Err(_) => Err(SendError::TimedOut),
        Ok(r) => r.map_err(|e| match e.is_connect() {
            true => SendError::Connect(crate::pool::h1::error_chain(&e)),
            // hyper-util's client does not say whether the connection was a pooled one.
            false => SendError::Request {
                error: crate::pool::h1::error_chain(&e),
                reused: true,
            },
        }),
    }
}

/// The request of one attempt. hyper-util's client wants an absolute URI (it picks the
/// connection by it and writes origin-form itself); a connection of our own gets origin-form.
fn build(
    head: &Head,
    pool: &Pool,
    server: usize,
    slot: Option<&Arc<BodySlot>>,
    limit: Option<u64>,
    absolute: bool,
) -> Request<ForwardBody> {
    let body = match slot {
        Some(s) => ForwardBody::streaming(s, limit),
        None => ForwardBody::Empty,
    };
    let uri = if absolute {
        Uri::builder()
            .scheme(if pool.config.tls.is_some() {
                "https"
            } else {
                "http"
            })
            .authority(pool.servers[server].authority.clone())
            .path_and_query(head.path_and_query.clone())
            .build()
            .unwrap_or_default()
    } else {
        Uri::from(head.path_and_query.clone())
    };
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req
}

fn respond(
    resp: Response<Incoming>,
    route: &Route,
    pool: &Arc<Pool>,
    server: usize,
    pinned: Option<usize>,
    conn: &ConnInfo,
    upgrade: Option<Box<upgrade::Pending>>,
) -> Result<Response<ResponseBody>, ProxyError> {
    let (mut parts, body) = resp.into_parts();
    let mut resp_body = ResponseBody::upstream(body);
    // Before the 101 branch: a WebSocket handshake pins the client like any other response.
    if let Some(s) = &pool.sticky {
        if pinned != Some(server) {
            parts
                .headers
                .append(header::SET_COOKIE, s.set_cookie(server, conn.tls.is_some()));
        }
    }
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(u) = upgrade else {
            return Err(ProxyError::Upstream(
                "101 without an upgrade request".into(),
            ));
        };
        let mut up = Response::from_parts(parts, ());
        let upstream_on = hyper::upgrade::on(&mut up);
        let (mut parts, ()) = up.into_parts();
        conn.state.upgraded.store(true, Relaxed);
        u.answer(&mut parts);
        u.splice(upstream_on);
        resp_body = ResponseBody::empty();
        let mut r = Response::from_parts(parts, resp_body);
        *r.version_mut() = Version::HTTP_11;
        return Ok(r);
    }
    headers::remove_hop_by_hop(&mut parts.headers);
    headers::apply(&route.response_headers, &mut parts.headers);
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(parts, resp_body))
}

mod attempts {
    //! The retry policy: which failures may be tried again on another server, and how often.

    use super::*;
    use crate::pool::h1::SendError;

    /// What one attempt came back with: a response head, a failure, or the head deadline passed.
    pub type Sent = Result<Response<Incoming>, SendError>;

    pub enum Outcome {
        Response(Response<Incoming>),
        /// The request never left: the connection could not be made, the body is still ours.
        ConnectFailed(String),
        /// Failed after sending started (reset, closed mid-request).
        Failed {
            error: String,
            body_untouched: bool,
            /// On a pooled keep-alive connection: possibly the keep-alive race.
            reused: bool,
        },
        TimedOut,
        /// The client's body failed (too large, stalled, bad framing): not the server's fault, so
        /// passive health must not count it (or a client could eject healthy servers).
        ClientFault,
    }

    pub enum Next {
        Respond(Response<Incoming>),
        Retry,
        Fail(ProxyError),
    }

    pub fn classify(sent: Sent, slot: Option<&BodySlot>) -> Outcome {
        let untouched = slot.is_none_or(|s| s.untouched());
        match sent {
            Err(SendError::TimedOut) => Outcome::TimedOut,
            Ok(r) => Outcome::Response(r),
            Err(SendError::Connect(e)) => Outcome::ConnectFailed(e),
            Err(_) if slot.is_some_and(|s| s.client_fault()) => Outcome::ClientFault,
            Err(SendError::Request { error, reused }) => Outcome::Failed {
                error,
                body_untouched: untouched,
                reused,
            },
        }
    }

    /// How many more times each kind of failure may be tried again.
    pub struct Attempts {
        /// Inline: nearly every request tries one or two servers, and a heap list cost an
        /// allocation per request.
        tried: smallvec::SmallVec<[usize; 4]>,
        retries_left: u32,
        connect_retries_left: u32,
        /// One free retry for a failure on a reused keep-alive connection the server closed under us.
        race_retry: bool,
        /// The server that free retry may return to: a refused connect there is part of the same
        /// free retry, not one of the connect retries meant for the other servers.
        race_server: Option<usize>,
        idempotent: bool,
        pinned: Option<usize>,
        reject_unpinned: bool,
        retries: u32,
    }

    impl Attempts {
        pub fn new(route: &Route, pool: &Pool, method: &Method, pinned: Option<usize>) -> Self {
            pool.budget.deposit();
            let others = pool.servers.len().saturating_sub(1) as u32;
            Attempts {
                tried: smallvec::SmallVec::new(),
                retries_left: route.retries,
                connect_retries_left: route.retries.max(1).min(others),
                race_retry: true,
                race_server: None,
                idempotent: idempotent(method),
                pinned,
                reject_unpinned: pool
                    .sticky
                    .as_ref()
                    .is_some_and(|s| s.config.reject_unavailable),
                retries: 0,
            }
        }

        pub fn retries(&self) -> u32 {
            self.retries
        }

        /// The pinned server first (while it may serve its sessions), then the balancer's choice.
        /// A keep-alive race retry returns to the pinned server; any other retry after it failed
        /// goes elsewhere (`rebalance`) or is refused (`reject`).
        pub async fn pick(
            &mut self,
            pool: &Pool,
            input: &crate::balance::PickInput<'_>,
        ) -> Result<usize, ProxyError> {
            if let (Some(p), Some(sticky)) = (self.pinned, &pool.sticky) {
                if !self.tried.contains(&p) {
                    let now = crate::pool::now_ms();
                    if pool.servers[p].serves_pinned(now, sticky.config.drain_timeout) {
                        self.tried.push(p);
                        return Ok(p);
                    }
                    if self.reject_unpinned {
                        return Err(ProxyError::StickyUnavailable);
                    }
                } else if self.reject_unpinned {
                    return Err(ProxyError::StickyUnavailable);
                }
            }
            let i = pool
                .acquire(input, &self.tried)
                .await
                .map_err(|e| match e {
                    crate::pool::NoServer::Unhealthy => ProxyError::NoHealthyServer,
                    crate::pool::NoServer::QueueFull => ProxyError::QueueFull,
                })?;
            self.tried.push(i);
            Ok(i)
        }

        /// With `on_unavailable: reject`, a request pinned to `server` may not move to another one.
        fn bound(&self, server: usize) -> bool {
            self.reject_unpinned && self.pinned == Some(server)
        }

        /// A retry of a request that reached a server: allowed by the route and the pool's budget.
        fn spend(&mut self, pool: &Pool) -> bool {
            if self.idempotent && self.retries_left > 0 && pool.budget.try_spend() {
                self.retries_left -= 1;
                true
            } else {
                false
            }
        }

        pub fn next(&mut self, outcome: Outcome, pool: &Pool, server: usize) -> Next {
            let addr = &pool.servers[server].address;
            let (retryable, err) = match outcome {
                Outcome::Response(r) => {
                    let s = r.status();
                    pool.record(server, s.is_server_error());
                    let bad =
                        matches!(s, StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE);
                    if !(bad && !self.bound(server) && self.spend(pool)) {
                        return Next::Respond(r);
                    }
                    tracing::info!(server = %addr, status = s.as_u16(), "retrying on another server");
                    self.retries += 1;
                    return Next::Retry;
                }
                Outcome::ConnectFailed(e) => {
                    pool.record(server, true);
                    if self.bound(server) {
                        tracing::info!(server = %addr, error = %e, "pinned server unreachable; on_unavailable: reject");
                        return Next::Fail(ProxyError::StickyUnavailable);
                    }
                    let again = self.race_server.take() == Some(server);
                    let ok = again || self.connect_retries_left > 0;
                    if ok && !again {
                        self.connect_retries_left -= 1;
                    }
                    (ok, ProxyError::Connect(format!("{addr}: {e}")))
                }
                Outcome::Failed {
                    error,
                    body_untouched,
                    reused,
                } => {
                    pool.record(server, true);
                    // A connection opened for this request that the server closed unanswered is
                    // the server's answer, not a race: only the route's retries may try again.
                    let race = reused && body_untouched && self.idempotent && self.race_retry;
                    if race {
                        // Likely the keep-alive race: try once more (on a fresh connection, since
                        // the pool dropped the dead one) without spending the route's retries.
                        self.race_retry = false;
                        self.race_server = Some(server);
                        self.tried.retain(|t| *t != server);
                    }
                    let ok = race || (body_untouched && !self.bound(server) && self.spend(pool));
                    (ok, ProxyError::Upstream(format!("{addr}: {error}")))
                }
                Outcome::TimedOut => {
                    pool.record(server, true);
                    (false, ProxyError::Timeout)
                }
                Outcome::ClientFault => (false, ProxyError::BadRequest("request body failed")),
            };
            if retryable {
                tracing::info!(server = %addr, error = %err, "retrying on another server");
                self.retries += 1;
                Next::Retry
            } else {
                Next::Fail(err)
            }
        }
    }
}

#[cfg(test)]
mod dot_segment_tests {
    use super::has_dot_segment;

    #[test]
    fn dot_segments_are_found_spelled_out_or_encoded() {
        for p in [
            "/..",
            "/../x",
            "/a/../b",
            "/a/./b",
            "/.",
            "/a/.",
            "/%2e%2e/x",
            "/a/%2E/b",
            "/.%2e/",
            "/%2e./",
            "/a/..",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in [
            "/",
            "/a.b",
            "/...",
            "/.well-known/x",
            "/a/..b",
            "/a/b..",
            "/%2e%2e%2e",
            "/v1.2/x",
            "/%41",
        ] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }
}
