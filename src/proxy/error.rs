//! Why weir itself answered (or cut short) a request, and the one place a status is chosen for it.

use http::{HeaderValue, StatusCode};

/// Which side a failure came from, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches the request")]
    NoRoute,
    #[error("no healthy server in pool")]
    NoHealthyServer,
    #[error("pinned server unavailable and the pool rejects rebalancing")]
    StickyUnavailable,
    #[error("connecting to the server failed: {0}")]
    Connect(String),
    #[error("the server failed: {0}")]
    Upstream(String),
    #[error("the server did not answer in time")]
    Timeout,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("request target too long")]
    UriTooLong,
    #[error("the client stopped sending its request body")]
    BodyTimeout,
    /// Never reaches the request path: the connection's watchdog answers it with [`ProxyError::raw_reply`].
    #[error("the request head did not arrive within header_read_timeout")]
    HeaderTimeout,
    #[error("malformed request: {0}")]
    BadRequest(&'static str),
    /// `CONNECT` asks for a tunnel to any host: a reverse proxy forwards it to no server.
    #[error("CONNECT is not served")]
    MethodNotAllowed,
    #[error("host not covered by the TLS certificate of this connection")]
    Misdirected,
    #[error("every server is at max_connections and the pool's queue is full or timed out")]
    QueueFull,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyServer | ProxyError::StickyUnavailable | ProxyError::QueueFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Connect(_) | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::BodyTimeout | ProxyError::HeaderTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
        }
    }

    /// The reason code of the access log and of `weir_errors_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::NoHealthyServer => "no_healthy_server",
            ProxyError::StickyUnavailable => "sticky_unavailable",
            ProxyError::Connect(e) => connect_reason(e),
            ProxyError::Upstream(e) => upstream_reason(e),
            ProxyError::Timeout => "upstream_timeout",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::UriTooLong => "uri_too_long",
            ProxyError::BodyTimeout => "body_timeout",
            ProxyError::HeaderTimeout => "header_timeout",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::Misdirected => "misdirected",
            ProxyError::QueueFull => "queue_full",
        }
    }

    pub fn side(&self) -> Side {
        match self {
            ProxyError::NoRoute
            | ProxyError::BodyTooLarge
            | ProxyError::UriTooLong
            | ProxyError::BodyTimeout
            | ProxyError::HeaderTimeout
            | ProxyError::BadRequest(_)
            | ProxyError::MethodNotAllowed
            | ProxyError::Misdirected => Side::Client,
            ProxyError::Connect(_) | ProxyError::Upstream(_) | ProxyError::Timeout => {
                Side::Upstream
            }
            ProxyError::NoHealthyServer | ProxyError::StickyUnavailable | ProxyError::QueueFull => {
                Side::Internal
            }
        }
    }

    /// The short plain-text body a client sees: the status text, never internal names.
    pub fn body(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "404 Not Found\n",
            ProxyError::NoHealthyServer | ProxyError::StickyUnavailable | ProxyError::QueueFull => {
                "503 Service Unavailable\n"
            }
            ProxyError::Connect(_) | ProxyError::Upstream(_) => "502 Bad Gateway\n",
            ProxyError::Timeout => "504 Gateway Timeout\n",
            ProxyError::BodyTooLarge => "413 Payload Too Large\n",
            ProxyError::UriTooLong => "414 URI Too Long\n",
            ProxyError::BodyTimeout | ProxyError::HeaderTimeout => "408 Request Timeout\n",
            ProxyError::BadRequest(_) => "400 Bad Request\n",
            ProxyError::MethodNotAllowed => "405 Method Not Allowed\n",
            ProxyError::Misdirected => "421 Misdirected Request\n",
        }
    }
}

impl ProxyError {
    /// The whole HTTP/1.1 answer as bytes, for the one case with no request for hyper to answer
    /// (a head that never completed); it always closes the connection.
    pub fn raw_reply(&self, hsts: Option<&HeaderValue>) -> Box<[u8]> {
        let status = self.status();
        let body = self.body();
        let mut r = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes();
        if let Some(v) = hsts {
            r.extend_from_slice(b"strict-transport-security: ");
            r.extend_from_slice(v.as_bytes());
            r.extend_from_slice(b"\r\n");
        }
        r.extend_from_slice(b"\r\n");
        r.extend_from_slice(body.as_bytes());
        r.into_boxed_slice()
    }
}

/// hyper-util reports connect failures as an error chain whose text is all we get; this runs only
/// on a failure, never on the request path of a successful request.
fn connect_reason(chain: &str) -> &'static str {
    let c = chain.to_ascii_lowercase();
    if c.contains("timed out") || c.contains("timeout") {
        "connect_timeout"
    } else if c.contains("refused") {
        "connect_refused"
    } else {
        "connect_failed"
    }
}

/// A server that closed or reset the connection before a whole response head, or anything else.
fn upstream_reason(chain: &str) -> &'static str {
    let c = chain.to_ascii_lowercase();
    if c.contains("reset")
        || c.contains("connection closed")
        || c.contains("incomplete")
        || c.contains("broken pipe")
    {
        "upstream_reset"
    } else {
        "upstream_error"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_status() {
        let cases = [
            (ProxyError::NoRoute, 404),
            (ProxyError::NoHealthyServer, 503),
            (ProxyError::StickyUnavailable, 503),
            (ProxyError::Connect("refused".into()), 502),
            (ProxyError::Upstream("reset".into()), 502),
            (ProxyError::Timeout, 504),
            (ProxyError::BodyTooLarge, 413),
            (ProxyError::UriTooLong, 414),
            (ProxyError::BodyTimeout, 408),
            (ProxyError::HeaderTimeout, 408),
            (ProxyError::BadRequest("x"), 400),
            (ProxyError::Misdirected, 421),
            (ProxyError::QueueFull, 503),
        ];
        for (e, code) in cases {
            assert_eq!(e.status().as_u16(), code, "{e}");
            assert!(e.body().starts_with(&code.to_string()));
        }
    }

    #[test]
    fn raw_reply_is_a_complete_closing_response() {
        let hsts = HeaderValue::from_static("max-age=60");
        let r = ProxyError::HeaderTimeout.raw_reply(Some(&hsts));
        let text = std::str::from_utf8(&r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close"));
        assert!(head.contains("\r\nstrict-transport-security: max-age=60"));
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        assert_eq!(body, "408 Request Timeout\n");
    }

    #[test]
    fn failure_reasons_are_specific() {
        let r = |e: ProxyError| e.reason();
        assert_eq!(
            r(ProxyError::Connect(
                "client error (Connect): tcp connect error: Connection refused (os error 111)"
                    .into()
            )),
            "connect_refused"
        );
        assert_eq!(
            r(ProxyError::Connect(
                "client error (Connect): HTTP connect timeout".into()
            )),
            "connect_timeout"
        );
        assert_eq!(
            r(ProxyError::Upstream(
                "client error (SendRequest): connection closed before message completed".into()
            )),
            "upstream_reset"
        );
        assert_eq!(r(ProxyError::Upstream("other".into())), "upstream_error");
        assert_eq!(r(ProxyError::QueueFull), "queue_full");
    }
}
